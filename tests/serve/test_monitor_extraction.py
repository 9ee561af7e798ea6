"""The extraction monitor: attacks through the gateway are stopped before their budget,
benign held-out traffic replayed through it raises no alert."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from bastion.assess.extraction import assess
from bastion.serve.client import RemoteClassifier
from bastion.serve.limits import InputSchema
from bastion.serve.monitor import Monitor, MonitorConfig
from bastion.serve.store import MemoryStore


def _first_alert(rows: np.ndarray, model, config: MonitorConfig) -> int | None:
    async def run() -> int | None:
        monitor = Monitor(config, InputSchema((64,), 0.0, 16.0), MemoryStore())
        for i, row in enumerate(rows):
            verdict = await monitor.observe("k", row[None], model.predict_proba(row[None]))
            if verdict.alert:
                return i + 1
        return None

    return asyncio.run(run())


def test_monitor_flags_synthetic_queries_not_held_out_data(digits):
    config = MonitorConfig(action="log")
    assert _first_alert(digits.x_test, digits.model, config) is None
    noise = np.random.default_rng(1).uniform(0, 16, size=(200, 64))
    assert _first_alert(noise, digits.model, config) <= 100
    # Jacobian-style steps: each query a fixed step away from an earlier one.
    seeds = digits.x_test[:20]
    signs = np.sign(np.random.default_rng(2).normal(size=(180, 64)))
    stepped = np.clip(np.repeat(seeds, 9, axis=0) + 1.6 * signs, 0, 16)
    assert _first_alert(np.vstack([seeds, stepped]), digits.model, config) <= 100


@pytest.mark.parametrize("strategy", ["random", "jacobian"])
def test_attack_through_gateway_is_blocked_before_its_budget(
    start_gateway, make_key, digits, tmp_path, strategy
):
    audit = tmp_path / "audit.jsonl"
    attacker = make_key("attacker", rate=10_000, burst=10_000, daily_budget=5_000)
    benign = make_key("benign", rate=10_000, burst=10_000)
    url = start_gateway(audit_path=str(audit), client_rate=10_000, client_burst=10_000)
    target = RemoteClassifier(url + "/v2/models/digits", attacker, batch_size=25)
    pool = digits.x_test[:20] if strategy == "jacobian" else None  # None: uniform noise
    held_out = digits.x_test[400:500]
    result = assess(target, url, held_out, digits.y_test[400:500], pool=pool,
                    budgets=(200, 1000), strategy=strategy, through_gateway=True, seed=0)
    run = result.runs[0]
    assert run.stopped_at is not None and run.stopped_at < 1000
    assert "blocked" in run.stop_reason
    assert [f.rule_id for f in result.findings if f.rule_id.startswith("BST-SRV")] == [
        "BST-SRV-002"]
    decisions = [json.loads(line)["decision"] for line in audit.read_text().splitlines()]
    assert "alert" in decisions and decisions[-1] == "blocked"

    # Benign clients replaying held-out data, one query each, are never flagged.
    with httpx.Client(headers={"X-API-Key": benign}) as client:
        codes = {client.post(url + "/predict", json={"inputs": [row.tolist()]}).status_code
                 for row in digits.x_test[:300]}
    assert codes == {200}
    benign_alerts = [line for line in audit.read_text().splitlines()
                     if '"alert"' in line and benign.split("_")[1] in line]
    assert benign_alerts == []
