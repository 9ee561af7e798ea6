"""Is this image model backdoored? Neural Cleanse-style trigger reverse engineering (Wang et al.
2019), through the `WhiteBoxClassifier` protocol only (no framework import).

For each class t, find the smallest mask m (H x W, in [0, 1]) and pattern p (C x H x W, in the
clip range) such that stamping x' = (1 - m) x + m p sends clean inputs to t: minimise
cross-entropy(f(x'), t) + lambda * |m|_1 with Adam, by the chain rule from the classifier's
input gradient. A backdoor target needs a far smaller mask than any natural class, so its L1
norm is an outlier below the others: anomaly index = (median - norm) / (1.4826 * MAD), and a
class with index above 2 is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.errors import UsageError
from bastion.models.classifier import Classifier, require_white_box

MAD_SCALE = 1.4826
ANOMALY_THRESHOLD = 2.0


@dataclass
class TriggerSearch:
    norms: np.ndarray  # L1 norm of the reverse-engineered mask per class
    success: np.ndarray  # share of the batch the mask+pattern sends to the class
    anomaly: np.ndarray  # anomaly index per class (positive = smaller than the median)

    @property
    def suspects(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.anomaly > ANOMALY_THRESHOLD)]

    def to_json(self) -> dict[str, Any]:
        return {
            "mask_l1": [round(float(v), 3) for v in self.norms],
            "attack_success": [round(float(v), 3) for v in self.success],
            "anomaly_index": [round(float(v), 3) for v in self.anomaly],
            "suspects": self.suspects,
        }


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


class _Adam:
    def __init__(self, rate: float) -> None:
        self.rate, self.t, self.moments = rate, 0, {}

    def step(self, name: str, value: np.ndarray, grad: np.ndarray) -> np.ndarray:
        first, second = self.moments.get(name, (np.zeros_like(value), np.zeros_like(value)))
        self.t += 1 if name == "mask" else 0
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad**2
        self.moments[name] = (first, second)
        corrected = first / (1 - 0.9**self.t), second / (1 - 0.999**self.t)
        return value - self.rate * corrected[0] / (np.sqrt(corrected[1]) + 1e-8)


def reverse_engineer(
    classifier: Classifier,
    x: np.ndarray,
    target: int,
    rng: np.random.Generator,
    *,
    steps: int = 300,
    batch: int = 128,
    rate: float = 0.1,
    success_goal: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The mask and pattern for one class, and the share of a fresh batch they flip. The L1
    weight adapts as in Neural Cleanse: up while the trigger works, down when it fails, so
    the mask shrinks to the smallest that still flips `success_goal` of the inputs."""
    model = require_white_box(classifier, "trigger reverse engineering")
    low, high = classifier.clip_values or (float(x.min()), float(x.max()))
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    mask_logits = np.full((height, width), -3.0)  # start small: about 5% per pixel
    pattern_logits = rng.normal(scale=0.1, size=(channels, height, width))
    optimiser = _Adam(rate)
    labels = np.full(batch, target, dtype=np.int64)
    weight = 1e-3
    for step in range(steps):
        inputs = x[rng.integers(0, len(x), batch)].astype(np.float32)
        mask, unit = _sigmoid(mask_logits), _sigmoid(pattern_logits)
        pattern = low + (high - low) * unit
        stamped = (1 - mask) * inputs + mask * pattern
        stamped = stamped.astype(np.float32)
        grad = model.loss_gradient(stamped, labels) / batch
        if step % 10 == 9:
            hits = (np.asarray(classifier.predict_proba(stamped)).argmax(axis=1) == target).mean()
            weight = weight * 1.5 if hits >= success_goal else weight / 1.5
        grad_mask = (grad * (pattern - inputs)).sum(axis=(0, 1)) + weight
        grad_pattern = (grad * mask).sum(axis=0) * (high - low)
        mask_logits = optimiser.step("mask", mask_logits, grad_mask * mask * (1 - mask))
        pattern_logits = optimiser.step("pattern", pattern_logits, grad_pattern * unit * (1 - unit))
    mask, pattern = _sigmoid(mask_logits), low + (high - low) * _sigmoid(pattern_logits)
    check = x[rng.integers(0, len(x), batch)]
    flipped = np.asarray(classifier.predict_proba((1 - mask) * check + mask * pattern))
    return mask, pattern, float((flipped.argmax(axis=1) == target).mean())


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    median = np.median(norms)
    mad = MAD_SCALE * np.median(np.abs(norms - median))
    return (median - norms) / (mad if mad > 0 else 1e-12)


def search_triggers(
    classifier: Classifier, x: np.ndarray, *, seed: int = 0, steps: int = 300
) -> TriggerSearch:
    """Reverse-engineer a trigger for every class of an image model (inputs (n, C, H, W))."""
    if x.ndim != 4:
        raise UsageError(
            f"trigger reverse engineering needs images of shape (n, C, H, W), got {x.shape}"
        )
    rng = np.random.default_rng(seed)
    norms, success = [], []
    for target in range(classifier.n_classes):
        mask, _, flipped = reverse_engineer(classifier, x, target, rng, steps=steps)
        norms.append(float(np.abs(mask).sum()))
        success.append(flipped)
    norms_array = np.asarray(norms)
    return TriggerSearch(norms_array, np.asarray(success), anomaly_index(norms_array))
