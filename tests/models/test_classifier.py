"""The classifier adapters: probabilities, gradients and features agree with the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from torch import nn

from bastion.errors import InputError, UsageError
from bastion.models.classifier import (
    Classifier,
    SklearnClassifier,
    WhiteBoxClassifier,
    accuracy,
    as_classifier,
    check_inputs,
    predict,
    require_white_box,
)
from bastion.models.torch_classifier import TorchClassifier


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_sklearn_adapter_batches_and_matches_the_estimator(digits) -> None:
    x, y = digits
    model = LogisticRegression(max_iter=500).fit(x, y)
    clf = as_classifier(model, batch_size=97)
    assert isinstance(clf, SklearnClassifier) and isinstance(clf, Classifier)
    assert not isinstance(clf, WhiteBoxClassifier)
    assert clf.n_classes == 10 and clf.input_shape == (64,)
    np.testing.assert_allclose(clf.predict_proba(x), model.predict_proba(x))
    assert accuracy(clf, x, y) == pytest.approx(model.score(x, y))


def test_sklearn_labels_map_to_indices_and_back() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(x, np.array(["cat", "dog", "cat", "dog"]))
    clf = SklearnClassifier(model)
    assert clf.to_indices(np.array(["dog", "cat"])).tolist() == [1, 0]
    with pytest.raises(InputError, match="'bird' is not one of the model's classes"):
        clf.to_indices(np.array(["bird"]))


def test_sklearn_without_probabilities_is_refused_with_a_fix(digits) -> None:
    x, y = digits
    with pytest.raises(InputError, match="probability=True"):
        as_classifier(SVC().fit(x[:200], y[:200]))
    with pytest.raises(InputError, match="not fitted"):
        as_classifier(LogisticRegression())
    with pytest.raises(UsageError, match="cannot use a str"):
        as_classifier("model.pkl")


def test_torch_adapter_probabilities_gradients_and_features(digits) -> None:
    x, y = digits
    module = _mlp()
    clf = as_classifier(module, input_shape=(64,), clip_values=(0.0, 1.0), batch_size=100)
    assert isinstance(clf, TorchClassifier) and isinstance(clf, WhiteBoxClassifier)
    assert clf.n_classes == 10  # probed from the module's output
    with torch.no_grad():
        expected = torch.softmax(module(torch.as_tensor(x[:300])), dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(x[:300]), expected, rtol=1e-5, atol=1e-6)
    assert predict(clf, x[:300]).tolist() == expected.argmax(1).tolist()
    # The gradient matches a finite difference of the summed loss on one coordinate.
    grad = clf.loss_gradient(x[:5], y[:5])
    assert grad.shape == (5, 64)
    bumped = x[:5].copy()
    bumped[2, 7] += 1e-2
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        before = loss(module(torch.as_tensor(x[:5])), torch.as_tensor(y[:5]), reduction="sum")
        after = loss(module(torch.as_tensor(bumped)), torch.as_tensor(y[:5]), reduction="sum")
    assert float(after - before) / 1e-2 == pytest.approx(grad[2, 7], rel=0.05, abs=1e-4)
    features = clf.features(x[:7])
    assert features.shape == (7, 32)
    with torch.no_grad():
        np.testing.assert_allclose(
            features, module[1](module[0](torch.as_tensor(x[:7]))).numpy(), rtol=1e-6
        )
    assert all(p.grad is None for p in module.parameters())  # the model is not touched


def test_torch_preprocessing_is_differentiated_through(digits) -> None:
    x, y = digits
    module = _mlp(1)
    clf = TorchClassifier(module, input_shape=(64,), preprocess=lambda t: (t - 0.5) / 0.25)
    with torch.no_grad():
        expected = module((torch.as_tensor(x[:4]) - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(clf.predict_logits(x[:4]), expected, rtol=1e-6)
    plain = TorchClassifier(module, input_shape=(64,))
    np.testing.assert_allclose(  # chain rule: d/dx f((x - .5) / .25) = 4 f'(.)
        clf.loss_gradient(x[:4], y[:4]),
        4 * plain.loss_gradient((x[:4] - 0.5) / 0.25, y[:4]),
        rtol=1e-4,
        atol=1e-6,
    )


def test_model_without_a_linear_layer_says_how_to_name_features() -> None:
    conv_only = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten())
    clf = TorchClassifier(conv_only, input_shape=(1, 4, 4), n_classes=12)
    with pytest.raises(InputError, match="feature_layer="):
        clf.features(np.zeros((2, 1, 4, 4), np.float32))


def test_check_inputs_names_what_does_not_fit(digits) -> None:
    x, y = digits
    clf = as_classifier(LogisticRegression(max_iter=200).fit(x, y))
    check_inputs(clf, x, y)
    with pytest.raises(InputError, match=r"shape \(63,\) per row but the model expects \(64,\)"):
        check_inputs(clf, x[:, :63])
    with pytest.raises(InputError, match="10 inputs but 9 labels"):
        check_inputs(clf, x[:10], y[:9])
    with pytest.raises(InputError, match=r"class indices 0\.\.9; got values from 0 to 10"):
        check_inputs(clf, x[:3], np.array([0, 10, 2]))
    with pytest.raises(InputError, match="numeric"):
        check_inputs(clf, np.array([["a"] * 64]))


def test_require_white_box_proposes_the_black_box_attacks(digits) -> None:
    x, y = digits
    clf = as_classifier(LogisticRegression(max_iter=200).fit(x, y))
    with pytest.raises(UsageError, match=r"PGD needs gradients.*use square, hopskipjump"):
        require_white_box(clf, "PGD", "square, hopskipjump")
    torch_clf = as_classifier(_mlp(), input_shape=(64,))
    assert require_white_box(torch_clf, "PGD") is torch_clf
