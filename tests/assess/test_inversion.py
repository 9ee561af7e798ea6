"""Model inversion: MIFace reconstructions of a digits model resemble the digits; attribute
inference finds a sensitive column the model's output reveals, and nothing when it does not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from torch import nn

from bastion.assess.inversion import assess_inversion, plot_reconstructions
from bastion.errors import InputError, UsageError
from bastion.models.torch_classifier import TorchClassifier


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models: one thread is faster than several contending for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_model():
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    features, labels = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(features), labels).backward()
        optimizer.step()
    return TorchClassifier(module.eval(), input_shape=(64,), clip_values=(0.0, 1.0)), x, y


def test_miface_reconstructions_resemble_their_class(digits_model, tmp_path) -> None:
    classifier, x, y = digits_model
    assessment = assess_inversion(classifier, x, y)
    recon = assessment.reconstructions
    assert recon.images.shape == (10, 64)
    assert recon.images.min() >= 0.0 and recon.images.max() <= 1.0
    assert (recon.confidence >= 0.9).all()
    assert recon.identified.sum() >= 8
    (finding,) = assessment.findings
    assert finding.rule_id == "BST-PRIV-003" and finding.references == ("ML03", "AML.T0024.001")
    assert assessment.metrics()["reconstruction"]["identified_fraction"] >= 0.8
    plot = tmp_path / "recon.png"
    plot_reconstructions(recon, plot)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_miface_needs_a_differentiable_model() -> None:
    x = np.random.default_rng(0).random((40, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    with pytest.raises(UsageError, match=r"needs gradients.*attribute inference"):
        assess_inversion(model, x, (x[:, 0] > 0.5).astype(int))


def _tabular(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 5))
    x[:, 2] = rng.integers(0, 2, n)  # the sensitive column, binary
    return x, rng.normal(size=n)


def test_attribute_inference_finds_a_revealed_column() -> None:
    rng = np.random.default_rng(0)
    x, noise = _tabular(rng)
    y = (x[:, 0] + 1.5 * x[:, 2] + 0.5 * noise > 0.75).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((64,), max_iter=800, random_state=0).fit(x, y)
    names = ["age", "income", "hiv_status", "zip", "visits"]
    assessment = assess_inversion(model, x, y, sensitive="hiv_status", feature_names=names)
    result = assessment.attribute
    assert result.attack_accuracy[result.best_attack] > 0.9
    assert result.advantage > 0.15
    (finding,) = assessment.findings
    assert finding.rule_id == "BST-PRIV-002" and "'hiv_status'" in finding.title
    assert finding.severity.name == "HIGH"


def test_attribute_inference_on_a_model_that_ignores_the_column() -> None:
    rng = np.random.default_rng(1)
    x, _ = _tabular(rng)
    y = (x[:, 0] > 0).astype(int)
    assessment = assess_inversion(LogisticRegression().fit(x, y), x, y, sensitive=2)
    assert abs(assessment.attribute.advantage) < assessment.attribute.noise_margin
    assert assessment.findings == []


def test_unknown_sensitive_column() -> None:
    x, _ = _tabular(np.random.default_rng(2), 50)
    y = (x[:, 0] > 0).astype(int)
    with pytest.raises(InputError, match="no sensitive column 'ssn'"):
        assess_inversion(LogisticRegression().fit(x, y), x, y, sensitive="ssn",
                         feature_names=["a", "b", "c", "d", "e"])
