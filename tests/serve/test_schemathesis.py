"""Property-based requests generated from the gateway's own OpenAPI document (schemathesis):
whatever the body, path or headers, the gateway never answers with a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture
def gateway_target(start_gateway, make_key):
    token = make_key(rate=10_000, burst=10_000, daily_budget=1_000_000,
                     scopes=("infer", "metadata", "metrics"))
    return start_gateway(client_rate=10_000, client_burst=10_000), token


def test_no_server_errors(gateway_target):
    url, token = gateway_target
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/v2/models/{name}/infer"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_5xx(case) -> None:
            case.call_and_validate(headers={"X-API-Key": token}, checks=[not_a_server_error])

        no_5xx()
