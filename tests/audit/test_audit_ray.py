"""`--ray`: the same audit as Ray tasks on a small local Ray instance (two CPUs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from bastion.audit import run_audit
from bastion.audit_checks import CheckContext
from bastion.cli.main import app
from bastion.config import load_config
from bastion.demo.run import build_example


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def _key(finding) -> tuple:
    return (finding.rule_id, finding.location.path, finding.location.member, finding.title)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory):
    return build_example(tmp_path_factory.mktemp("ray") / "demo", torch_checkpoint=False)


def test_ray_audit_matches_the_process_audit(tmp_path: Path, example, local_ray) -> None:
    config = load_config(example.config)
    on_ray = run_audit(config, out=tmp_path / "ray", ray_address="local")
    in_processes = run_audit(config, out=tmp_path / "proc", jobs=2)
    assert on_ray.backend == "ray (local)"
    assert sorted(map(_key, on_ray.findings)) == sorted(map(_key, in_processes.findings))
    assert {o.name: o.status for o in on_ray.outcomes} == {
        "bom": "ran", "data_diff": "ran", "deps": "not applicable", "documentation": "ran",
        "evasion": "ran", "extraction": "ran",
        "inversion": "not applicable", "membership": "ran", "pii": "ran", "poisoning": "ran",
        "scan": "ran", "serving": "ran", "signature": "ran"}
    # The membership check's reference models trained as Ray tasks (ctx.map) and came out
    # the same as in a worker process: the same seeds, the same finding.
    assert on_ray.outcome("membership").result.metrics == \
        in_processes.outcome("membership").result.metrics | {
            "plot": str(tmp_path / "ray" / "checks" / "membership" / "membership-roc.png")}
    assert (tmp_path / "ray" / "checks" / "bom" / "bom.cdx.json").is_file()  # the ML-BOM
    assert not on_ray.passed
    assert ray.is_initialized()  # joined the running instance, so left it running


def test_cli_audit_on_ray(tmp_path: Path, example, local_ray) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", "--config", str(example.config), "--out", str(out),
                                      "--ray", "local", "--format", "json"])
    assert result.exit_code == 1, result.output
    document = json.loads((out / "audit.json").read_text())
    assert document["metrics"]["backend"] == "ray (local)"
    assert document["command"].endswith("--ray local")


def test_checks_fan_work_out_as_ray_tasks(tmp_path: Path, local_ray) -> None:
    ctx = CheckContext(tmp_path, seed=1, ray=True)
    assert ctx.map(abs, [-3, 2, -1]) == [3, 2, 1]
    assert CheckContext(tmp_path).map(abs, [-3]) == [3]
