"""Shared fixtures for the poisoning tests: digits with 5% BadNets poison relabelled into
class 0, and one small torch MLP trained on it (built by a factory module the CLI can import)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.assess.poisoning import Poisoned, Trigger, badnets

TARGET = 0
FACTORY = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                             nn.ReLU(), nn.Linear(32, 10))
    """
)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models: extra threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def poisoned_digits() -> Poisoned:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    return badnets(
        x, digits.target, 0.05, np.random.default_rng(0), target=TARGET, trigger=Trigger.fit(x, 2)
    )


def _train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 25) -> nn.Module:
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
    return net.eval()


@pytest.fixture(scope="session")
def backdoored_model(poisoned_digits, tmp_path_factory: pytest.TempPathFactory):
    """(folder with model.pt and poison_factory.py on sys.path, the trained module)."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "poison_factory.py").write_text(FACTORY)
    sys.path.insert(0, str(folder))
    try:
        torch.manual_seed(0)
        net = _train(
            importlib.import_module("poison_factory").build(), poisoned_digits.x, poisoned_digits.y
        )
        torch.save(net.state_dict(), folder / "model.pt")
        yield folder, net
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("poison_factory", None)


@pytest.fixture(scope="session")
def clean_model() -> nn.Module:
    """The same MLP trained on the unpoisoned digits."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
        return _train(net, x, digits.target)
    finally:
        torch.set_num_threads(threads)
