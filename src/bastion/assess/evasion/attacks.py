"""The evasion attacks, one function each, on a `Classifier` and numpy arrays.

White-box attacks (FGSM, PGD, APGD-CE, APGD-T, FAB-T) need a torch-backed classifier and run on its
device through `bastion.models.torch_attacks`; this module never imports torch itself.
Black-box attacks (Square, HopSkipJump) only call `predict_proba` and work on any model.
Every result is projected exactly into the eps-ball and the valid box, and `success` is read
from the model's prediction on exactly the returned inputs: the attack's own forward pass
where it classified those very inputs, else a fresh prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.assess.evasion import blackbox
from bastion.assess.evasion.constraints import (
    Constraints,
    check_eps,
    parse_norm,
    project,
    random_generator,
)
from bastion.errors import UsageError
from bastion.models.classifier import Classifier, check_inputs, predict

BLACK_BOX_HINT = "a black-box attack: --attacks square or --attacks hopskipjump"


@dataclass(frozen=True)
class AttackResult:
    name: str
    x_adv: np.ndarray
    success: np.ndarray  # per point: misclassified on x_adv
    queries: np.ndarray | None  # per point: rows sent to the model (black-box attacks)
    seconds: float


@dataclass(frozen=True)
class _Setup:
    x: np.ndarray
    y: np.ndarray
    eps: float
    norm: str
    constraints: Constraints


def _setup(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, eps: float, norm: str,
    constraints: Constraints | None,
) -> _Setup:
    x = np.asarray(x)
    y = np.asarray(y)
    check_inputs(classifier, x, y)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if constraints is None:
        constraints = Constraints.build(x.shape[1:], classifier.clip_values)
    constraints.check_inside(x)
    return _Setup(x, y.astype(np.int64), check_eps(eps), parse_norm(norm), constraints)


def _finish(
    name: str, classifier: Classifier, setup: _Setup, raw: np.ndarray,
    queries: np.ndarray | None, started: float, verdicts: Any = None,
) -> AttackResult:
    """The exact projection of `raw`, and per point whether the model misclassifies it.
    `verdicts` (`torch_attacks.Verdicts`): points the attack already saw classified, fooled
    or not, on exactly their `raw` input; those the projection leaves unchanged are not
    predicted again."""
    x_adv = project(setup.x, raw, setup.eps, setup.norm, setup.constraints)
    success = np.zeros(len(x_adv), dtype=bool)
    ask = np.ones(len(x_adv), dtype=bool)
    if verdicts is not None:
        known = verdicts.seen & (x_adv == raw).reshape(len(x_adv), -1).all(axis=1)
        success[known] = verdicts.fooled[known]
        ask = ~known
    if ask.any():
        success[ask] = predict(classifier, x_adv[ask]) != setup.y[ask]
    return AttackResult(name, x_adv, success, queries, time.perf_counter() - started)


def torch_backed(classifier: Classifier) -> bool:
    """True for classifiers whose gradient attacks can run on the torch backend."""
    return hasattr(classifier, "logits") and hasattr(classifier, "module")


def _gradient_backend(name: str, classifier: Classifier) -> Any:
    """The torch attack backend, for a classifier that gives gradients; else a usage error
    that proposes the black-box attacks."""
    if not torch_backed(classifier):
        raise UsageError(
            f"{name} needs gradients, which a {type(classifier).__name__} lacks; use "
            f"{BLACK_BOX_HINT}"
        )
    from bastion.models import torch_attacks

    return torch_attacks


def _white_box(
    name: str, classifier: Classifier, x: np.ndarray, y: np.ndarray, eps: float, norm: str,
    constraints: Constraints | None, seed: int, **options: Any,
) -> AttackResult:
    torch_attacks = _gradient_backend(name, classifier)

    started = time.perf_counter()
    setup = _setup(classifier, x, y, eps, norm, constraints)
    bounds = torch_attacks.Bounds(
        setup.constraints.lower, setup.constraints.upper, setup.constraints.mutable
    )
    with torch_attacks.prepared(classifier, setup.x.ndim):
        raw, verdicts = torch_attacks.run(
            classifier, setup.x, setup.y, eps=setup.eps, norm=setup.norm, bounds=bounds,
            seed=seed, **options,
        )
        return _finish(name, classifier, setup, raw, None, started, verdicts)


def fgsm(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps."""
    return _white_box("fgsm", classifier, x, y, eps, norm, constraints, seed, attack="fgsm")


def pgd(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    steps: int = 40, step_size: float | None = None, restarts: int = 1,
    random_start: bool = True, constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018) on the cross-entropy; step size
    2.5 * eps / steps unless given; restarts only on the points not yet fooled."""
    return _white_box(
        "pgd", classifier, x, y, eps, norm, constraints, seed, attack="pgd", steps=steps,
        step_size=step_size, restarts=restarts, random_start=random_start,
    )


def apgd_ce(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    steps: int = 100, restarts: int = 1, constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Auto-PGD on the cross-entropy (Croce & Hein 2020)."""
    return _white_box(
        "apgd-ce", classifier, x, y, eps, norm, constraints, seed, attack="apgd",
        steps=steps, restarts=restarts, loss="ce",
    )


def apgd_dlr(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    steps: int = 100, restarts: int = 1, constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Auto-PGD on the untargeted DLR loss, which is invariant to shifting and scaling the
    logits (so a model cannot hide behind saturated softmax outputs)."""
    return _white_box(
        "apgd-dlr", classifier, x, y, eps, norm, constraints, seed, attack="apgd",
        steps=steps, restarts=restarts, loss="dlr",
    )


def apgd_targeted(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    steps: int = 100, n_targets: int = 3, constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Auto-PGD on the targeted DLR loss, once per target class: the `n_targets` classes the
    model ranks highest after the true one, each run only on the points still robust."""
    return _per_target(
        "apgd-t", classifier, x, y, eps, norm, constraints, seed, n_targets, attack="apgd",
        steps=steps, loss="dlr-targeted",
    )


def fab_targeted(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    steps: int = 100, n_targets: int = 9, restarts: int = 1,
    constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Targeted Fast Adaptive Boundary attack (FAB-T, Croce & Hein 2020), as AutoAttack runs
    it: for each of the `n_targets` classes the model ranks highest after the true one, FAB
    walks to the linearised boundary between the true and the target class, projecting the
    current and the clean point onto it within the valid box, biased toward the clean point
    and stepping back whenever it crosses. Needs no step size. Only the points still robust
    go on to the next target; restarts after the first start at random in half the ball."""
    return _per_target(
        "fab-t", classifier, x, y, eps, norm, constraints, seed, n_targets, attack="fab",
        steps=steps, restarts=restarts,
    )


def _per_target(
    name: str, classifier: Classifier, x: np.ndarray, y: np.ndarray, eps: float, norm: str,
    constraints: Constraints | None, seed: int, n_targets: int, **options: Any,
) -> AttackResult:
    """Run a targeted white-box attack once per target class, best-ranked first, each time
    on the points no earlier target has fooled."""
    torch_attacks = _gradient_backend(name, classifier)

    started = time.perf_counter()
    setup = _setup(classifier, x, y, eps, norm, constraints)
    x_adv = setup.x.copy()
    robust = np.ones(len(setup.x), dtype=bool)
    attacked = np.zeros(len(setup.x), dtype=bool)  # x_adv is a result whose success was read
    with torch_attacks.prepared(classifier, setup.x.ndim):
        ranking = np.argsort(-classifier.predict_proba(setup.x), axis=1, kind="stable")
        for rank in range(min(n_targets, classifier.n_classes - 1)):
            todo = np.flatnonzero(robust)
            if len(todo) == 0:
                break
            targets = _rank_targets(ranking[todo], setup.y[todo], rank)
            result = _white_box(
                name, classifier, setup.x[todo], setup.y[todo], setup.eps, setup.norm,
                setup.constraints, seed + rank, targets=targets, **options,
            )
            x_adv[todo] = result.x_adv
            robust[todo[result.success]] = False
            attacked[todo] = True
        return _finish(name, classifier, setup, x_adv, None, started,
                       torch_attacks.Verdicts(attacked, ~robust))


def _rank_targets(ranking: np.ndarray, y: np.ndarray, rank: int) -> np.ndarray:
    """The class at position `rank` among the classes other than the true one."""
    others = np.array([row[row != label] for row, label in zip(ranking, y, strict=True)])
    return others[:, rank]


def square(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    max_queries: int = 1000, p_init: float | None = None,
    constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """Square Attack: score-based random search, at most `max_queries` queries per point."""
    started = time.perf_counter()
    setup = _setup(classifier, x, y, eps, norm, constraints)
    raw, queries = blackbox.square_attack(
        classifier.predict_proba, setup.x, setup.y, eps=setup.eps, norm=setup.norm,
        constraints=setup.constraints, max_queries=max_queries, rng=random_generator(seed),
        p_init=p_init,
    )
    return _finish("square", classifier, setup, raw, queries, started)


def hop_skip_jump(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "2",
    max_queries: int = 1000, constraints: Constraints | None = None, seed: int = 0,
) -> AttackResult:
    """HopSkipJump: decision-based, at most `max_queries` queries per point."""
    started = time.perf_counter()
    setup = _setup(classifier, x, y, eps, norm, constraints)
    raw, queries = blackbox.hop_skip_jump(
        classifier.predict_proba, setup.x, setup.y, eps=setup.eps, norm=setup.norm,
        constraints=setup.constraints, max_queries=max_queries, rng=random_generator(seed),
    )
    return _finish("hopskipjump", classifier, setup, raw, queries, started)


Attack = Callable[..., AttackResult]
# name -> (function, needs gradients)
ATTACKS: dict[str, tuple[Attack, bool]] = {
    "fgsm": (fgsm, True),
    "pgd": (pgd, True),
    "apgd-ce": (apgd_ce, True),
    "apgd-dlr": (apgd_dlr, True),
    "apgd-t": (apgd_targeted, True),
    "fab-t": (fab_targeted, True),
    "square": (square, False),
    "hopskipjump": (hop_skip_jump, False),
}
