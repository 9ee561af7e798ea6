"""`bastion assess extraction` against a local model file: fidelity grows with the budget,
label-only answers slow a noise-pool copier, findings name ML05 / AML.T0024.002."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from bastion.assess.extraction import assess
from bastion.cli.main import app
from bastion.models.classifier import as_classifier
from bastion.serve.harden import parse_policy

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, pool, held = order[:900], order[900:1300], order[1300:1600]
    folder = tmp_path_factory.mktemp("extraction")
    model = LogisticRegression(max_iter=3000).fit(x[train], y[train])
    joblib.dump(model, folder / "model.joblib")
    np.savez(folder / "held.npz", x=x[held], y=y[held])
    np.savez(folder / "pool.npz", x=x[pool])
    return folder, model, x[pool], x[held], y[held]


def test_fidelity_grows_and_label_only_slows_a_noise_copier(digits_files):
    _, model, _, held_x, held_y = digits_files
    target = as_classifier(model, clip_values=(0.0, 16.0))
    result = assess(target, "model", held_x, held_y, budgets=(50, 400), strategy="random",
                    defences=[parse_policy("label")], seed=0)
    undefended, label_only = result.runs
    assert undefended.defence == "none" and label_only.defence == "label"
    assert undefended.checkpoints[1].fidelity > undefended.checkpoints[0].fidelity
    assert label_only.checkpoints[1].fidelity < undefended.checkpoints[1].fidelity - 0.05
    again = assess(target, "model", held_x, held_y, budgets=(50, 400), seed=0)
    assert again.runs[0].checkpoints == undefended.checkpoints  # seeded: reproducible


def test_cli_reports_fidelity_and_findings(digits_files):
    folder, *_ = digits_files
    result = runner.invoke(app, [
        "assess", "extraction", "--target", str(folder / "model.joblib"),
        "--data", str(folder / "held.npz"), "--pool", str(folder / "pool.npz"),
        "--budget", "50,300", "--strategy", "adaptive", "--defence", "round:1",
        "--format", "json", "--fail-on", "critical",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    runs = report["metrics"]["runs"]
    assert [r["defence"] for r in runs] == ["none", "round:1"]
    assert [c["queries"] for c in runs[0]["checkpoints"]] == [50, 300]
    copyable = [f for f in report["findings"] if f["rule_id"] == "BST-EXT-001"]
    assert copyable and set(copyable[0]["references"]) == {"ML05", "AML.T0024.002"}
    assert "bastion serve" in copyable[0]["remediation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "5"], "at least 10"),
        (["--strategy", "psychic"], "unknown strategy"),
        (["--defence", "blur"], "output policy"),
        (["--target", "http://127.0.0.1:9/v2/models/m"], "BASTION_API_KEY"),
        (["--target", "missing.joblib"], "no such model file"),
    ],
)
def test_cli_bad_input_is_one_line(digits_files, monkeypatch, args, message):
    folder, *_ = digits_files
    monkeypatch.delenv("BASTION_API_KEY", raising=False)
    base = ["assess", "extraction", "--target", str(folder / "model.joblib"),
            "--data", str(folder / "held.npz"), "--budget", "20"]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_copies_torch_weights_built_by_a_factory(digits_files):
    import torch
    folder, *_ = digits_files
    (folder / "digits_net.py").write_text(
        "import torch\n\ndef build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(32, 10))\n")
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 10))
    torch.save(network.state_dict(), folder / "weights.pt")
    result = runner.invoke(app, [
        "assess", "extraction", "--target", str(folder / "weights.pt"),
        "--model-factory", f"{folder / 'digits_net.py'}:build",
        "--data", str(folder / "held.npz"), "--pool", str(folder / "pool.npz"),
        "--input-range", "0:16", "--budget", "50,200", "--format", "json",
        "--fail-on", "critical",
    ])
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)["metrics"]["runs"]
    assert [c["queries"] for c in run["checkpoints"]] == [50, 200]
    assert run["checkpoints"][1]["fidelity"] > 0.5  # a copy of the untrained net's answers
