"""How much would poison hurt this model? Simulate label flipping (random and targeted) and
BadNets backdoors (Gu et al. 2017) at given poison rates, retrain, and measure clean accuracy
and attack success rate against the unpoisoned baseline.

Retraining uses the user's `train(x, y, seed) -> Classifier | estimator` function, or for a
scikit-learn estimator `clone(estimator).fit(x, y)`. Attack success rate (ASR): for label
flipping, the share of clean test rows of the attacked class (all classes, for random
flips) that the retrained model gets wrong; for a backdoor, the share of triggered test rows
from other classes that it predicts as the target class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.errors import InputError, UsageError
from bastion.models.classifier import Classifier, as_classifier, predict

Trainer = Callable[[np.ndarray, np.ndarray, int], Any]
ATTACKS = ("label-flip", "targeted-flip", "backdoor")


@dataclass(frozen=True)
class Poisoned:
    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray  # indices of the poisoned rows


def _count(n: int, rate: float) -> int:
    if not 0.0 <= rate < 1.0:
        raise UsageError(f"poison rate must be in [0, 1), got {rate}")
    return round(rate * n)


def flip_labels(
    x: np.ndarray,
    y: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    *,
    n_classes: int,
    source: int | None = None,
    target: int | None = None,
) -> Poisoned:
    """Relabel `rate` of all rows. Random: each to another class chosen at random. Targeted:
    rows of `source` become `target` (rate is still a share of the whole training set)."""
    y = np.asarray(y).copy()
    pool = np.arange(len(y)) if source is None else np.flatnonzero(y == source)
    count = min(_count(len(y), rate), len(pool))
    rows = np.sort(rng.choice(pool, size=count, replace=False))
    if target is None:
        shift = rng.integers(1, n_classes, size=count)
        y[rows] = (y[rows] + shift) % n_classes
    else:
        y[rows] = target
    return Poisoned(np.asarray(x), y, rows)


@dataclass(frozen=True)
class Trigger:
    """The BadNets trigger. Images (n, [C,] H, W): a `patch`-pixel square in the bottom-right
    corner set to `value`. Tabular (n, d): the `patch` features of lowest variance in the
    training data (rarely informative, so the model learns them only from the trigger) set to
    `value` (each such feature's maximum plus its range: out of the clean range)."""

    patch: int
    value: np.ndarray
    columns: np.ndarray | None = None  # tabular only

    @classmethod
    def fit(cls, x: np.ndarray, patch: int = 2, value: float | None = None) -> Trigger:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim >= 3:
            return cls(patch, np.asarray(x.max() if value is None else value))
        if x.ndim != 2:
            raise InputError(f"cannot place a trigger in data of shape {x.shape}")
        columns = np.argsort(x.var(axis=0), kind="stable")[:patch]
        top, span = x[:, columns].max(axis=0), np.ptp(x[:, columns], axis=0)
        fill = top + np.where(span > 0, span, 1.0) if value is None else np.full(patch, value)
        return cls(patch, fill, columns)

    def apply(self, x: np.ndarray) -> np.ndarray:
        triggered = np.array(x, dtype=np.result_type(x, np.float32), copy=True)
        if self.columns is None:
            triggered[..., -self.patch :, -self.patch :] = self.value
        else:
            triggered[:, self.columns] = self.value
        return triggered


def badnets(
    x: np.ndarray,
    y: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    *,
    target: int,
    trigger: Trigger,
) -> Poisoned:
    """Trigger `rate` of all rows, taken from classes other than `target`, and relabel them
    as `target`."""
    y = np.asarray(y).copy()
    pool = np.flatnonzero(y != target)
    count = min(_count(len(y), rate), len(pool))
    rows = np.sort(rng.choice(pool, size=count, replace=False))
    x = np.array(x, dtype=np.result_type(x, np.float32), copy=True)
    x[rows] = trigger.apply(x[rows])
    y[rows] = target
    return Poisoned(x, y, rows)


@dataclass
class PoisonPoint:
    attack: str
    rate: float
    poisoned_rows: int
    clean_accuracy: float
    accuracy_drop: float
    attack_success: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class PoisoningAssessment:
    baseline_accuracy: float
    baseline_attack_success: dict[str, float]
    points: list[PoisonPoint] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.points]


def sklearn_trainer(estimator: Any) -> Trainer:
    """clone-and-fit: the retraining a scikit-learn estimator allows without user code."""
    from sklearn.base import clone

    def train(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
        model = clone(estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=seed)
        return model.fit(x.reshape(len(x), -1), y)

    return train


def assess_poisoning(
    train: Trainer,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    attacks: Sequence[str] = ATTACKS,
    rates: Sequence[float] = (0.01, 0.05, 0.1, 0.2),
    target: int = 0,
    source: int | None = None,
    seed: int = 0,
    patch: int = 2,
    flat: bool = False,
) -> PoisoningAssessment:
    """Retrain on each poisoned copy and measure it on the clean test set. `flat`: the model
    takes rows flattened to (n, d), as scikit-learn does."""
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise UsageError(f"unknown attack(s) {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise InputError("data and labels have different numbers of rows")
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    if not 0 <= target < n_classes:
        raise UsageError(f"target class {target} is not one of 0..{n_classes - 1}")
    source = source if source is not None else (target + 1) % n_classes

    def fit(x: np.ndarray, y: np.ndarray) -> Classifier:
        model = train(x.reshape(len(x), -1) if flat else x, y, seed)
        return as_classifier(model)

    def view(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) if flat else x

    trigger = Trigger.fit(view(x_train) if x_train.ndim == 2 else x_train, patch)
    trigger_test = trigger.apply(x_test[y_test != target])
    baseline = fit(x_train, y_train)
    base_accuracy = _accuracy(baseline, view(x_test), y_test)
    base_success = {
        "label-flip": 1.0 - base_accuracy,
        "targeted-flip": _error_on(baseline, view(x_test), y_test, source),
        "backdoor": _hits(baseline, view(trigger_test), target),
    }
    result = PoisoningAssessment(base_accuracy, base_success)
    rng = np.random.default_rng(seed)
    for attack in attacks:
        for rate in rates:
            poisoned = _poison(
                attack, x_train, y_train, rate, rng, n_classes, source, target, trigger
            )
            model = fit(poisoned.x, poisoned.y)
            accuracy = _accuracy(model, view(x_test), y_test)
            success = {
                "label-flip": 1.0 - accuracy,
                "targeted-flip": _error_on(model, view(x_test), y_test, source),
                "backdoor": _hits(model, view(trigger_test), target),
            }[attack]
            result.points.append(
                PoisonPoint(
                    attack, rate, len(poisoned.rows), accuracy, base_accuracy - accuracy, success
                )
            )
    return result


def _poison(
    attack: str,
    x: np.ndarray,
    y: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    n_classes: int,
    source: int,
    target: int,
    trigger: Trigger,
) -> Poisoned:
    if attack == "label-flip":
        return flip_labels(x, y, rate, rng, n_classes=n_classes)
    if attack == "targeted-flip":
        return flip_labels(x, y, rate, rng, n_classes=n_classes, source=source, target=target)
    return badnets(x, y, rate, rng, target=target, trigger=trigger)


def _accuracy(model: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


def _error_on(model: Classifier, x: np.ndarray, y: np.ndarray, label: int) -> float:
    rows = y == label
    return float((predict(model, x[rows]) != label).mean()) if rows.any() else 0.0


def _hits(model: Classifier, x: np.ndarray, target: int) -> float:
    return float((predict(model, x) == target).mean()) if len(x) else 0.0
