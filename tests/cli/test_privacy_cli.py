"""`bastion assess membership|inversion` through the real command line: reports, plots,
ledger entries, and exit code 2 with one line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from torch import nn
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()

TRAIN_FNS = '''
from sklearn.linear_model import LogisticRegression

def fails(x, y, seed):
    raise ValueError("bad hyper-parameters")

def two_classes(x, y, seed):
    return LogisticRegression().fit(x, (y > 0).astype(int))

def build():
    import torch
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("privacy-cli")
    x, y = make_classification(n_samples=240, n_features=6, n_informative=4, n_classes=3,
                               random_state=0)  # fmt: skip
    np.savez(folder / "members.npz", x=x[:120], y=y[:120])
    np.savez(folder / "nonmembers.npz", x=x[120:], y=y[120:])
    joblib.dump(LogisticRegression(max_iter=500).fit(x[:120], y[:120]), folder / "model.joblib")
    (folder / "train_fns.py").write_text(TRAIN_FNS)
    return {name: folder / name for name in
            ("members.npz", "nonmembers.npz", "model.joblib", "train_fns.py")} | {"dir": folder}


def _membership(files, *extra: str):
    return runner.invoke(app, [
        "assess", "membership", "--model", str(files["model.joblib"]),
        "--data", str(files["members.npz"]), "--nonmembers", str(files["nonmembers.npz"]),
        "-j", "1", *extra,
    ])  # fmt: skip


def test_membership_report_plot_and_ledger(files) -> None:
    plot, ledger = files["dir"] / "roc.png", files["dir"] / "ledger.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    result = _membership(files, "--attack", "loss", "--attack", "lira", "--online",
                         "--references", "2", "--format", "json", "--plot", str(plot),
                         "--ledger", str(ledger), "--fail-on", "critical")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert [a["attack"] for a in metrics["attacks"]] == ["loss", "lira-online"]
    assert metrics["members"] == 120 and metrics["references"] == 2
    assert all(0.0 <= a["auc"] <= 1.0 for a in metrics["attacks"])
    assert plot.read_bytes()[:4] == b"\x89PNG" and ledger.exists()
    from bastion.govern.ledger import Ledger

    with Ledger.open(ledger) as book:
        (entry,) = list(book.entries())
    assert entry.event["kind"] == "assess" and entry.event["details"]["check"] == "membership"


@pytest.mark.parametrize(
    ("train_fn", "message"),
    [
        ("fails", "reference model 0: the training function raised ValueError: bad hyper"),
        ("two_classes", "expected (240, 3) (it knows classes [0, 1])"),
        ("missing", "has no function 'missing'"),
    ],
)
def test_bad_training_functions_exit_two(files, train_fn, message) -> None:
    result = _membership(files, "--attack", "lira", "--references", "2",
                         "--train-fn", f"{files['train_fns.py']}:{train_fn}")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_too_few_records_for_the_references_exits_two(files) -> None:
    result = _membership(files, "--attack", "rmia", "--references", "200")
    assert result.exit_code == 2
    assert "too few records for 200 reference models" in " ".join(result.output.split())


def test_inversion_refuses_a_model_without_gradients(files) -> None:
    result = runner.invoke(app, ["assess", "inversion", "--model", str(files["model.joblib"]),
                                 "--data", str(files["members.npz"])])
    assert result.exit_code == 2
    assert "needs gradients" in " ".join(result.output.split())


def test_inversion_attribute_inference_and_miface_from_cli(files) -> None:
    result = runner.invoke(app, [
        "assess", "inversion", "--model", str(files["model.joblib"]),
        "--data", str(files["members.npz"]), "--sensitive", "0", "--format", "json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    attribute = json.loads(result.stdout)["metrics"]["attribute_inference"]
    assert attribute["sensitive_column"] == "column 0" and attribute["binned"] is True

    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    weights = files["dir"] / "net.pt"
    torch.save(network.state_dict(), weights)
    plot = files["dir"] / "recon.png"
    result = runner.invoke(app, [
        "assess", "inversion", "--model", str(weights),
        "--model-factory", f"{files['train_fns.py']}:build", "--data", str(files["members.npz"]),
        "--clip", "-3,3", "--steps", "20", "--plot", str(plot), "--format", "json",
    ])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    reconstruction = json.loads(result.stdout)["metrics"]["reconstruction"]
    assert reconstruction["classes"] == [0, 1, 2]
    assert plot.read_bytes()[:4] == b"\x89PNG"
