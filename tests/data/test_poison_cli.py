"""`bastion data check` through the real command line: a torch model's weights with a factory,
ranked rows out, the score plot, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.govern.events import file_digest
from bastion.govern.ledger import Ledger

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(poisoned_digits, backdoored_model):
    folder, _ = backdoored_model
    np.savez(folder / "train.npz", x=poisoned_digits.x, y=poisoned_digits.y)
    return folder, poisoned_digits.rows


def test_check_with_torch_weights_ranks_the_poisoned_rows(workspace) -> None:
    folder, truth = workspace
    rows_out, plot = folder / "rows.csv", folder / "scores.png"
    args = [
        "data",
        "check",
        "--data",
        str(folder / "train.npz"),
        "--model",
        str(folder / "model.pt"),
        "--model-factory",
        "poison_factory:build",
        "--detectors",
        "backdoor,trigger",
        "--rows-out",
        str(rows_out),
        "--plot",
        str(plot),
        "--format",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # a high finding at the default --fail-on
    document = json.loads(result.stdout)
    assert sorted(f["rule_id"] for f in document["findings"]) == ["BST-DATA-011", "BST-DATA-014"]
    assert document["artifacts"][1]["trigger_search"]["suspects"] == [0]
    with open(rows_out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    flagged = {int(r["row"]) for r in rows}
    assert len(flagged & set(truth.tolist())) >= 0.9 * len(truth)
    assert len(flagged & set(truth.tolist())) >= 0.8 * len(flagged)
    assert all("backdoor" in r["reasons"] for r in rows)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_weights_without_factory_say_what_to_add(workspace) -> None:
    folder, _ = workspace
    args = [
        "data",
        "check",
        "--data",
        str(folder / "train.npz"),
        "--model",
        str(folder / "model.pt"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--model-factory" in result.output


@pytest.mark.parametrize(
    ("write", "extra", "message"),
    [
        (lambda p: np.savez(p, x=np.zeros((30, 2)), y=np.zeros(29)), [], "30 rows of features"),
        (lambda p: p.write_text("a,y\n1,0\n2,\n"), ["--label", "y"], "label of row 1 is missing"),
        (lambda p: p.write_text("a,y\n1,0\n"), ["--label", "nope"], "no label column 'nope'"),
        (lambda p: p.write_text("{}"), [], "unsupported data file"),
    ],
    ids=["mismatched-lengths", "nan-label", "unknown-column", "unsupported-file"],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, write, extra, message) -> None:
    suffix = {"30 rows of features": ".npz", "unsupported data file": ".yaml"}.get(message, ".csv")
    path = tmp_path / f"bad{suffix}"
    write(path)
    result = runner.invoke(app, ["data", "check", "--data", str(path), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_detector_choice_is_checked(workspace) -> None:
    folder, _ = workspace
    data = str(folder / "train.npz")
    unknown = runner.invoke(app, ["data", "check", "--data", data, "--detectors", "magic"])
    assert unknown.exit_code == 2 and "unknown detector(s) magic" in unknown.output
    none_left = runner.invoke(app, ["data", "check", "--data", data, "--detectors", "trigger"])
    assert none_left.exit_code == 0, none_left.output  # the trigger search needs --model


def test_check_csv_with_a_scikit_learn_model_finds_flipped_labels(tmp_path: Path) -> None:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0]])
    y = rng.integers(0, 3, 240)
    x = centres[y] + rng.normal(size=(240, 2))
    names = np.array(["ant", "bee", "cat"])[y]
    flipped = [7, 99, 180]
    for row in flipped:  # a label that is certainly another class's
        names[row] = {"ant": "cat", "bee": "ant", "cat": "bee"}[["ant", "bee", "cat"][y[row]]]
    pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "kind": names}).to_csv(
        tmp_path / "train.csv", index=False
    )
    joblib.dump(LogisticRegression(max_iter=200).fit(x, names), tmp_path / "model.joblib")
    rows_out = tmp_path / "rows.json"
    ledger = tmp_path / "audit.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "data",
            "check",
            "--data",
            str(tmp_path / "train.csv"),
            "--label",
            "kind",
            "--model",
            str(tmp_path / "model.joblib"),
            "--detectors",
            "labels",
            "--rows-out",
            str(rows_out),
            "--fail-on",
            "medium",
            "-f",
            "json",
            "--ledger",
            str(ledger),
        ],
    )
    assert result.exit_code == 1, result.output
    rows = json.loads(rows_out.read_text())
    assert {r["row"] for r in rows} >= set(flipped)
    assert all(r["label"] in {"ant", "bee", "cat"} for r in rows)
    with Ledger.open(ledger) as opened:
        (event,) = [entry.event for entry in opened.entries()]
    assert event["kind"] == "scan" and event["details"]["check"] == "data-poisoning"
    assert [s["digest"] for s in event["subjects"]] == [
        file_digest(tmp_path / "train.csv"), file_digest(tmp_path / "model.joblib")]
    assert event["details"]["suspicious"] == len(rows)
