"""The `data_diff` check of `bastion audit`: the audit's ledger entry records each dataset's
root; the next audit says whether the data changed since, and with a declared baseline which
rows; a baseline that is not the audited version fails the check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bastion.audit import CHECK_FAILED, record_audit, run_audit
from bastion.audit_checks.data_diff import DATA_CHANGED
from bastion.config import load_config
from bastion.data.rules import LABELS_CHANGED, ROWS_CHANGED
from bastion.errors import InputError
from bastion.findings import Severity
from bastion.govern.ledger import Ledger, init_ledger


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    frame.to_csv(path, index=False)


def _data(seed: int = 0, rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)).round(6), rng.integers(0, 3, size=rows)


def _project(root: Path, *, baseline: str | None = None, ledger: bool = True) -> Path:
    text = '[project]\nname = "diffed"\n[data.train]\npath = "train.csv"\nlabel = "label"\n'
    if baseline:
        text += f'baseline = "{baseline}"\n'
    if ledger:
        if not (root / "audit.ledger").exists():
            init_ledger(root / "audit.ledger", origin="test")[0].close()
        text += '[ledger]\npath = "audit.ledger"\n'
    (root / "bastion.toml").write_text(text)
    return root / "bastion.toml"


def _audit(config_path: Path, out: Path):
    config = load_config(config_path)
    result = run_audit(config, out=out, only=["data_diff"], jobs=1)
    record_audit(config, result, {})
    return result


def test_same_data_twice_is_unchanged_since_the_first_audit(tmp_path: Path) -> None:
    x, y = _data()
    _write(tmp_path / "train.csv", x, y)
    config = _project(tmp_path)
    first = _audit(config, tmp_path / "out1")
    metrics = first.outcome("data_diff").result.metrics["datasets"]["train"]
    assert first.findings == [] and metrics["status"].startswith("first audit")
    with Ledger.open(tmp_path / "audit.ledger") as ledger:
        recorded = ledger.entry(first.ledger_index).event["details"]["datasets"]["train"]
    assert recorded["root"] == metrics["root"] and recorded["rows"] == 400
    assert len(recorded["buckets"]) == 256
    # The same rows in another order are the same data.
    order = np.random.default_rng(1).permutation(len(y))
    _write(tmp_path / "train.csv", x[order], y[order])
    second = _audit(config, tmp_path / "out2")
    metrics = second.outcome("data_diff").result.metrics["datasets"]["train"]
    assert second.findings == []
    assert metrics["status"] == f"unchanged since audit #{first.ledger_index}"


def _edit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the labels of rows 0-9 and add 30 new rows."""
    y = y.copy()
    y[:10] = (y[:10] + 1) % 3
    extra_x, extra_y = _data(seed=7, rows=30)
    return np.vstack([x, extra_x]), np.concatenate([y, extra_y])


def test_edited_data_with_a_baseline_lists_the_changed_rows(tmp_path: Path) -> None:
    x, y = _data()
    _write(tmp_path / "train.csv", x, y)
    first = _audit(_project(tmp_path), tmp_path / "out1")
    (tmp_path / "train-v1.csv").write_bytes((tmp_path / "train.csv").read_bytes())
    _write(tmp_path / "train.csv", *_edit(x, y))
    second = _audit(_project(tmp_path, baseline="train-v1.csv"), tmp_path / "out2")
    assert second.outcome("data_diff").status == "ran"
    by_rule = {f.rule_id: f for f in second.findings}
    assert set(by_rule) == {DATA_CHANGED.rule_id, LABELS_CHANGED.rule_id, ROWS_CHANGED.rule_id}
    changed = by_rule[DATA_CHANGED.rule_id]
    assert f"since audit #{first.ledger_index}" in changed.title
    assert "30 rows added, 0 removed, 10 modified (10 relabelled)" in changed.title
    assert "bastion data diff" in changed.remediation and "--ledger" in changed.remediation
    assert str(tmp_path / "train-v1.csv") in changed.remediation
    assert by_rule[LABELS_CHANGED.rule_id].severity == Severity.HIGH
    assert by_rule[LABELS_CHANGED.rule_id].evidence["label_changes"]
    diff = second.outcome("data_diff").result.metrics["datasets"]["train"]["diff"]
    assert (diff["added"], diff["removed"], diff["modified"]) == (30, 0, 10)


def test_edited_data_without_a_baseline_reports_the_changed_root(tmp_path: Path) -> None:
    x, y = _data()
    _write(tmp_path / "train.csv", x, y)
    config = _project(tmp_path)
    first = _audit(config, tmp_path / "out1")
    _write(tmp_path / "train.csv", *_edit(x, y))
    second = _audit(config, tmp_path / "out2")
    [finding] = second.findings
    assert finding.rule_id == DATA_CHANGED.rule_id and finding.severity == Severity.MEDIUM
    buckets = finding.evidence["buckets_changed"]
    assert 0 < buckets <= 40  # at most one bucket per changed row
    assert f"{buckets} of 256 buckets differ; 400 -> 430 rows" in finding.title
    assert f"audit #{first.ledger_index}" in finding.title
    # The third audit compares with the second, which recorded the edited data.
    third = _audit(config, tmp_path / "out3")
    status = third.outcome("data_diff").result.metrics["datasets"]["train"]["status"]
    assert third.findings == [] and status == f"unchanged since audit #{second.ledger_index}"


def test_a_baseline_that_is_not_the_audited_version_fails_the_check(tmp_path: Path) -> None:
    x, y = _data()
    _write(tmp_path / "train.csv", x, y)
    _audit(_project(tmp_path), tmp_path / "out1")
    _write(tmp_path / "train-v1.csv", x[:-1], y[:-1])  # tampered: one row short
    _write(tmp_path / "train.csv", *_edit(x, y))
    result = _audit(_project(tmp_path, baseline="train-v1.csv"), tmp_path / "out2")
    assert result.outcome("data_diff").status == "error"
    [failed] = result.findings
    assert failed.rule_id == CHECK_FAILED.rule_id and failed.severity == Severity.HIGH
    assert "data.train.baseline" in failed.title and "is not the data audited" in failed.title
    # Unreadable: a baseline that is not CSV at all.
    (tmp_path / "train-v1.csv").write_bytes(b"\x00\xff" * 50 + b"\n\"unterminated")
    result = _audit(_project(tmp_path, baseline="train-v1.csv"), tmp_path / "out3")
    assert result.outcome("data_diff").status == "error"
    assert [f.rule_id for f in result.findings] == [CHECK_FAILED.rule_id]


def test_a_missing_baseline_is_a_configuration_error(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", *_data())
    with pytest.raises(InputError, match=r"data.train.baseline: baseline data .* does not exist"):
        load_config(_project(tmp_path, baseline="gone.csv"))


def test_without_a_ledger_the_check_does_not_apply(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", *_data())
    config = load_config(_project(tmp_path, ledger=False))
    with pytest.raises(InputError, match="nothing to audit"):
        run_audit(config, out=tmp_path / "out", only=["data_diff"], jobs=1)
    result = run_audit(config, out=tmp_path / "out", only=["data_diff", "pii"], jobs=1)
    assert result.outcome("data_diff").status == "not applicable"
