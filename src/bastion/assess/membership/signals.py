"""What the attacks read from a model's probabilities for a record's true label."""

from __future__ import annotations

import numpy as np

# Smallest probability used in logarithms: float64 can represent the tiny probabilities an
# overfit model gives the other classes, so only exact zeros need a floor.
_FLOOR = 1e-300


def true_class_probability(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p(y | x) along the last two axes; works for (n, k) and (models, n, k)."""
    return np.take_along_axis(probs, _label_index(probs, y), axis=-1)[..., 0]


def log_likelihood(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y | x), the negative cross-entropy loss."""
    return np.log(np.maximum(true_class_probability(probs, y), _FLOOR))


def logit_confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p_y - log(sum of the other classes' p): LiRA's scaled confidence.

    The other classes are summed directly rather than taken as 1 - p_y, which would round to
    zero for the confident predictions that matter most.
    """
    p_y = true_class_probability(probs, y)
    others = _sum_of_others(probs, y)
    return np.log(np.maximum(p_y, _FLOOR)) - np.log(np.maximum(others, _FLOOR))


def _sum_of_others(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    mask = np.ones_like(probs, dtype=bool)
    np.put_along_axis(mask, _label_index(probs, y), False, axis=-1)
    return np.where(mask, probs, 0.0).sum(axis=-1)


def _label_index(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    index = np.asarray(y, dtype=np.int64).reshape(-1, 1)
    return np.broadcast_to(index, (*probs.shape[:-1], 1))
