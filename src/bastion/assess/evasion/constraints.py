"""Where an adversarial input may go: the norm ball around the clean input, the valid range
of each feature, and the features an attacker cannot change.

Projection here is exact: the result, read back in float64, lies inside the ball and inside
the box, because the float64 target is rounded toward the clean input when it is cast back to
the input's dtype (rounding to nearest could step one ulp outside).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bastion.errors import InputError, UsageError

NORMS = ("inf", "2")
# L2 balls are shrunk by this relative margin so that float64 rounding in the norm itself can
# never put a point a hair outside the ball; the loss of strength is immeasurable.
_L2_MARGIN = 1e-9


def parse_norm(norm: str | float | int) -> str:
    text = str(norm).strip().lower().removeprefix("l")
    if text in ("inf", "infinity", "linf", "np.inf"):
        return "inf"
    if text in ("2", "2.0"):
        return "2"
    raise UsageError(f"unknown norm {norm!r}; use 'inf' or '2'")


def check_eps(eps: float) -> float:
    value = float(eps)
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"epsilon must be a positive number, got {eps}")
    return value


@dataclass(frozen=True)
class Constraints:
    """Valid range per feature (`lower`, `upper`, broadcastable to one input) and which
    features may change (`mutable`, same shape as one input; None means all of them)."""

    lower: np.ndarray
    upper: np.ndarray
    mutable: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        input_shape: Sequence[int],
        clip_values: tuple[float, float] | None = None,
        *,
        feature_ranges: Mapping[int, tuple[float, float]] | None = None,
        immutable: Sequence[int] = (),
    ) -> Constraints:
        """Constraints for inputs of `input_shape`: a global clip range, per-feature ranges
        by flat feature index (override the global range) and immutable feature indices."""
        shape = tuple(input_shape)
        size = int(np.prod(shape))
        low, high = clip_values if clip_values is not None else (-np.inf, np.inf)
        if low >= high:
            raise InputError(f"clip range must have lower < upper, got {low}, {high}")
        lower = np.full(size, float(low))
        upper = np.full(size, float(high))
        for index, (lo, hi) in (feature_ranges or {}).items():
            _check_index(index, size, "range")
            if lo > hi:
                raise InputError(f"feature {index}: range lower {lo} is above upper {hi}")
            lower[index], upper[index] = float(lo), float(hi)
        mutable = None
        if len(immutable):
            mutable = np.ones(size, dtype=bool)
            for index in immutable:
                _check_index(index, size, "immutable")
                mutable[index] = False
            mutable = mutable.reshape(shape)
        return cls(lower.reshape(shape), upper.reshape(shape), mutable)

    def check_inside(self, x: np.ndarray) -> None:
        """Clean inputs must already be valid, else no perturbation can be (InputError)."""
        below = x < self.lower
        above = x > self.upper
        if below.any() or above.any():
            row = int(np.argwhere((below | above).reshape(len(x), -1).any(axis=1))[0, 0])
            raise InputError(
                f"input row {row} lies outside the valid range "
                f"[{float(self.lower.min())}, {float(self.upper.max())}]; "
                "give the model's real clip range (--clip) or per-feature ranges"
            )


def _check_index(index: int, size: int, what: str) -> None:
    if not 0 <= int(index) < size:
        raise InputError(f"{what} feature index {index} is outside 0..{size - 1}")


def random_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def project(
    x: np.ndarray, x_adv: np.ndarray, eps: float, norm: str, constraints: Constraints
) -> np.ndarray:
    """`x_adv` moved into the eps-ball around `x` and into the valid box, in `x`'s dtype.

    The clean `x` must lie inside the box: clipping then only moves a coordinate toward `x`,
    so the ball still holds after it.
    """
    clean = x.astype(np.float64)
    delta = x_adv.astype(np.float64) - clean
    if constraints.mutable is not None:
        delta = np.where(constraints.mutable, delta, 0.0)
    if norm == "inf":
        delta = np.clip(delta, -eps, eps)
    else:
        flat = delta.reshape(len(delta), -1)
        lengths = np.linalg.norm(flat, axis=1)
        scale = np.minimum(1.0, eps * (1 - _L2_MARGIN) / np.maximum(lengths, 1e-300))
        delta = (flat * scale[:, None]).reshape(delta.shape)
    target = np.clip(clean + delta, constraints.lower, constraints.upper)
    return _round_toward(target, clean, x.dtype)


def _round_toward(target: np.ndarray, origin: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast `target` to `dtype`, stepping one ulp toward `origin` wherever rounding moved a
    coordinate further from `origin` than `target` is."""
    if dtype == np.float64:
        return target
    cast = target.astype(dtype)
    overshoot = np.abs(cast.astype(np.float64) - origin) > np.abs(target - origin)
    if overshoot.any():
        toward = origin.astype(dtype)
        cast = np.where(overshoot, np.nextafter(cast, toward), cast)
    return cast


def perturbation_norms(x: np.ndarray, x_adv: np.ndarray, norm: str) -> np.ndarray:
    """Per-row size of the perturbation, in float64."""
    delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return np.abs(delta).max(axis=1) if norm == "inf" else np.linalg.norm(delta, axis=1)
