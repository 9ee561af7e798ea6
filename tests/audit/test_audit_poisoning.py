"""The `poisoning` check of `bastion audit`: BadNets rows planted in a small table are found
and named, clean data raises nothing at high, and data it cannot read fail the check (never
a silent pass)."""

from __future__ import annotations

import csv
import typing
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from bastion.audit import CHECK_FAILED, run_audit
from bastion.audit_checks.poisoning import PLOT_FILE, ROWS_FILE
from bastion.cli.data import CLI_DETECTORS
from bastion.config import PoisoningDetector, load_config
from bastion.errors import InputError
from bastion.findings import Severity, Threat

TRIGGER = (0, 1)  # feature indices set to one out-of-range value: the tabular BadNets trigger
TARGET = 0


def _clean(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, class_sep=2.0,
                               random_state=int(rng.integers(1 << 31)))
    return x, y


def _badnets(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, count: int = 18
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamp the trigger on `count` rows of other classes and relabel them as the target."""
    rows = np.sort(rng.choice(np.flatnonzero(y != TARGET), count, replace=False))
    x, y = x.copy(), y.copy()
    x[np.ix_(rows, TRIGGER)] = x.max() + 6.0
    y[rows] = TARGET
    return x, y, rows


def _project(root: Path, x: np.ndarray, y: np.ndarray, *, model: bool = True,
             extra: str = "") -> Path:
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    frame.to_csv(root / "train.csv", index=False)
    text = '[data.train]\npath = "train.csv"\nlabel = "label"\n'
    if model:
        joblib.dump(LogisticRegression(max_iter=500).fit(x, y), root / "model.joblib")
        text = '[model]\npath = "model.joblib"\n' + text
    (root / "bastion.toml").write_text(text + extra)
    return root / "bastion.toml"


def _audit(config: Path, out: Path):
    result = run_audit(load_config(config), out=out, only=["poisoning"], jobs=1)
    return result, result.outcome("poisoning")


def test_planted_badnets_rows_are_found_and_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x, y, planted = _badnets(*_clean(rng), rng)
    result, outcome = _audit(_project(tmp_path, x, y), tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    assert outcome.result.metrics["model"] == {"used": True, "as": "estimator"}
    backdoor = [f for f in result.findings if f.rule_id == "BST-DATA-011"]
    assert len(backdoor) == 1
    finding = backdoor[0]
    assert finding.severity >= Severity.HIGH and finding.threat == Threat.DATA_POISONING
    assert set(finding.references) == {"ML02", "AML.T0020"}
    assert finding.location.path == str(tmp_path / "train.csv")
    assert finding.evidence["classes"] == [str(TARGET)]
    assert set(finding.evidence["first_rows"]) <= set(planted.tolist())
    assert "bastion audit --only poisoning" in finding.remediation
    assert f"--data {tmp_path / 'train.csv'}" in finding.remediation
    # The artifact lists every suspicious row; the backdoor reason is on exactly the planted.
    out = tmp_path / "out" / "checks" / "poisoning"
    with (out / ROWS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    backdoored = {int(r["row"]) for r in rows if "backdoor" in r["reasons"]}
    assert backdoored == set(planted.tolist())
    assert outcome.result.metrics["flagged_backdoor"] == len(planted)
    plot = outcome.result.plots[0]
    assert plot.media_type == "image/png" and plot.data == (out / PLOT_FILE).read_bytes()
    assert plot.data.startswith(b"\x89PNG")


def test_clean_data_raise_nothing_at_high(tmp_path: Path) -> None:
    x, y = _clean(np.random.default_rng(3))
    result, outcome = _audit(_project(tmp_path, x, y, model=False), tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    assert outcome.result.metrics["model"]["used"] is False
    assert outcome.result.metrics["flagged_backdoor"] == 0
    assert not [f for f in result.findings if f.severity >= Severity.HIGH]


def test_unreadable_data_fail_the_check(tmp_path: Path) -> None:
    x, y = _clean(np.random.default_rng(3))
    config = _project(tmp_path, x, y, model=False)
    (tmp_path / "train.csv").write_bytes(b"f0,f1,label\n1,2\n\x00\xff\xfe,,,,\n")
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "error"
    failed = [f for f in result.findings if f.rule_id == CHECK_FAILED.rule_id]
    assert len(failed) == 1 and failed[0].evidence["check"] == "poisoning"
    assert "train.csv: not a readable CSV file" in failed[0].evidence["error"]
    assert not (tmp_path / "out" / "checks" / "poisoning" / ROWS_FILE).exists()


def test_unlabelled_data_fail_the_check_naming_the_key(tmp_path: Path) -> None:
    x, y = _clean(np.random.default_rng(3))
    config = _project(tmp_path, x, y, model=False)
    config.write_text('[data.train]\npath = "train.csv"\n')
    _, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "error"
    assert "[data.train] needs labels" in outcome.error


def test_detectors_are_configurable_and_match_the_cli(tmp_path: Path) -> None:
    assert typing.get_args(PoisoningDetector) == CLI_DETECTORS
    rng = np.random.default_rng(3)
    x, y, _ = _badnets(*_clean(rng), rng)
    config = _project(tmp_path, x, y, extra='[threat_model.poisoning]\ndetectors = ["labels"]\n')
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    assert outcome.result.metrics["detectors"] == ["labels"]
    assert "flagged_label_issue" in outcome.result.metrics
    assert "flagged_backdoor" not in outcome.result.metrics
    assert {f.rule_id for f in result.findings} <= {"BST-DATA-010"}  # only the label detector ran
    assert "--detectors labels " in outcome.result.metrics["command"]
    config.write_text(config.read_text().replace('["labels"]', '["spectral"]'))
    with pytest.raises(InputError, match=r"threat_model\.poisoning\.detectors\[0\].*'spectral'"):
        load_config(config)
