"""The `Classifier` protocol every assessment speaks, and adapters for scikit-learn and torch.

Labels are always class indices 0..n_classes-1 (the columns of `predict_proba`); an adapter
maps them to and from the model's own labels. Adapters batch internally, so a caller can
hand them a whole dataset.

Only this package and `bastion.training` import torch: the torch adapter is built lazily,
so scikit-learn users never pay for importing it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from bastion.errors import InputError, UsageError

ClipValues = tuple[float, float]


@runtime_checkable
class Classifier(Protocol):
    """A model that returns class probabilities: all a black-box assessment needs."""

    n_classes: int
    input_shape: tuple[int, ...] | None
    clip_values: ClipValues | None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n, n_classes) for inputs of shape (n, *input_shape)."""
        ...


@runtime_checkable
class WhiteBoxClassifier(Classifier, Protocol):
    """A differentiable model: what gradient attacks and feature-space detectors need."""

    def loss_gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradient of the cross-entropy loss with respect to the inputs, shaped like x."""
        ...

    def features(self, x: np.ndarray) -> np.ndarray:
        """Penultimate activations, shape (n, d)."""
        ...


def predict(classifier: Classifier, x: np.ndarray) -> np.ndarray:
    """Predicted class indices."""
    return np.asarray(classifier.predict_proba(x)).argmax(axis=1)


def accuracy(classifier: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(classifier, x) == np.asarray(y)).mean()) if len(x) else 0.0


def check_inputs(classifier: Classifier, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """One clear line when data does not fit the model: wrong shape, labels out of range."""
    if x.ndim < 2:
        raise InputError(f"inputs must be a batch of shape (n, ...), got shape {x.shape}")
    expected = classifier.input_shape
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise InputError(
            f"inputs have shape {tuple(x.shape[1:])} per row but the model expects {expected}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"inputs must be numeric, got dtype {x.dtype}")
    if y is None:
        return
    if len(y) != len(x):
        raise InputError(f"{len(x)} inputs but {len(y)} labels")
    if len(y) and (
        not np.issubdtype(np.asarray(y).dtype, np.integer)
        or y.min() < 0
        or y.max() >= classifier.n_classes
    ):
        raise InputError(
            f"labels must be class indices 0..{classifier.n_classes - 1}; "
            f"got values from {y.min()} to {y.max()} ({np.asarray(y).dtype})"
        )


def _batches(n: int, size: int) -> range:
    return range(0, n, max(1, size))


class SklearnClassifier:
    """A scikit-learn estimator with `predict_proba`: black-box (no gradients)."""

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: tuple[int, ...] | None = None,
        clip_values: ClipValues | None = None,
        batch_size: int = 4096,
    ) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise InputError(
                f"{type(estimator).__name__} has no predict_proba; Bastion needs class "
                "probabilities (for SVC, fit with probability=True)"
            )
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise InputError(f"{type(estimator).__name__} is not fitted (no classes_)")
        self.estimator = estimator
        self.classes = np.asarray(classes)
        self.n_classes = len(self.classes)
        n_features = getattr(estimator, "n_features_in_", None)
        self.input_shape = input_shape or ((int(n_features),) if n_features else None)
        self.clip_values = clip_values
        self.batch_size = batch_size

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        parts = [
            self.estimator.predict_proba(x[i : i + self.batch_size])
            for i in _batches(len(x), self.batch_size)
        ]
        if not parts:
            return np.zeros((0, self.n_classes))
        return np.concatenate(parts).astype(np.float64, copy=False)

    def to_indices(self, labels: np.ndarray) -> np.ndarray:
        """The estimator's own labels -> class indices (InputError for an unknown label)."""
        lookup = {label: i for i, label in enumerate(self.classes.tolist())}
        try:
            return np.array([lookup[v] for v in np.asarray(labels).tolist()], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"label {exc.args[0]!r} is not one of the model's classes") from None


def as_classifier(model: Any, **options: Any) -> Classifier:
    """Wrap a fitted scikit-learn estimator or a torch `nn.Module`; pass adapters through."""
    if isinstance(model, Classifier):
        return model
    if _is_torch_module(model):
        from bastion.models.torch_classifier import TorchClassifier

        return TorchClassifier(model, **options)
    if hasattr(model, "predict_proba") or hasattr(model, "predict"):
        return SklearnClassifier(model, **options)  # it says what is missing, if anything
    raise UsageError(
        f"cannot use a {type(model).__name__} as a classifier: give a fitted scikit-learn "
        "estimator with predict_proba, a torch nn.Module, or a bastion Classifier"
    )


def require_white_box(classifier: Classifier, what: str, instead: str = "") -> WhiteBoxClassifier:
    """The classifier, if it has gradients; otherwise a UsageError proposing `instead`."""
    if isinstance(classifier, WhiteBoxClassifier):
        return classifier
    hint = f"; use {instead} instead" if instead else ""
    raise UsageError(f"{what} needs gradients, which a {type(classifier).__name__} lacks{hint}")


def _is_torch_module(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a module can only exist if torch is already imported
    return torch is not None and isinstance(model, torch.nn.Module)
