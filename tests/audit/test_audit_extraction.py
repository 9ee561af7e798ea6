"""The extraction check of `bastion audit`: a Knockoff-style copy through the answers the
declared deployment gives, graded by what one client may ask per day, with the exact
`bastion assess extraction` command that repeats it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from bastion.audit import run_audit
from bastion.audit_checks.extraction import checkpoints, grade, served_policies
from bastion.cli.main import app
from bastion.config import Serving, load_config
from bastion.findings import Severity


def _table(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    return frame


@pytest.fixture(scope="module")
def project_files(tmp_path_factory) -> Path:
    """A linear model on 3 classes: easy to copy, as most deployed models are."""
    root = tmp_path_factory.mktemp("extraction")
    x, y = make_classification(n_samples=700, n_features=6, n_informative=4, n_classes=3,
                               random_state=0)
    joblib.dump(LogisticRegression(max_iter=300).fit(x[:400], y[:400]), root / "model.joblib")
    _table(x[:400], y[:400]).to_csv(root / "train.csv", index=False)
    _table(x[400:], y[400:]).to_csv(root / "test.csv", index=False)
    return root


def _config(root: Path, extraction: str, serving: str | None, train: bool = True) -> Path:
    text = '[model]\npath = "model.joblib"\n[data.test]\npath = "test.csv"\nlabel = "label"\n'
    if train:
        text += '[data.train]\npath = "train.csv"\nlabel = "label"\n'
    text += f"[threat_model.extraction]\n{extraction}\n"
    if serving is not None:
        text += f"[serving]\n{serving}\n"
    path = root / "bastion.toml"
    path.write_text(text)
    return path


def _audit(config: Path, out: Path):
    result = run_audit(load_config(config), out=out, only=["extraction"], jobs=1)
    outcome = result.outcome("extraction")
    assert outcome.status == "ran", outcome.error
    return result, outcome


OPEN = 'require_api_keys = false\noutput = "probabilities"\nmonitor = "block"'


def test_a_model_one_client_can_copy_in_a_day_is_high(project_files: Path, tmp_path: Path) -> None:
    config = _config(project_files, "query_budget = 300\nmax_fidelity = 0.9", OPEN)
    result, outcome = _audit(config, tmp_path / "out")
    [finding] = result.findings
    assert finding.rule_id == "BST-AUD-EXT-001"
    assert finding.severity == Severity.HIGH
    evidence = finding.evidence
    assert evidence["api_keys"] is False and evidence["daily_query_budget"] == "unlimited"
    assert evidence["monitor"] == "block"  # reported, not relied on
    assert evidence["fidelity"] >= 0.9 and evidence["queries_needed"] <= 300
    [run] = outcome.result.metrics["runs"]  # probabilities as served: one run
    reached = [c for c in run["checkpoints"] if c["queries"] == evidence["queries_needed"]]
    assert round(reached[0]["fidelity"], 4) == evidence["fidelity"]
    assert [c["queries"] for c in run["checkpoints"]] == [50, 100, 250, 300]
    assert outcome.result.metrics["pool"] == "training rows"
    [plot] = outcome.result.plots
    assert plot.data.startswith(b"\x89PNG")


def test_the_recheck_command_repeats_the_audit_numbers(project_files: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    config = _config(project_files, "query_budget = 300\nmax_fidelity = 0.9",
                     'output = "label"\ndaily_query_budget = 60')
    result, outcome = _audit(config, tmp_path / "out")
    command = outcome.result.metrics["recheck"]
    assert "--defence label" in command and "--pool-label label" in command
    [finding] = result.findings
    assert f"`{command}`" in finding.remediation
    monkeypatch.chdir(project_files)
    args = [*shlex.split(command)[1:], "--format", "json", "--out", str(tmp_path / "re.json")]
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 1, cli.output  # the copy is as good from the command: its gate fails
    again = json.loads((tmp_path / "re.json").read_text())["metrics"]["runs"]
    audited = outcome.result.metrics["runs"]
    assert [r["checkpoints"] for r in again] == [r["checkpoints"] for r in audited]


def test_a_daily_budget_below_the_copy_cost_makes_it_medium(project_files: Path,
                                                             tmp_path: Path) -> None:
    config = _config(project_files, "query_budget = 300\nmax_fidelity = 0.9",
                     'output = "label"\ndaily_query_budget = 20')
    result, outcome = _audit(config, tmp_path / "out")
    [finding] = result.findings
    assert finding.severity == Severity.MEDIUM
    needed = finding.evidence["queries_needed"]
    assert finding.evidence["key_days_needed"] == -(-needed // 20)
    assert finding.evidence["output"] == "as served: label"
    defences = [run["defence"] for run in outcome.result.metrics["runs"]]
    assert defences == ["probabilities", "as served: label"]


def test_no_finding_when_no_copy_reaches_the_declared_fidelity(project_files: Path,
                                                               tmp_path: Path) -> None:
    config = _config(project_files, "query_budget = 10\nmax_fidelity = 0.99", OPEN)
    result, outcome = _audit(config, tmp_path / "out")
    assert result.findings == []
    [run] = outcome.result.metrics["runs"]
    assert [c["queries"] for c in run["checkpoints"]] == [10]
    assert run["checkpoints"][0]["fidelity"] < 0.99


def test_without_training_data_the_copier_queries_noise_in_the_input_range(
        project_files: Path, tmp_path: Path) -> None:
    config = _config(project_files, "query_budget = 100\nmax_fidelity = 0.5", None, train=False)
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.result.metrics["pool"] == "uniform noise"
    assert "--input-range" in outcome.result.metrics["recheck"]
    [finding] = result.findings
    assert finding.evidence["monitor"] == "none declared"
    assert finding.severity == Severity.HIGH


def test_the_check_needs_test_data_and_a_declared_extraction_threat(project_files: Path,
                                                                    tmp_path: Path) -> None:
    (project_files / "bastion.toml").write_text(
        '[model]\npath = "model.joblib"\n[data.test]\npath = "test.csv"\nlabel = "label"\n')
    result = run_audit(load_config(project_files / "bastion.toml"), out=tmp_path / "o", jobs=1)
    assert result.outcome("extraction").status == "not applicable"


def test_grading_and_policies_follow_the_serving_section() -> None:
    assert grade(500, None)[0] == Severity.HIGH
    assert grade(500, Serving(daily_query_budget=1000))[0] == Severity.HIGH
    severity, facts = grade(500, Serving(daily_query_budget=100))
    assert severity == Severity.MEDIUM and facts["key_days_needed"] == 5
    # A budget without API keys is not per client: anyone can ask again.
    assert grade(500, Serving(daily_query_budget=100, require_api_keys=False))[0] == Severity.HIGH
    assert served_policies(None) == ()
    assert served_policies(Serving(output="probabilities")) == ()
    assert [str(p) for p in served_policies(Serving(output="top-k", top_k=2))] == ["top-k:2"]
    assert [str(p) for p in served_policies(Serving(round_digits=3))] == ["round:3"]
    assert [str(p) for p in served_policies(Serving(output="label"))] == ["label"]
    assert [p.kind for p in served_policies(Serving(output="reverse-sigmoid"))] == [
        "reverse-sigmoid"]
    assert checkpoints(2000, 1437) == [50, 100, 250, 500, 1000, 1437]
    assert checkpoints(40, None) == [40]
