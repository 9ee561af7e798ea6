"""DP-SGD in one call: the epsilon asked for is the epsilon spent, it is recorded for the
model card, and membership inference against the model is no better than chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from bastion.assess.membership import assess_membership
from bastion.errors import UsageError
from bastion.training.private import (
    read_privacy_metadata,
    train_private,
    write_privacy_metadata,
)

N = 1000  # AUC's sampling noise at this size is about 0.013


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models: one thread is faster than several contending for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))


def _data() -> tuple[np.ndarray, ...]:
    x, y = make_classification(
        n_samples=2 * N, n_features=10, n_informative=6, n_classes=3, flip_y=0.1, random_state=0
    )
    x = x.astype(np.float32)
    return x[:N], y[:N], x[N:], y[N:]


def _overfit(x, y) -> nn.Module:
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    features, labels = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(400):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def private_model():
    xm, ym, xn, yn = _data()
    result = train_private(_mlp(), xm, ym, target_epsilon=1.0, epochs=10, batch_size=128)
    return result, (xm, ym, xn, yn)


def test_epsilon_spent_matches_the_target_and_is_recorded(private_model, tmp_path) -> None:
    result, _ = private_model
    assert 0.9 <= result.epsilon <= 1.0
    guarantee = result.module.bastion_privacy
    assert guarantee["epsilon"] == result.epsilon and guarantee["delta"] <= 1 / N
    assert guarantee["noise_multiplier"] > 1 and guarantee["records"] == N
    model_path = tmp_path / "model.pt"
    torch.save(result.module.state_dict(), model_path)
    sidecar = write_privacy_metadata(result, model_path)
    assert json.loads(sidecar.read_text())["privacy"]["epsilon"] == result.epsilon
    assert read_privacy_metadata(model_path) == guarantee
    assert read_privacy_metadata(tmp_path / "other.pt") is None
    # The returned module is the user's own, free of Opacus's hooks.
    assert type(result.module) is nn.Sequential
    assert all(getattr(p, "grad_sample", None) is None for p in result.module.parameters())


def test_membership_inference_at_epsilon_one_is_chance(private_model) -> None:
    result, (xm, ym, xn, yn) = private_model
    private = assess_membership(result.module, xm, ym, xn, yn, attacks="loss")
    assert private.results[0].roc.auc < 0.55, private.results[0].metrics()
    assert private.findings == []
    # The same network trained without DP leaks: the test can tell the difference.
    leaky = assess_membership(_overfit(xm, ym), xm, ym, xn, yn, attacks="loss")
    assert leaky.results[0].roc.auc > private.results[0].roc.auc + 0.05
    assert leaky.findings  # and the policy reports it


def test_noise_multiplier_instead_of_epsilon_and_bad_arguments() -> None:
    xm, ym, _, _ = _data()
    result = train_private(_mlp(), xm[:64], ym[:64], noise_multiplier=2.0, epochs=1,
                           batch_size=16, accountant="rdp")
    assert result.guarantee.noise_multiplier == 2.0 and result.epsilon > 0
    with pytest.raises(UsageError, match="exactly one of target_epsilon and noise_multiplier"):
        train_private(_mlp(), xm, ym, target_epsilon=1.0, noise_multiplier=1.0)
    batchnorm = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(UsageError, match="replace BatchNorm with GroupNorm"):
        train_private(batchnorm, xm, ym, target_epsilon=1.0)
