"""The gateway over real HTTP: keys, limits, hostile bodies, output policies, audit."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from bastion.serve.auth import KeyFile
from bastion.serve.harden import parse_policy
from bastion.serve.limits import Limits


def post(url: str, token: str | None, body, path: str = "/predict", **kwargs) -> httpx.Response:
    headers = {"X-API-Key": token} if token else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=content, headers=headers, timeout=10, **kwargs)


def test_missing_wrong_revoked_and_url_keys_are_refused(start_gateway, make_key, keyfile, digits):
    token = make_key()
    url = start_gateway()
    row = {"inputs": digits.x_test[:1].tolist()}
    assert post(url, token, row).status_code == 200
    assert post(url, None, row).status_code == 401
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert post(url, forged, row).status_code == 401
    assert post(url, "not-a-key", row).status_code == 401
    bearer = httpx.post(url + "/predict", json=row, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200
    in_url = httpx.post(url + "/predict", json=row, params={"api_key": token})
    assert in_url.status_code == 400 and "header" in in_url.json()["error"]
    no_scope = httpx.get(url + "/metrics", headers={"X-API-Key": token})
    assert no_scope.status_code == 403

    key_id = token.split("_")[1]
    current = KeyFile.load(keyfile.path)
    current.revoke(key_id)
    current.save()
    time.sleep(1.1)  # the gateway looks at the key file at most once a second
    revoked = post(url, token, row)
    assert revoked.status_code == 403 and "revoked" in revoked.json()["error"]


async def _burst(url: str, token: str, body: dict, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=20) as client:
        responses = await asyncio.gather(*(
            client.post(url + "/predict", json=body, headers={"X-API-Key": token})
            for _ in range(n)
        ))
    return [r.status_code for r in responses]


def test_key_rate_limit_is_exact_under_concurrent_load(start_gateway, make_key, digits):
    token = make_key(rate=0.001, burst=7)  # one new token every 1000 s: the window is the test
    url = start_gateway()
    codes = asyncio.run(_burst(url, token, {"inputs": digits.x_test[:1].tolist()}, 40))
    assert codes.count(200) == 7
    assert codes.count(429) == 33


def test_client_address_limit_applies_before_the_key(start_gateway, make_key, digits):
    token = make_key(rate=1000, burst=1000)
    url = start_gateway(client_rate=0.001, client_burst=5)
    codes = asyncio.run(_burst(url, token, {"inputs": digits.x_test[:1].tolist()}, 20))
    assert codes.count(200) == 5 and codes.count(429) == 15
    assert post(url, None, {"inputs": []}).status_code == 429  # even without a key


def test_daily_budget(start_gateway, make_key, digits):
    token = make_key(daily_budget=3)
    url = start_gateway()
    row = {"inputs": digits.x_test[:1].tolist()}
    codes = [post(url, token, row).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert "budget" in post(url, token, row).json()["error"]


def _chunks(total: int):
    sent = 0
    while sent < total:
        yield b"[" * 1024
        sent += 1024


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}", 422),
        (b'{"inputs": [[Infinity' + b", 0" * 63 + b"]]}", 422),
        (b'{"inputs": [[1e999' + b", 0" * 63 + b"]]}", 422),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"inputs": ' + b"[" * 50 + b"1" + b"]" * 50 + b"}", 400),
        (json.dumps({"inputs": [["1"] * 64]}).encode(), 422),
        (json.dumps({"inputs": [[True] * 64]}).encode(), 422),
        (json.dumps({"inputs": [[None] * 64]}).encode(), 422),
        (json.dumps({"inputs": [[1] * 64, [1] * 63]}).encode(), 422),
        (json.dumps({"inputs": [[1] * 65]}).encode(), 422),
        (json.dumps({"inputs": [[17] * 64]}).encode(), 422),
        (json.dumps({"inputs": [[-1] * 64]}).encode(), 422),
        (json.dumps({"inputs": [[1] * 64] * 300}).encode(), 422),
        (json.dumps({"inputs": [], "extra": 1}).encode(), 422),
        (json.dumps([1, 2]).encode(), 422),
        (json.dumps({"inputs": [10**400] * 64}).encode(), 422),
    ],
    ids=["malformed", "empty", "nan", "infinity", "overflow", "deep-100k", "deep-50",
         "strings", "booleans", "nulls", "ragged", "wrong-shape", "above-range",
         "below-range", "batch-too-big", "extra-field", "not-an-object", "huge-int"],
)
def test_hostile_bodies_get_4xx_and_the_server_keeps_serving(
    start_gateway, make_key, digits, body, status
):
    token = make_key(rate=100, burst=100)
    url = start_gateway()
    response = post(url, token, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert post(url, token, {"inputs": digits.x_test[:2].tolist()}).status_code == 200


def test_oversized_bodies_refused_declared_or_streamed(start_gateway, make_key, digits):
    token = make_key()
    url = start_gateway(limits=Limits(max_body_bytes=4096))
    declared = post(url, token, b" " * 5000)
    assert declared.status_code == 413
    streamed = httpx.post(url + "/predict", content=_chunks(1 << 20),
                          headers={"X-API-Key": token}, timeout=10)
    assert streamed.status_code == 413
    assert post(url, token, {"inputs": digits.x_test[:1].tolist()}).status_code == 200


def test_open_inference_protocol(start_gateway, make_key, digits):
    token = make_key()
    url = start_gateway()
    headers = {"X-API-Key": token}
    meta = httpx.get(url + "/v2/models/digits", headers=headers).json()
    assert meta["inputs"][0]["shape"] == [-1, 64]
    assert meta["outputs"][0]["shape"] == [-1, 10]
    rows = digits.x_test[:3]
    body = {"inputs": [{"name": "x", "shape": [3, 64], "datatype": "FP32",
                        "data": rows.reshape(-1).tolist()}]}
    out = httpx.post(url + "/v2/models/digits/infer", json=body, headers=headers).json()
    probabilities = np.asarray(out["outputs"][0]["data"]).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(probabilities, digits.model.predict_proba(rows))
    assert httpx.post(url + "/v2/models/other/infer", json=body,
                      headers=headers).status_code == 404
    body["inputs"][0]["shape"] = [2, 64]
    assert httpx.post(url + "/v2/models/digits/infer", json=body,
                      headers=headers).status_code == 422
    assert httpx.get(url + "/v2/models/digits").status_code == 401
    spec = httpx.get(url + "/openapi.json").json()
    assert {"/predict", "/v2/models/{name}/infer", "/v2/models/{name}"} <= set(spec["paths"])
    # nothing that loads or manages models over HTTP
    assert all(set(ops) <= {"get", "post"} for ops in spec["paths"].values())
    assert not any("load" in p or "management" in p for p in spec["paths"])


@pytest.mark.parametrize(
    ("policy", "check"),
    [
        ("label", lambda out, p: "probabilities" not in out
         and out["predictions"] == p.argmax(1).tolist()),
        ("round:1", lambda out, p: np.allclose(out["probabilities"], np.round(p, 1))),
        ("top-k:2", lambda out, p: (np.count_nonzero(out["probabilities"], axis=1) <= 2).all()
         and out["predictions"] == p.argmax(1).tolist()),
        ("reverse-sigmoid:0.5:0.5", lambda out, p: np.allclose(
            np.sum(out["probabilities"], axis=1), 1.0)
         and not np.allclose(out["probabilities"], p, atol=1e-3)),
    ],
)
def test_output_policies(start_gateway, make_key, digits, policy, check):
    token = make_key()
    url = start_gateway(policies=(parse_policy(policy),))
    rows = digits.x_test[:20]
    out = post(url, token, {"inputs": rows.tolist()}).json()
    assert check(out, digits.model.predict_proba(rows))


def test_metrics_audit_and_ledger(start_gateway, make_key, digits, tmp_path):
    from bastion.govern.ledger import Ledger, init_ledger

    ledger_path = tmp_path / "ledger.db"
    init_ledger(ledger_path)[0].close()
    audit_path = tmp_path / "audit.jsonl"
    token = make_key(scopes=("infer", "metrics"))
    url = start_gateway(audit_path=str(audit_path), ledger=str(ledger_path),
                        ledger_interval_s=0.2)
    post(url, token, {"inputs": digits.x_test[:1].tolist()})
    post(url, None, {"inputs": []})
    text = httpx.get(url + "/metrics", headers={"X-API-Key": token}).text
    assert 'bastion_requests_total{decision="allowed",route="predict"} 1.0' in text
    assert 'bastion_requests_total{decision="refused",route="predict"} 1.0' in text
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert [(line["decision"], line["status"]) for line in lines[:2]] == [
        ("allowed", 200), ("refused", 401)]
    assert token not in audit_path.read_text()
    deadline = time.monotonic() + 5
    events = []
    while not events and time.monotonic() < deadline:
        time.sleep(0.1)
        with Ledger.open(ledger_path) as ledger:
            events = ledger.find("serve")
    assert events, "no serve event reached the ledger"
    assert events[0].event["details"]["decisions"]["allowed"] == 1


def test_throttle_action_cuts_the_key_to_a_tenth(start_gateway, make_key, digits, tmp_path):
    from bastion.serve.monitor import MonitorConfig

    token = make_key(rate=0.001, burst=100)
    audit = tmp_path / "audit.jsonl"
    url = start_gateway(monitor=MonitorConfig(action="throttle", min_queries=20, test_every=5),
                        audit_path=str(audit))
    row = {"inputs": digits.x_test[:1].tolist()}  # the same query again and again
    with httpx.Client(headers={"X-API-Key": token}) as client:
        codes = [client.post(url + "/predict", json=row).status_code for _ in range(60)]
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    alert = next(i for i, line in enumerate(lines) if line["decision"] == "alert")
    assert lines[alert]["action"] == "throttle"
    # `alert` answered requests precede the alert line; the request that raised it is
    # answered too, then the key's burst shrinks to a tenth: 10 more tokens.
    assert codes.count(200) == alert + 1 + 10
    assert set(codes[alert + 11 :]) == {429} and 403 not in codes


def test_cors_is_closed_unless_an_origin_is_given(start_gateway, make_key):
    make_key()
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = httpx.options(start_gateway() + "/predict", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = httpx.options(start_gateway(cors_origins=("https://app.example",)) + "/predict",
                           headers=preflight)
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(start_gateway(cors_origins=("https://app.example",)) + "/predict",
                          headers={**preflight, "Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_non_finite_model_output_is_a_502_not_an_answer(serve_app, keyfile, make_key, digits):
    from bastion.models.classifier import as_classifier
    from bastion.serve.app import GatewayConfig, create_app
    from bastion.serve.auth import KeyRing
    from bastion.serve.backend import LocalBackend
    from bastion.serve.limits import InputSchema
    from bastion.serve.store import MemoryStore

    class NaNModel:
        """The digits model with its first probability replaced by NaN."""

        def __init__(self) -> None:
            self.inner = as_classifier(digits.model)
            self.n_classes, self.input_shape = self.inner.n_classes, (64,)
            self.clip_values = (0.0, 16.0)

        def predict_proba(self, x):
            out = self.inner.predict_proba(x)
            out[:, 0] = float("nan")
            return out

    token = make_key()
    backend = LocalBackend("digits", NaNModel(), InputSchema((64,), 0.0, 16.0))
    url = serve_app(create_app(backend, KeyRing(keyfile.path), MemoryStore(), GatewayConfig()))
    response = post(url, token, {"inputs": digits.x_test[:1].tolist()})
    assert response.status_code == 502 and "non-finite" in response.json()["error"]
