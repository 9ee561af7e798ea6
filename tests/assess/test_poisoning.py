"""bastion.assess.poisoning: label flips lower accuracy monotonically, a BadNets trigger is
learnt at a few percent poison, and `bastion assess poisoning` reports it with a plot."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from typer.testing import CliRunner

from bastion.assess.poisoning import (
    Trigger,
    assess_poisoning,
    badnets,
    flip_labels,
    sklearn_trainer,
)
from bastion.cli.main import app
from bastion.errors import UsageError
from bastion.govern.ledger import Ledger

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = data.data / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_label_flips_lower_accuracy_monotonically(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    result = assess_poisoning(
        sklearn_trainer(KNeighborsClassifier(1)),
        x_train,
        y_train,
        x_test,
        y_test,
        attacks=["label-flip"],
        rates=[0.1, 0.25, 0.4, 0.55],
        seed=0,
    )
    accuracies = [result.baseline_accuracy] + [p.clean_accuracy for p in result.points]
    assert all(a > b for a, b in itertools.pairwise(accuracies)), accuracies
    assert [p.poisoned_rows for p in result.points] == [120, 300, 480, 660]


def test_backdoor_is_learnt_and_barely_costs_accuracy(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    result = assess_poisoning(
        sklearn_trainer(LogisticRegression(max_iter=500)),
        x_train,
        y_train,
        x_test,
        y_test,
        attacks=["backdoor", "targeted-flip"],
        rates=[0.05],
        target=3,
        seed=0,
    )
    backdoor, targeted = result.points
    assert result.baseline_attack_success["backdoor"] < 0.2
    assert backdoor.attack_success > 0.8
    assert backdoor.accuracy_drop < 0.05
    assert targeted.attack_success > result.baseline_attack_success["targeted-flip"]


def test_simulators_poison_exactly_the_rate() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 4, 200)
    flipped = flip_labels(x, y, 0.1, rng, n_classes=4)
    assert len(flipped.rows) == 20 and np.all(flipped.y[flipped.rows] != y[flipped.rows])
    trigger = Trigger.fit(x, patch=2)
    planted = badnets(x, y, 0.1, rng, target=2, trigger=trigger)
    assert np.all(y[planted.rows] != 2) and np.all(planted.y[planted.rows] == 2)
    assert np.all(planted.x[planted.rows][:, trigger.columns] == trigger.value)
    with pytest.raises(UsageError):
        flip_labels(x, y, 1.5, rng, n_classes=4)


def test_cli_table_json_and_plot(tmp_path: Path, digits) -> None:
    x_train, y_train, _, _ = digits
    np.savez(tmp_path / "digits.npz", x=x_train[:600], y=y_train[:600])
    plot = tmp_path / "poison.png"
    args = [
        "assess",
        "poisoning",
        "--data",
        str(tmp_path / "digits.npz"),
        "--rates",
        "0.05,0.2",
        "--attacks",
        "label-flip,backdoor",
        "--plot",
        str(plot),
        "-f",
        "json",
    ]
    ledger = tmp_path / "audit.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    result = runner.invoke(app, [*args, "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["artifacts"]) == 4
    assert plot.read_bytes().startswith(b"\x89PNG")
    with Ledger.open(ledger) as opened:
        (event,) = [entry.event for entry in opened.entries()]
    assert event["kind"] == "assess" and event["details"]["assessment"] == "poisoning"
    assert event["details"]["baseline_accuracy"] == document["metrics"]["baseline_accuracy"]
    bad = runner.invoke(app, [*args[:4], "--rates", "2"])
    assert bad.exit_code == 2 and "each rate must be in [0, 1)" in bad.output


def test_cli_with_a_user_training_function(tmp_path: Path, digits, monkeypatch) -> None:
    x_train, y_train, _, _ = digits
    np.savez(tmp_path / "digits.npz", x=x_train[:400], y=y_train[:400])
    (tmp_path / "my_training.py").write_text(
        "from sklearn.neighbors import KNeighborsClassifier\n"
        "CALLS = []\n"
        "def train(x, y, seed):\n"
        "    CALLS.append((x.shape, seed))\n"
        "    return KNeighborsClassifier(3).fit(x, y)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [
        "assess",
        "poisoning",
        "--data",
        str(tmp_path / "digits.npz"),
        "--rates",
        "0.1",
        "--attacks",
        "label-flip",
        "--train-fn",
        "my_training:train",
        "--seed",
        "4",
        "-f",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    import my_training

    assert my_training.CALLS == [((300, 64), 4), ((300, 64), 4)]  # baseline, then poisoned
    missing = runner.invoke(app, [*args[:-2], "--train-fn", "nowhere:train"])
    assert missing.exit_code == 2 and "no such importable function" in missing.output
