"""`evaluate_robustness`: run attacks in sequence on the points still classified correctly
(as AutoAttack does), report robust accuracy per epsilon, and check the result for gradient
masking before anyone trusts it.

The sanity checks follow Athalye et al. 2018 and Carlini et al. 2019: robust accuracy must
not rise with epsilon, must reach about zero when epsilon covers the whole valid range, and
a black-box attack must not fool points the gradient attacks could not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.assess.evasion import rules
from bastion.assess.evasion.attacks import ATTACKS, BLACK_BOX_HINT, torch_backed
from bastion.assess.evasion.constraints import Constraints, check_eps, parse_norm
from bastion.errors import UsageError
from bastion.findings import Finding, Location, Severity
from bastion.models.classifier import Classifier, check_inputs, predict

Progress = Callable[[str], None]  # called once per finished stage with its label

WHITE_BOX_AUTO = ("apgd-ce", "apgd-t", "fab-t", "square")
BLACK_BOX_AUTO = ("square",)


@dataclass(frozen=True)
class EvasionPolicy:
    """Thresholds that turn measurements into severities."""

    declared_eps: float | None = None  # the epsilon the model must withstand (default: smallest)
    high_below: float = 0.5  # robust accuracy at the declared epsilon below this: high
    medium_below: float = 0.8  # below this: medium; otherwise low
    unbounded_max_accuracy: float = 0.05  # robust accuracy allowed at an all-covering epsilon
    monotone_tolerance: float = 0.01  # rise in robust accuracy tolerated as noise
    black_box_tolerance: float = 0.02  # share of points only a black-box attack may fool

    def severity_for(self, robust_accuracy: float) -> Severity:
        if robust_accuracy < self.high_below:
            return Severity.HIGH
        if robust_accuracy < self.medium_below:
            return Severity.MEDIUM
        return Severity.LOW


@dataclass(frozen=True)
class StageResult:
    attack: str
    robust_accuracy: float  # after this attack (and the ones before it)
    fooled: int  # points this attack fooled that earlier ones had not
    seconds: float
    queries: int | None  # rows sent to the model, for black-box attacks


@dataclass(frozen=True)
class EpsResult:
    eps: float
    robust_accuracy: float
    stages: tuple[StageResult, ...]
    black_box_only: int  # points fooled only by black-box attacks after all white-box ones


@dataclass
class RobustnessResult:
    norm: str
    n_points: int
    clean_accuracy: float
    curve: list[EpsResult]
    unbounded_eps: float | None
    unbounded_accuracy: float | None
    attacks: tuple[str, ...]
    seed: int
    seconds: float
    findings: list[Finding] = field(default_factory=list)

    def robust_accuracy(self, eps: float) -> float:
        return next(p.robust_accuracy for p in self.curve if p.eps == eps)

    def metrics(self) -> dict[str, Any]:
        """JSON-safe numbers for reports."""
        return {
            "norm": self.norm,
            "points": self.n_points,
            "clean_accuracy": round(self.clean_accuracy, 6),
            "attacks": list(self.attacks),
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "robust_accuracy": {str(p.eps): round(p.robust_accuracy, 6) for p in self.curve},
            "curve": [
                {
                    "eps": p.eps,
                    "robust_accuracy": round(p.robust_accuracy, 6),
                    "black_box_only": p.black_box_only,
                    "stages": [
                        {
                            "attack": s.attack,
                            "robust_accuracy": round(s.robust_accuracy, 6),
                            "fooled": s.fooled,
                            "seconds": round(s.seconds, 3),
                            "queries": s.queries,
                        }
                        for s in p.stages
                    ],
                }
                for p in self.curve
            ],
            "unbounded_check": {
                "eps": self.unbounded_eps,
                "robust_accuracy": self.unbounded_accuracy,
            },
        }


def resolve_attacks(classifier: Classifier, attacks: str | Sequence[str]) -> tuple[str, ...]:
    """`auto` or a list of names -> validated names; white-box ones need a torch model."""
    white_box = torch_backed(classifier)
    if isinstance(attacks, str):
        if attacks.strip() == "auto":
            return WHITE_BOX_AUTO if white_box else BLACK_BOX_AUTO
        attacks = [a for a in attacks.split(",") if a.strip()]
    names = tuple(a.strip().lower() for a in attacks)
    if not names:
        raise UsageError("no attacks given; use --attacks auto or names such as pgd,square")
    for name in names:
        if name not in ATTACKS:
            raise UsageError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)}, auto)")
        if ATTACKS[name][1] and not white_box:
            raise UsageError(
                f"{name} needs gradients, which a {type(classifier).__name__} lacks; use "
                f"{BLACK_BOX_HINT}"
            )
    return names


def _options(name: str, steps: int, budget: int) -> dict[str, Any]:
    if name in ("square", "hopskipjump"):
        return {"max_queries": budget}
    if name == "fgsm":
        return {}
    return {"steps": steps}


def evaluate_robustness(
    classifier: Classifier,
    x: np.ndarray,
    y: np.ndarray,
    eps_list: Sequence[float],
    norm: str = "inf",
    attacks: str | Sequence[str] = "auto",
    seed: int = 0,
    *,
    steps: int = 50,
    budget: int = 1000,
    constraints: Constraints | None = None,
    policy: EvasionPolicy | None = None,
    location: str = "model",
    progress: Progress | None = None,
) -> RobustnessResult:
    """Robust accuracy of `classifier` on (x, y) at each epsilon, plus findings."""
    started = time.perf_counter()
    policy = policy or EvasionPolicy()
    norm = parse_norm(norm)
    epsilons = sorted({check_eps(e) for e in eps_list})
    if not epsilons:
        raise UsageError("give at least one epsilon")
    names = resolve_attacks(classifier, attacks)
    x, y = np.asarray(x), np.asarray(y)
    check_inputs(classifier, x, y)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    constraints = constraints or Constraints.build(x.shape[1:], classifier.clip_values)
    constraints.check_inside(x)
    correct = predict(classifier, x) == y
    curve = []
    for index, eps in enumerate(epsilons):
        curve.append(
            _evaluate_eps(classifier, x, y, correct, eps, norm, names, seed + 1000 * index,
                          steps, budget, constraints, progress)
        )
    unbounded_eps, unbounded_accuracy = _unbounded_check(
        classifier, x, y, correct, norm, names, seed, steps, budget, constraints
    )
    if progress:
        progress("unbounded-epsilon check")
    result = RobustnessResult(
        norm=norm, n_points=len(x), clean_accuracy=float(correct.mean()) if len(x) else 0.0,
        curve=curve, unbounded_eps=unbounded_eps, unbounded_accuracy=unbounded_accuracy,
        attacks=names, seed=seed, seconds=time.perf_counter() - started,
    )
    result.findings = findings(result, policy, Location(location))
    return result


def _evaluate_eps(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, correct: np.ndarray, eps: float,
    norm: str, names: tuple[str, ...], seed: int, steps: int, budget: int,
    constraints: Constraints, progress: Progress | None,
) -> EpsResult:
    robust = correct.copy()
    stages = []
    black_box_only = 0
    white_box_seen = False
    for position, name in enumerate(names):
        function, needs_gradients = ATTACKS[name]
        todo = np.flatnonzero(robust)
        fooled, seconds, queries = 0, 0.0, None
        if len(todo):
            result = function(
                classifier, x[todo], y[todo], eps=eps, norm=norm, seed=seed + position,
                constraints=constraints, **_options(name, steps, budget),
            )
            robust[todo[result.success]] = False
            fooled, seconds = int(result.success.sum()), result.seconds
            queries = None if result.queries is None else int(result.queries.sum())
        white_box_seen |= needs_gradients
        if white_box_seen and not needs_gradients:
            black_box_only += fooled
        stages.append(StageResult(name, _share(robust), fooled, seconds, queries))
        if progress:
            progress(f"{name} at eps={eps:g}")
    return EpsResult(eps, _share(robust), tuple(stages), black_box_only)


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def _unbounded_check(
    classifier: Classifier, x: np.ndarray, y: np.ndarray, correct: np.ndarray, norm: str,
    names: tuple[str, ...], seed: int, steps: int, budget: int, constraints: Constraints,
    max_points: int = 200,
) -> tuple[float | None, float | None]:
    """Robust accuracy at an epsilon covering the whole valid box (None when unbounded).
    PGD starts at the clean point here: a random start over the whole box would fool most
    points by chance and hide gradients that lead nowhere."""
    span = np.broadcast_to(constraints.upper - constraints.lower, x.shape[1:])
    if not np.isfinite(span).all() or not correct.any():
        return None, None
    eps = float(span.max()) if norm == "inf" else float(np.linalg.norm(span.ravel()))
    todo = np.flatnonzero(correct)[:max_points]
    name = "pgd" if torch_backed(classifier) else "square"
    function, _ = ATTACKS[name]
    options = _options(name, steps, budget)
    if name == "pgd":
        options["random_start"] = False
    result = function(
        classifier, x[todo], y[todo], eps=eps, norm=norm, seed=seed + 999_999,
        constraints=constraints, **options,
    )
    return eps, float(1.0 - result.success.mean())


def findings(result: RobustnessResult, policy: EvasionPolicy, location: Location) -> list[Finding]:
    """Robust accuracy at the declared epsilon, and the gradient-masking warnings."""
    found = []
    declared = policy.declared_eps if policy.declared_eps is not None else result.curve[0].eps
    point = min(result.curve, key=lambda p: abs(p.eps - declared))
    common = {"norm": result.norm, "points": result.n_points,
              "clean_accuracy": round(result.clean_accuracy, 4), "attacks": list(result.attacks)}
    found.append(rules.LOW_ROBUST_ACCURACY.finding(
        f"robust accuracy {point.robust_accuracy:.1%} at L{result.norm} eps={point.eps:g} "
        f"(clean {result.clean_accuracy:.1%})",
        location,
        severity=policy.severity_for(point.robust_accuracy),
        evidence={**common, "eps": point.eps, "robust_accuracy": round(point.robust_accuracy, 4),
                  "high_below": policy.high_below, "medium_below": policy.medium_below},
    ))
    for before, after in zip(result.curve, result.curve[1:], strict=False):
        if after.robust_accuracy > before.robust_accuracy + policy.monotone_tolerance:
            found.append(rules.NOT_MONOTONE.finding(
                f"robust accuracy rose from {before.robust_accuracy:.1%} at eps={before.eps:g} "
                f"to {after.robust_accuracy:.1%} at eps={after.eps:g}",
                location,
                evidence={**common, "eps": [before.eps, after.eps],
                          "robust_accuracy": [before.robust_accuracy, after.robust_accuracy]},
            ))
    if (result.unbounded_accuracy is not None
            and result.unbounded_accuracy > policy.unbounded_max_accuracy):
        found.append(rules.NOT_BREAKABLE.finding(
            f"robust accuracy is still {result.unbounded_accuracy:.1%} at eps="
            f"{result.unbounded_eps:g}, which covers the whole valid input range",
            location,
            evidence={**common, "eps": result.unbounded_eps,
                      "robust_accuracy": round(result.unbounded_accuracy, 4),
                      "allowed": policy.unbounded_max_accuracy},
        ))
    for point in result.curve:
        share = point.black_box_only / max(result.n_points, 1)
        if share > policy.black_box_tolerance:
            found.append(rules.BLACK_BOX_WINS.finding(
                f"black-box attacks fooled {point.black_box_only} points ({share:.1%}) that "
                f"the gradient attacks missed at eps={point.eps:g}",
                location,
                evidence={**common, "eps": point.eps, "black_box_only": point.black_box_only,
                          "allowed_share": policy.black_box_tolerance},
            ))
    return found
