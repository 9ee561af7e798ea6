"""Membership inference: can an attacker tell whether a record was in the training set?

`assess_membership(target, x_members, y_members, x_nonmembers, y_nonmembers, attacks=...)`
runs the loss-threshold attack (Yeom et al. 2018), the shadow-model attack (Shokri et al.
2017), LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al. 2024), online or offline, and
reports AUC, balanced accuracy, TPR at 0.1% and 1% FPR, the most exposed members and
findings by policy thresholds.

The audit pool is members + non-members + optional population records. Reference models are
trained on balanced random halves of the pool (see `references`); the target's own members
are scored against models that did (online) or did not (offline) see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.assess.membership.attacks import (
    lira_scores,
    loss_scores,
    rmia_scores,
    shadow_scores,
)
from bastion.assess.membership.metrics import RocSummary, summarise
from bastion.assess.membership.plot import plot_roc
from bastion.assess.membership.references import (
    CloneAndFit,
    ReferenceOutputs,
    TrainFn,
    train_references,
)
from bastion.assess.privacy_rules import MEMBERSHIP_EXPOSURE
from bastion.errors import InputError, UsageError
from bastion.findings import Finding, Location, Severity
from bastion.models.classifier import Classifier, SklearnClassifier, as_classifier, check_inputs

ATTACKS = ("loss", "shadow", "lira", "rmia")
NEEDS_REFERENCES = ("shadow", "lira", "rmia")

__all__ = [
    "ATTACKS",
    "MembershipAssessment",
    "MembershipPolicy",
    "MembershipResult",
    "assess_membership",
    "plot_roc",
]


@dataclass(frozen=True)
class MembershipPolicy:
    """Severity by AUC or by TPR at 1% FPR, whichever is worse.

    TPR at 1% FPR counts only with at least `min_nonmembers_for_tpr` non-members: with fewer,
    1% of them is not a single record and the rate is noise.
    """

    auc: tuple[tuple[Severity, float], ...] = (
        (Severity.HIGH, 0.75),
        (Severity.MEDIUM, 0.60),
        (Severity.LOW, 0.55),
    )
    tpr_at_1pct_fpr: tuple[tuple[Severity, float], ...] = (
        (Severity.HIGH, 0.10),
        (Severity.MEDIUM, 0.04),
        (Severity.LOW, 0.02),
    )
    min_nonmembers_for_tpr: int = 100

    def severity(self, result: MembershipResult, n_nonmembers: int) -> Severity | None:
        levels = [s for s, bound in self.auc if result.roc.auc >= bound]
        if n_nonmembers >= self.min_nonmembers_for_tpr:
            tpr = result.roc.tpr_at_fpr[0.01]
            levels += [s for s, bound in self.tpr_at_1pct_fpr if tpr >= bound]
        return max(levels, default=None)


@dataclass(frozen=True)
class MembershipResult:
    attack: str  # e.g. "lira-online", "rmia-offline", "loss"
    scores: np.ndarray  # one per audited record, members first
    is_member: np.ndarray
    roc: RocSummary
    exposed: np.ndarray  # member indices, most exposed first
    details: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "auc": round(self.roc.auc, 6),
            "balanced_accuracy": round(self.roc.balanced_accuracy, 6),
            "tpr_at_0.1%_fpr": round(self.roc.tpr_at_fpr[0.001], 6),
            "tpr_at_1%_fpr": round(self.roc.tpr_at_fpr[0.01], 6),
            "most_exposed_members": self.exposed.tolist(),
            **self.details,
        }


@dataclass(frozen=True)
class MembershipAssessment:
    results: list[MembershipResult]
    findings: list[Finding]
    n_members: int
    n_nonmembers: int
    n_references: int

    def metrics(self) -> dict[str, Any]:
        return {
            "members": self.n_members,
            "nonmembers": self.n_nonmembers,
            "references": self.n_references,
            "attacks": [r.metrics() for r in self.results],
        }

    def result(self, attack: str) -> MembershipResult:
        return next(r for r in self.results if r.attack == attack)


def assess_membership(
    target: Any,
    x_members: np.ndarray,
    y_members: np.ndarray,
    x_nonmembers: np.ndarray,
    y_nonmembers: np.ndarray,
    *,
    attacks: str | Sequence[str] = "rmia",
    online: bool = False,
    x_population: np.ndarray | None = None,
    y_population: np.ndarray | None = None,
    references: int = 8,
    train_fn: TrainFn | None = None,
    n_jobs: int | None = None,
    ray_address: str | None = None,
    seed: int = 0,
    gamma: float = 2.0,
    top: int = 10,
    policy: MembershipPolicy | None = None,
    location: str = "model",
) -> MembershipAssessment:
    """Run membership attacks against `target` (a Classifier, scikit-learn estimator or
    torch module) and judge the strongest one by `policy`.

    `attacks` names any of ATTACKS; "lira" and "rmia" run online or offline by `online`,
    or name the variant ("lira-offline", "rmia-online"). Reference models come from
    `train_fn(x, y, seed)`, by default a clone of a scikit-learn `target` refitted.
    """
    names = _attack_names(attacks, online)
    x_pool, y_pool, n_members, n_nonmembers = _pool(
        x_members, y_members, x_nonmembers, y_nonmembers, x_population, y_population
    )
    classifier = _classifier(target, x_pool)
    check_inputs(classifier, x_pool, y_pool)
    target_probs = np.asarray(classifier.predict_proba(x_pool), dtype=np.float64)
    n_audited = n_members + n_nonmembers
    is_member = np.arange(n_audited) < n_members
    rng = np.random.default_rng(seed)
    refs = None
    if any(name.split("-")[0] in NEEDS_REFERENCES for name in names):
        fn = train_fn if train_fn is not None else _default_train_fn(target, classifier)
        refs = train_references(
            fn, x_pool, y_pool, classifier.n_classes, references, rng,
            n_jobs=n_jobs, ray_address=ray_address,
        )  # fmt: skip
    population = np.arange(n_audited, len(x_pool)) if len(x_pool) > n_audited else None
    results = []
    for name in names:
        scores, details = _run(name, target_probs, y_pool, refs, population, gamma, seed)
        scores = scores[:n_audited]
        roc = summarise(scores, is_member)
        exposed = np.argsort(-scores[:n_members], kind="stable")[:top]
        results.append(MembershipResult(name, scores, is_member, roc, exposed, details))
    findings = _findings(results, policy or MembershipPolicy(), n_nonmembers, location)
    return MembershipAssessment(
        results, findings, n_members, n_nonmembers, references if refs is not None else 0
    )


def _attack_names(attacks: str | Sequence[str], online: bool) -> list[str]:
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    default_mode = "online" if online else "offline"
    resolved = []
    for name in names:
        family, _, mode = name.partition("-")
        has_modes = family in ("lira", "rmia")
        if family not in ATTACKS or (mode and not (has_modes and mode in ("online", "offline"))):
            raise UsageError(
                f"unknown membership attack {name!r} (expected loss, shadow, lira, rmia, "
                "lira-online, lira-offline, rmia-online or rmia-offline)"
            )
        resolved.append(f"{family}-{mode or default_mode}" if has_modes else family)
    return resolved


def _pool(xm, ym, xn, yn, xp, yp) -> tuple[np.ndarray, np.ndarray, int, int]:
    parts = [("members", xm, ym), ("non-members", xn, yn)]
    if xp is not None:
        if yp is None:
            raise InputError("population records need labels")
        parts.append(("population", xp, yp))
    for what, x, y in parts:
        if len(x) == 0:
            raise InputError(f"no {what} records given")
        if len(x) != len(y):
            raise InputError(f"{len(x)} {what} records but {len(y)} labels")
    shapes = {np.asarray(x).shape[1:] for _, x, _ in parts}
    if len(shapes) > 1:
        raise InputError(f"members, non-members and population differ in shape: {sorted(shapes)}")
    x_pool = np.concatenate([np.asarray(x) for _, x, _ in parts])
    y_pool = np.concatenate([np.asarray(y) for _, _, y in parts]).astype(np.int64)
    return x_pool, y_pool, len(xm), len(xn)


def _classifier(target: Any, x: np.ndarray) -> Classifier:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(target, torch.nn.Module):
        return as_classifier(target, input_shape=tuple(x.shape[1:]))
    return as_classifier(target)


def _default_train_fn(target: Any, classifier: Classifier) -> TrainFn:
    estimator = classifier.estimator if isinstance(classifier, SklearnClassifier) else target
    if hasattr(estimator, "get_params") and hasattr(estimator, "fit"):
        return CloneAndFit(estimator)
    raise UsageError(
        f"reference models for a {type(target).__name__} need a training function: pass "
        "train_fn(x, y, seed) returning a trained model (CLI: --train-fn module:function)"
    )


def _run(name, target_probs, y, refs: ReferenceOutputs | None, population, gamma, seed):
    family, _, mode = name.partition("-")
    if family == "loss":
        return loss_scores(target_probs, y), {}
    assert refs is not None  # _attack_names and assess_membership guarantee it
    if family == "shadow":
        return shadow_scores(target_probs, y, refs, seed), {}
    if family == "lira":
        return lira_scores(target_probs, y, refs, online=mode == "online"), {}
    z = population if population is not None else np.arange(len(y))
    scores, a = rmia_scores(target_probs, y, refs, z, online=mode == "online", gamma=gamma)
    details = {"gamma": gamma, "population": "population" if population is not None else "pool"}
    return scores, details | ({"a": a} if a is not None else {})


def _findings(results, policy: MembershipPolicy, n_nonmembers: int, location: str):
    graded = [(policy.severity(r, n_nonmembers), r) for r in results]
    graded = [(s, r) for s, r in graded if s is not None]
    if not graded:
        return []
    severity, worst = max(graded, key=lambda item: (item[0], item[1].roc.tpr_at_fpr[0.01]))
    roc = worst.roc
    title = (
        f"{worst.attack} membership inference: AUC {roc.auc:.3f}, TPR {roc.tpr_at_fpr[0.01]:.1%} "
        f"at 1% FPR ({roc.tpr_at_fpr[0.001]:.1%} at 0.1%)"
    )
    evidence = worst.metrics() | {"nonmembers": n_nonmembers}
    return [MEMBERSHIP_EXPOSURE.finding(title, Location(location), severity=severity,
                                        evidence=evidence)]
