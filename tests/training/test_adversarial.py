"""Adversarial training raises robust accuracy on digits by a clear margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.assess.evasion import pgd
from bastion.errors import InputError, UsageError
from bastion.models.torch_classifier import TorchClassifier
from bastion.training.adversarial import pgd_training, trades_training

torch.set_num_threads(1)
EPS = 0.15


@pytest.fixture(scope="module")
def data():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _robust_accuracy(module: nn.Module, x, y) -> tuple[float, float]:
    clf = TorchClassifier(module, input_shape=(64,), clip_values=(0.0, 1.0))
    clean = float((clf.predict_proba(x).argmax(1) == y).mean())
    return clean, 1.0 - float(pgd(clf, x, y, eps=EPS, steps=20, seed=0).success.mean())


@pytest.fixture(scope="module")
def baseline(data):
    x, y = data
    module = _mlp()
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.tensor(x[:1200]), torch.tensor(y[:1200])
    for _ in range(15):
        for chosen in torch.randperm(1200, generator=generator).split(128):
            optimiser.zero_grad()
            nn.functional.cross_entropy(module(inputs[chosen]), labels[chosen]).backward()
            optimiser.step()
    return _robust_accuracy(module.eval(), x[1200:], y[1200:])


@pytest.mark.parametrize("train", [pgd_training, trades_training])
def test_adversarial_training_raises_robust_accuracy(train, data, baseline) -> None:
    x, y = data
    module = train(_mlp(), x[:1200], y[:1200], eps=EPS, epochs=15, lr=3e-3, steps=5, seed=0)
    clean, robust = _robust_accuracy(module, x[1200:], y[1200:])
    base_clean, base_robust = baseline
    assert robust > base_robust + 0.25, (robust, base_robust)
    assert clean > 0.8 and base_clean > 0.9
    assert not module.training
    assert all(p.requires_grad for p in module.parameters())


def test_training_is_reproducible_from_its_seed(data) -> None:
    x, y = data
    first = pgd_training(_mlp(), x[:300], y[:300], eps=EPS, epochs=1, steps=2, seed=3)
    second = pgd_training(_mlp(), x[:300], y[:300], eps=EPS, epochs=1, steps=2, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_arguments(data) -> None:
    x, y = data
    with pytest.raises(UsageError, match="epsilon must be a positive number"):
        pgd_training(_mlp(), x[:10], y[:10], eps=0)
    with pytest.raises(InputError, match="as many labels as inputs"):
        trades_training(_mlp(), x[:10], y[:5], eps=0.1)
