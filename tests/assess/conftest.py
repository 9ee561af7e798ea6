"""Small real models for the evasion tests: a torch MLP and CNN on scikit-learn's digits
(trained here in about a second), and scikit-learn models on digits and breast cancer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from bastion.models.classifier import SklearnClassifier
from bastion.models.torch_classifier import TorchClassifier

# The test machine's cores are shared: one torch thread avoids oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def train(module: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 150) -> nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    inputs, labels = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        optimiser.zero_grad()
        nn.functional.cross_entropy(module(inputs), labels).backward()
        optimiser.step()
    return module.eval()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )


@pytest.fixture(scope="session")
def torch_mlp(digits) -> TorchClassifier:
    x, y = digits
    return TorchClassifier(
        train(mlp(), x[:1000], y[:1000], epochs=100), input_shape=(64,), clip_values=(0.0, 1.0)
    )


@pytest.fixture(scope="session")
def torch_cnn(digits) -> TorchClassifier:
    x, y = digits
    images = x[:800].reshape(-1, 1, 8, 8)
    return TorchClassifier(
        train(cnn(), images, y[:800], epochs=60), input_shape=(1, 8, 8), clip_values=(0.0, 1.0)
    )


@pytest.fixture(scope="session")
def sklearn_digits(digits) -> SklearnClassifier:
    x, y = digits
    return SklearnClassifier(
        LogisticRegression(max_iter=100).fit(x[:600], y[:600]), clip_values=(0.0, 1.0)
    )


@pytest.fixture(scope="session")
def cancer() -> tuple[np.ndarray, np.ndarray, SklearnClassifier]:
    x, y = load_breast_cancer(return_X_y=True)
    x = x / x.max(axis=0)  # features in [0, 1]: one scale for eps
    model = LogisticRegression(max_iter=1000, C=10.0).fit(x, y)
    return x.astype(np.float32), y.astype(np.int64), SklearnClassifier(model)
