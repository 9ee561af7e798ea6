"""`bastion demo` builds its project, audits it, finds exactly what was planted, and with
--fix the gate passes; no planted payload ever runs."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from bastion.audit import run_audit
from bastion.cli.main import app
from bastion.config import load_config
from bastion.demo.run import PLANTED, Planted, build_example, planted_problems, self_check


def test_demo_finds_the_planted_problems_and_passes_once_fixed(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--dir", str(workdir), "--fix"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "found exactly the planted problems" not in output  # --fix goes on to the fixes
    # The malicious downloads, the unsigned model, six serving problems, a model one client
    # can copy in a day, the poisoned slice.
    assert output.count("found (BST-") == len(PLANTED) + 9
    assert "found (BST-DATA-011, high)" in output
    assert "not checked" not in output
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
    poisoned = {f["rule_id"] for f in before["findings"]
                if f["location"]["path"] == str(workdir / "data" / "train.csv")
                and f["severity"] in ("high", "critical")}
    assert poisoned == {"BST-DATA-011"}
    # Retrained without the poisoned rows: the check ran again and no backdoor is left.
    assert after["metrics"]["checks"]["poisoning"]["status"] == "ran"
    assert after["metrics"]["checks"]["poisoning"]["metrics"]["flagged_backdoor"] == 0
    signature = after["metrics"]["checks"]["signature"]["metrics"]["models"]
    assert signature[str(workdir / "models" / "digits.joblib")]["verified"] is True
    # The fixes do not make the model robust to adversarial examples: that finding stays medium.
    # Removing the poisoned slice changed the training data since the first audit, which the
    # data_diff check reports (medium: a change to review, not a gate failure); the test data
    # is the one audited before.
    # The model stays copyable, but the daily budget per key now makes a copy take key-days:
    # medium.
    remaining = {f["rule_id"] for f in after["findings"] if f["severity"] not in ("info", "low")}
    assert remaining == {"BST-EVA-001", "BST-AUD-DIFF-001", "BST-AUD-EXT-001"}
    [copyable] = [f for f in before["findings"] if f["rule_id"] == "BST-AUD-EXT-001"]
    [slowed] = [f for f in after["findings"] if f["rule_id"] == "BST-AUD-EXT-001"]
    assert copyable["severity"] == "high" and copyable["evidence"]["api_keys"] is False
    assert slowed["severity"] == "medium"
    assert slowed["evidence"]["key_days_needed"] >= 2
    assert slowed["evidence"]["daily_query_budget"] == 200
    first_audit = before["metrics"]["checks"]["data_diff"]["metrics"]["datasets"]
    data_diff = after["metrics"]["checks"]["data_diff"]["metrics"]["datasets"]
    assert first_audit["train"]["status"] == "first audit of this dataset: baseline recorded"
    assert data_diff["train"]["status"].startswith("changed since audit #")
    assert data_diff["test"]["status"].startswith("unchanged since audit #")
    [changed] = [f for f in after["findings"] if f["rule_id"] == "BST-AUD-DIFF-001"]
    assert changed["severity"] == "medium"
    assert changed["location"]["path"] == str(workdir / "data" / "train.csv")
    assert not (workdir / "PAYLOAD_RAN").exists()


def test_self_check_fails_when_a_planted_problem_is_missed(tmp_path: Path) -> None:
    example = build_example(tmp_path / "demo", torch_checkpoint=False)
    result = run_audit(load_config(example.config), out=tmp_path / "out", jobs=1)
    console = Console(record=True, width=200)
    assert self_check(example, result, console)
    nobody = Planted("a problem nobody planted", "signature", "models/other.joblib",
                     rule_id="BST-AUD-SIG-001")
    assert not self_check(example, result, console, [*planted_problems(), nobody])
    last_row = console.export_text().strip().splitlines()[-1]
    cells = [cell.strip() for cell in last_row.split("│")]
    assert cells == ["a problem nobody planted", "signature", "missed"]


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(app, ["demo", "--dir", str(work)])
    assert result.exit_code == 2
    assert "not empty and not made by `bastion demo`" in result.output
    assert (work / "thesis.tex").read_text() == "years of work"
    again = build_example(tmp_path / "demo", torch_checkpoint=False)
    assert build_example(again.root, torch_checkpoint=False).root == again.root  # its own: ok
