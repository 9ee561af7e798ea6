"""`bastion demo` builds its project, audits it, finds exactly what was planted, and with
--fix the gate passes; no planted payload ever runs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.demo.run import PLANTED


def test_demo_finds_the_planted_problems_and_passes_once_fixed(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--dir", str(workdir), "--fix"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "found exactly the planted problems" not in output  # --fix goes on to the fixes
    assert output.count("found (BST-") == len(PLANTED) + 7
    assert "missed" not in output and "unexpected" not in output
    assert f"Report: {workdir / 'reports' / 'audit.html'}" in output
    assert "Gate passed" in output
    before = json.loads((workdir / "reports" / "audit.json").read_text())
    after = json.loads((workdir / "reports-fixed" / "audit.json").read_text())
    assert before["metrics"]["gate"]["passed"] is False
    assert after["metrics"]["gate"]["passed"] is True
    blocking = {
        Path(f["location"]["path"]).relative_to(workdir).parts[1]
        for f in before["findings"]
        if f["severity"] in ("high", "critical") and "downloads" in f["location"]["path"]
    }
    assert blocking == set(PLANTED)
    assert not (workdir / "PAYLOAD_RAN").exists()


def test_demo_exits_1_when_its_self_check_fails(tmp_path: Path, monkeypatch) -> None:
    import bastion.demo.run as demo

    # A planted problem the audit cannot find: the self-check must say so and fail.
    extra = demo.Planted("a problem nobody planted", "signature", "models/other.joblib",
                         rule_id="BST-AUD-SIG-001")
    planted = demo.planted_problems()
    monkeypatch.setattr(demo, "planted_problems", lambda: [*planted, extra])
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert "missed" in result.output and "self-check failed" in result.output
