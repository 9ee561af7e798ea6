"""Black-box attacks on any `Classifier`, in numpy: Square Attack (scores) and HopSkipJump
(decisions only). Both count the rows they send to the model, per point.

Square Attack: Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search". HopSkipJump: Chen, Jordan and Wainwright 2020,
"HopSkipJumpAttack: a query-efficient decision-based attack".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bastion.assess.evasion.constraints import Constraints, project

Proba = Callable[[np.ndarray], np.ndarray]

# Square Attack halves its window fraction p at these iterations of a 10,000-query run; a
# shorter run hits them proportionally earlier.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def margins(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y) - max over other classes of log p(k): negative means misclassified. Equal to
    the logit margin for a softmax model, so scores are all the attack needs."""
    logp = np.log(np.clip(proba, 1e-30, None))
    true = logp[np.arange(len(y)), y]
    logp[np.arange(len(y)), y] = -np.inf
    return true - logp.max(axis=1)


def _as_images(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Channels, height, width of one input: (C, H, W) stays, (H, W) gets one channel and a
    flat feature vector is a 1 x d strip, where a "square" is a run of adjacent features."""
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return 1, 1, int(np.prod(shape))


def _window(p: float, height: int, width: int) -> tuple[int, int]:
    """Side lengths of a window covering a fraction p of the features."""
    if height == 1:
        return 1, int(min(width, max(1, round(p * width))))
    side = int(min(height, width, max(1, round(math.sqrt(p * height * width)))))
    return side, side


def _fraction(p_init: float, iteration: int, budget: int) -> float:
    scaled = int(iteration / max(budget, 1) * 10000)
    return p_init / 2 ** sum(scaled > h for h in _P_HALVINGS)


def _centre_pattern(height: int, width: int) -> np.ndarray:
    """A window pattern that peaks at its centre and falls off in rings (the L2 update's
    shape): ring r from the centre gets sum over k >= r of 1/(k+1)^2."""
    rows = np.abs(np.arange(height) - (height - 1) / 2)
    cols = np.abs(np.arange(width) - (width - 1) / 2)
    ring = np.maximum.outer(rows, cols).round().astype(int)
    tail = np.cumsum(1.0 / (np.arange(ring.max() + 1)[::-1] + 1) ** 2)[::-1]
    pattern = tail[ring]
    return pattern / np.linalg.norm(pattern)


def square_attack(
    proba: Proba,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    constraints: Constraints,
    max_queries: int,
    rng: np.random.Generator,
    p_init: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random search over square windows; returns (x_adv, queries per point)."""
    n = len(x)
    channels, height, width = _as_images(x.shape[1:])
    p_init = p_init if p_init is not None else (0.05 if norm == "inf" else 0.1)
    as_img = (n, channels, height, width)
    clean = x.astype(np.float64).reshape(as_img)
    start = _square_init(rng, as_img, eps, norm, p_init)
    best = project(x, (clean + start).reshape(x.shape), eps, norm, constraints)
    margin = margins(proba(best), y)
    queries = np.ones(n, dtype=np.int64)
    for iteration in range(1, max_queries):
        active = np.flatnonzero(margin > 0)
        if len(active) == 0:
            break
        p = _fraction(p_init, iteration, max_queries)
        delta = (best[active].astype(np.float64).reshape(len(active), *as_img[1:])
                 - clean[active])
        step = (_square_step_inf if norm == "inf" else _square_step_l2)(
            rng, delta, eps, p, height, width
        )
        candidate = project(
            x[active], (clean[active] + step).reshape((len(active), *x.shape[1:])), eps, norm,
            constraints,
        )
        new_margin = margins(proba(candidate), y[active])
        queries[active] += 1
        better = new_margin < margin[active]
        best[active[better]] = candidate[better]
        margin[active[better]] = new_margin[better]
    return best, queries


def _square_init(
    rng: np.random.Generator, shape: tuple[int, int, int, int], eps: float, norm: str,
    p_init: float,
) -> np.ndarray:
    n, channels, height, width = shape
    if norm == "inf":
        # vertical stripes: one random sign per column and channel
        signs = rng.choice([-1.0, 1.0], size=(n, channels, 1, width))
        return np.broadcast_to(eps * signs, shape).copy()
    # tiles of the centre pattern with random signs, scaled to the sphere
    side_h, side_w = _window(p_init, height, width)
    delta = np.zeros(shape)
    pattern = _centre_pattern(side_h, side_w)
    for top in range(0, height, side_h):
        for left in range(0, width, side_w):
            block = pattern[: height - top, : width - left]
            signs = rng.choice([-1.0, 1.0], size=(n, channels, 1, 1))
            delta[:, :, top : top + side_h, left : left + side_w] = signs * block
    lengths = np.linalg.norm(delta.reshape(n, -1), axis=1)
    return delta * (eps / np.maximum(lengths, 1e-12))[:, None, None, None]


def _place(rng: np.random.Generator, height: int, width: int, side_h: int, side_w: int):
    top = int(rng.integers(0, height - side_h + 1))
    left = int(rng.integers(0, width - side_w + 1))
    return slice(top, top + side_h), slice(left, left + side_w)


def _square_step_inf(
    rng: np.random.Generator, delta: np.ndarray, eps: float, p: float, height: int, width: int
) -> np.ndarray:
    """One window (same place for the batch) set to +-eps, one sign per point and channel."""
    n, channels = delta.shape[:2]
    side_h, side_w = _window(p, height, width)
    rows, cols = _place(rng, height, width, side_h, side_w)
    step = delta.copy()
    step[:, :, rows, cols] = eps * rng.choice([-1.0, 1.0], size=(n, channels, 1, 1))
    return step


def _square_step_l2(
    rng: np.random.Generator, delta: np.ndarray, eps: float, p: float, height: int, width: int
) -> np.ndarray:
    """Move the perturbation mass of a second window into the first: the second is zeroed,
    the first gets its old content plus a signed centre pattern, rescaled so that the total
    norm uses the whole eps budget."""
    n, channels = delta.shape[:2]
    side_h, side_w = _window(p, height, width)
    first = _place(rng, height, width, side_h, side_w)
    second = _place(rng, height, width, side_h, side_w)
    step = delta.copy()
    step[:, :, second[0], second[1]] = 0.0
    step[:, :, first[0], first[1]] = 0.0
    rest = np.linalg.norm(step.reshape(n, -1), axis=1)
    budget = np.sqrt(np.maximum(eps**2 - rest**2, 0.0))
    old = delta[:, :, first[0], first[1]]
    signs = rng.choice([-1.0, 1.0], size=(n, channels, 1, 1))
    scale = (budget / math.sqrt(channels))[:, None, None, None]
    update = old + signs * _centre_pattern(side_h, side_w) * scale
    length = np.linalg.norm(update.reshape(n, -1), axis=1)
    step[:, :, first[0], first[1]] = update * (budget / np.maximum(length, 1e-12))[
        :, None, None, None
    ]
    return step


class _Oracle:
    """Decisions for one point (is this input misclassified?), counting every row asked."""

    def __init__(self, proba: Proba, label: int, budget: int) -> None:
        self.proba, self.label, self.budget, self.used = proba, label, budget, 0

    @property
    def left(self) -> int:
        return self.budget - self.used

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.used += len(rows)
        return self.proba(rows).argmax(axis=1) != self.label


def hop_skip_jump(
    proba: Proba,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    constraints: Constraints,
    max_queries: int,
    rng: np.random.Generator,
    initial_evals: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Decision-based boundary walk, point by point; stops a point as soon as its boundary
    point lies within eps. Returns (x_adv before the eps projection, queries per point)."""
    out = x.astype(np.float64)
    queries = np.zeros(len(x), dtype=np.int64)
    for i in range(len(x)):
        oracle = _Oracle(proba, int(y[i]), max_queries)
        found = _hsj_point(oracle, x[i].astype(np.float64), eps, norm, constraints, rng,
                           initial_evals)
        if found is not None:
            out[i] = found
        queries[i] = oracle.used
    return out.astype(x.dtype), queries


def _distance(a: np.ndarray, b: np.ndarray, norm: str) -> float:
    diff = (a - b).ravel()
    return float(np.abs(diff).max() if norm == "inf" else np.linalg.norm(diff))


def _hsj_point(
    oracle: _Oracle, x0: np.ndarray, eps: float, norm: str, constraints: Constraints,
    rng: np.random.Generator, initial_evals: int,
) -> np.ndarray | None:
    dim = x0.size
    theta = dim ** -1.5 if norm == "2" else dim ** -2.0
    start = _hsj_start(oracle, x0, constraints, rng)
    if start is None:
        return None
    boundary = _binary_search(oracle, x0, start, norm, theta)
    distance = _distance(boundary, x0, norm)
    iteration = 1
    while distance > eps and oracle.left > 0:
        evals = min(int(initial_evals * math.sqrt(iteration)), oracle.left)
        if evals < 2:
            break
        delta = (math.sqrt(dim) if norm == "2" else dim) * theta * distance
        gradient = _estimate_gradient(oracle, boundary, evals, delta, norm, constraints, rng)
        direction = gradient if norm == "2" else np.sign(gradient)
        step = distance / math.sqrt(iteration)
        moved = None
        while oracle.left > 0 and step > 1e-12:
            trial = np.clip(boundary + step * direction, constraints.lower, constraints.upper)
            if oracle(trial[None])[0]:
                moved = trial
                break
            step /= 2
        if moved is None:
            break
        boundary = _binary_search(oracle, x0, moved, norm, theta)
        distance = _distance(boundary, x0, norm)
        iteration += 1
    return boundary


def _hsj_start(
    oracle: _Oracle, x0: np.ndarray, constraints: Constraints, rng: np.random.Generator
) -> np.ndarray | None:
    """A misclassified point: uniform noise over the valid box (or around x0 if unbounded)."""
    lower = np.broadcast_to(constraints.lower, x0.shape)
    upper = np.broadcast_to(constraints.upper, x0.shape)
    spread = max(1.0, float(np.abs(x0).max()))
    low = np.where(np.isfinite(lower), lower, x0 - spread)
    high = np.where(np.isfinite(upper), upper, x0 + spread)
    if constraints.mutable is not None:
        low = np.where(constraints.mutable, low, x0)
        high = np.where(constraints.mutable, high, x0)
    for _ in range(10):
        if oracle.left < 10:
            return None
        trials = rng.uniform(low, high, size=(10, *x0.shape))
        hits = np.flatnonzero(oracle(trials))
        if len(hits):
            return trials[hits[0]]
    return None


def _blend(x0: np.ndarray, far: np.ndarray, alpha: float, norm: str) -> np.ndarray:
    if norm == "2":
        return (1 - alpha) * x0 + alpha * far
    radius = alpha * float(np.abs(far - x0).max())
    return np.clip(far, x0 - radius, x0 + radius)


def _binary_search(
    oracle: _Oracle, x0: np.ndarray, adversarial: np.ndarray, norm: str, theta: float
) -> np.ndarray:
    """The point on the way from x0 to `adversarial` that is just still misclassified."""
    low, high = 0.0, 1.0
    while high - low > theta and oracle.left > 0:
        middle = (low + high) / 2
        if oracle(_blend(x0, adversarial, middle, norm)[None])[0]:
            high = middle
        else:
            low = middle
    return _blend(x0, adversarial, high, norm)


def _estimate_gradient(
    oracle: _Oracle, boundary: np.ndarray, evals: int, delta: float, norm: str,
    constraints: Constraints, rng: np.random.Generator,
) -> np.ndarray:
    """Monte-Carlo estimate of the boundary's normal from decisions at random probes, with the
    mean decision as baseline to reduce variance."""
    shape = (evals, *boundary.shape)
    noise = rng.standard_normal(shape) if norm == "2" else rng.uniform(-1, 1, size=shape)
    if constraints.mutable is not None:
        noise = noise * constraints.mutable
    flat = noise.reshape(evals, -1)
    noise = (flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)).reshape(shape)
    probes = np.clip(boundary + delta * noise, constraints.lower, constraints.upper)
    used = (probes - boundary) / delta
    signs = np.where(oracle(probes), 1.0, -1.0)
    mean = signs.mean()
    weights = signs if abs(mean) == 1.0 else signs - mean
    gradient = np.tensordot(weights, used, axes=1) / evals
    return gradient / max(float(np.linalg.norm(gradient)), 1e-12)
