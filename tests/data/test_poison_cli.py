"""`bastion data check` through the real command line: a torch model's weights with a factory,
ranked rows out, the score plot, and one-line errors for bad input."""

from __future__ import annotations

import csv
import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from typer.testing import CliRunner

from bastion.assess.poisoning import Trigger, badnets
from bastion.cli.main import app

runner = CliRunner()

FACTORY = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                             nn.ReLU(), nn.Linear(32, 10))
    """
)


def _train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 25) -> None:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    inputs, labels = torch.as_tensor(x), torch.as_tensor(y)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(inputs[batch]), labels[batch]).backward()
            optimiser.step()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("check")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    poisoned = badnets(
        x, digits.target, 0.05, np.random.default_rng(0), target=0, trigger=Trigger.fit(x, 2)
    )
    np.savez(folder / "train.npz", x=poisoned.x, y=poisoned.y)
    (folder / "poison_factory.py").write_text(FACTORY)
    sys.path.insert(0, str(folder))
    try:
        net = importlib.import_module("poison_factory").build()
        _train(net, poisoned.x, poisoned.y)
        torch.save(net.state_dict(), folder / "model.pt")
        yield folder, poisoned.rows
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("poison_factory", None)


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
        "backdoor",
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
    assert [f["rule_id"] for f in document["findings"]] == ["BST-DATA-011"]
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
