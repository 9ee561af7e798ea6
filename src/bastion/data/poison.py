"""Which training rows look poisoned: label issues, backdoor sub-populations, duplicates and
outliers, each with a score per row.

- Label issues: confident learning (cleanlab) on out-of-fold predicted probabilities from
  the user's scikit-learn estimator (cloned) or a default logistic regression.
- Backdoors: per class, in a feature space (a white-box model's penultimate activations, else
  the standardised inputs): the spectral signature (Tran et al. 2018: squared projection on
  the top singular vector of the centred class features, as a robust z-score within the
  class; a ranking score, not a flag) and activation clustering (Chen et al. 2018: 2-means
  on a 10-d projection; a class is poisoned when its smaller cluster is under
  `cluster_size` of the class, separates with
  silhouette above `min_silhouette`, exclusionary reclassification agrees (a model fitted on
  the inputs without the candidate clusters assigns most of its rows to other classes) and
  the cluster shares out-of-range values on some input features: the trigger). Rows of such
  a cluster, and rows of its class carrying the same trigger values, are flagged.
- Exact duplicates (same bytes), near duplicates (nearest neighbour much closer than usual)
  and per-class outliers (robust z of distance to the class centre).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.data.neural_cleanse import TriggerSearch
from bastion.data.rules import (
    BACKDOOR_CLUSTER,
    DUPLICATES,
    LABEL_ISSUES,
    MODEL_BACKDOOR,
    OUTLIERS,
)
from bastion.errors import InputError, UsageError
from bastion.findings import Finding, Location

DETECTORS = ("labels", "backdoor", "duplicates", "outliers")
MAD_SCALE = 1.4826  # makes the median absolute deviation a standard-deviation estimate


@dataclass(frozen=True)
class CheckOptions:
    folds: int = 5
    cluster_size: float = 0.35  # ART's ActivationDefence default size threshold
    min_silhouette: float = 0.15
    outlier_z: float = 6.0
    near_duplicate: float = 0.02  # fraction of the median nearest-neighbour distance
    components: int = 10
    reclassified: float = 0.5  # share of a cluster that must belong elsewhere to be poison
    trigger_share: float = 0.8  # share of a cluster at one out-of-range value on a feature


@dataclass
class CheckResult:
    n_rows: int
    scores: dict[str, np.ndarray]  # detector -> score per row (higher = more suspicious)
    flags: dict[str, np.ndarray]  # detector -> boolean per row
    reasons: dict[int, list[str]] = field(default_factory=dict)
    classes: dict[int, dict[str, Any]] = field(default_factory=dict)  # per-class statistics

    def flagged(self, detector: str | None = None) -> np.ndarray:
        """Row numbers flagged by one detector (or any), most suspicious first."""
        if detector:
            mask = self.flags[detector]
        else:
            mask = np.zeros(self.n_rows, dtype=bool)
            for flags in self.flags.values():
                mask |= flags
        rows = np.flatnonzero(mask)
        return rows[np.argsort(-self.suspicion()[rows], kind="stable")]

    def suspicion(self) -> np.ndarray:
        """One score per row to rank by: the largest of the detectors' scores (each is 0 for
        an unremarkable row and grows with how unusual the row is)."""
        suspicion = np.zeros(self.n_rows)
        for scores in self.scores.values():
            suspicion = np.maximum(suspicion, np.nan_to_num(scores))
        return suspicion

    def ranked_rows(self, labels: np.ndarray, classes: tuple[object, ...]) -> list[dict[str, Any]]:
        suspicion = self.suspicion()
        rows = []
        for row in self.flagged():
            entry = {
                "row": int(row),
                "label": _class_name(classes, int(labels[row])),
                "score": round(float(suspicion[row]), 4),
                "reasons": "; ".join(self.reasons.get(int(row), [])),
            }
            entry.update({k: round(float(v[row]), 4) for k, v in self.scores.items()})
            rows.append(entry)
        return rows


def _class_name(classes: tuple[object, ...], index: int) -> object:
    return classes[index] if index < len(classes) else index


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def check_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    features: np.ndarray | None = None,
    estimator: Any = None,
    options: CheckOptions | None = None,
    seed: int = 0,
    detectors: tuple[str, ...] = DETECTORS,
) -> CheckResult:
    """Run every row-level detector. `features`: a model's penultimate activations (else the
    standardised inputs); `estimator`: an unfitted-or-fitted scikit-learn classifier to clone
    for out-of-fold probabilities (else logistic regression)."""
    options = options or CheckOptions()
    validate(x, y)
    rng = np.random.default_rng(seed)
    # Activations keep their scale (standardising would inflate near-dead units); raw inputs
    # are standardised so that no feature dominates by its unit.
    space = _standardise(_flat(x)) if features is None else _centre(_flat(features))
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise UsageError(
            f"unknown detector(s) {', '.join(unknown)} (known: {', '.join(DETECTORS)})"
        )
    result = CheckResult(len(x), {}, {})
    if "labels" in detectors:
        label_issues(result, _flat(x), y, estimator, options, rng)
    if "backdoor" in detectors:
        backdoor_rows(result, _flat(x), space, y, estimator, options, rng)
    if "duplicates" in detectors:
        duplicates(result, _flat(x), y, options)
    if "outliers" in detectors:
        outliers(result, space, y, options)
    return result


def validate(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise InputError(f"{len(x)} rows of data but {len(y)} labels")
    counts = np.bincount(y)
    if (counts > 0).sum() < 2:
        raise InputError("need at least two classes to check labels")
    if len(x) < 20:
        raise InputError(f"need at least 20 rows to check, got {len(x)}")


def _centre(values: np.ndarray) -> np.ndarray:
    return values - values.mean(axis=0)


def _standardise(values: np.ndarray) -> np.ndarray:
    scale = values.std(axis=0)
    scale[scale == 0] = 1.0
    return (values - values.mean(axis=0)) / scale


def _reason(result: CheckResult, rows: np.ndarray, text: str) -> None:
    for row in rows.tolist():
        result.reasons.setdefault(int(row), []).append(text)


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * MAD_SCALE
    return (values - median) / (mad if mad > 0 else (values.std() or 1.0))


def _default_model(estimator: Any, rng: np.random.Generator) -> Any:
    """A fresh copy of the user's estimator, or a standardised logistic regression."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if estimator is not None:
        model = clone(estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=int(rng.integers(1 << 31)))
        return model
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))


def _reclassifier(estimator: Any, rng: np.random.Generator) -> Any:
    """For exclusionary reclassification: the user's estimator, else nearest neighbours on
    range-scaled inputs, which follow a small sub-style of a class better than a linear
    model does (a rare but genuine style must not look like poison). Range scaling, not
    standardising: a near-constant trigger feature must not dominate the distance."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    if estimator is not None:
        return _default_model(estimator, rng)
    return make_pipeline(MinMaxScaler(), KNeighborsClassifier(5))


def out_of_fold_probabilities(
    x: np.ndarray, y: np.ndarray, estimator: Any, folds: int, rng: np.random.Generator
) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = _default_model(estimator, rng)
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    splits = max(2, min(folds, smallest))
    cv = StratifiedKFold(splits, shuffle=True, random_state=int(rng.integers(1 << 31)))
    return cross_val_predict(model, x, y, cv=cv, method="predict_proba")


def label_issues(
    result: CheckResult,
    x: np.ndarray,
    y: np.ndarray,
    estimator: Any,
    options: CheckOptions,
    rng: np.random.Generator,
) -> None:
    from cleanlab.filter import find_label_issues

    probabilities = out_of_fold_probabilities(x, y, estimator, options.folds, rng)
    # n_jobs=1: cleanlab's own pool forks, which deadlocks inside an audit worker or a Ray
    # task whose threads hold locks; the work is a sort per class, fast in one process.
    issues = find_label_issues(labels=y, pred_probs=probabilities, n_jobs=1)
    result.scores["label_issue"] = 1.0 - probabilities[np.arange(len(y)), y]
    result.flags["label_issue"] = issues
    for row in np.flatnonzero(issues):
        result.reasons.setdefault(int(row), []).append(
            f"label issue: model gives its label p={probabilities[row, y[row]]:.2f}, "
            f"prefers class {int(probabilities[row].argmax())}"
        )


def backdoor_rows(
    result: CheckResult,
    x: np.ndarray,
    space: np.ndarray,
    y: np.ndarray,
    estimator: Any,
    options: CheckOptions,
    rng: np.random.Generator,
) -> None:
    """Spectral signature and activation clustering per class; a class's smaller cluster is
    confirmed as poison by exclusionary reclassification (Chen et al. 2018): a model fitted on
    the inputs without any candidate cluster mostly assigns its rows to another class."""
    spectral = np.zeros(len(y))
    cluster = np.zeros(len(y))
    candidates: dict[int, tuple[np.ndarray, float, float]] = {}
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        if len(rows) < 10:
            continue
        spectral[rows] = np.maximum(_robust_z(_spectral_signature(space[rows])), 0.0)
        small, size, silhouette, margin = _two_clusters(
            _project(space[rows], options.components, rng), rng
        )
        cluster[rows] = margin
        if size < options.cluster_size and silhouette > options.min_silhouette:
            candidates[int(label)] = (rows[small], size, silhouette)
    flagged = np.zeros(len(y), dtype=bool)
    reclassified = _exclusionary_reclassification(x, y, candidates, estimator, rng)
    for label in np.unique(y):
        stats: dict[str, Any] = {"rows": int((y == label).sum()), "poisoned": False}
        if int(label) in candidates:
            members, size, silhouette = candidates[int(label)]
            moved = float(reclassified[members].mean())
            trigger = shared_trigger(x, members, y != label, options.trigger_share)
            stats.update(
                small_cluster_fraction=round(size, 4),
                silhouette=round(silhouette, 4),
                reclassified=round(moved, 4),
                trigger_features=trigger.tolist(),
                poisoned=bool(moved > options.reclassified and len(trigger)),
            )
            if stats["poisoned"]:
                carriers = _carriers(x, members, trigger, y == label)
                rows = np.union1d(members, carriers)
                flagged[rows] = True
                _reason(
                    result,
                    rows,
                    f"backdoor: class {int(label)} holds a separate cluster of {len(members)} "
                    f"rows (silhouette {silhouette:.2f}), {moved:.0%} of which belong to other "
                    f"classes without it, sharing out-of-range values in features "
                    f"{trigger.tolist()}",
                )
        result.classes[int(label)] = stats
    result.scores["spectral"] = spectral
    result.scores["cluster"] = cluster
    result.flags["backdoor"] = flagged


def shared_trigger(
    x: np.ndarray, members: np.ndarray, others: np.ndarray, share: float
) -> np.ndarray:
    """Features on which at least `share` of the cluster lies outside the range (1% and 99%
    quantiles) of the rows of other classes (`others`, a mask), at one common value (a
    stamped patch or a set feature, not natural variation): the trigger. Empty when none.
    Other classes are the reference because a backdoor relabels every triggered row into
    the target class, so they hold no trigger, while the target class may hold triggered
    rows the cluster missed."""
    low, high = np.quantile(x[others], [0.01, 0.99], axis=0)
    values = x[members]
    outside = np.maximum((values > high).mean(axis=0), (values < low).mean(axis=0))
    span = np.ptp(x, axis=0)
    typical = np.median(values, axis=0)
    common = (np.abs(values - typical) <= 0.05 * np.where(span > 0, span, 1.0)).mean(axis=0)
    return np.flatnonzero((outside >= share) & (common >= share))


def _carriers(
    x: np.ndarray, members: np.ndarray, trigger: np.ndarray, in_class: np.ndarray
) -> np.ndarray:
    """Rows of the class that carry the cluster's trigger values on every trigger feature."""
    typical = np.median(x[np.ix_(members, trigger)], axis=0)
    spread = np.abs(x[:, trigger] - typical).max(axis=1)
    tolerance = 0.05 * (np.ptp(x[:, trigger], axis=0).max() or 1.0)
    return np.flatnonzero(in_class & (spread <= tolerance))


def _exclusionary_reclassification(
    x: np.ndarray,
    y: np.ndarray,
    candidates: dict[int, tuple[np.ndarray, float, float]],
    estimator: Any,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per row: does a model fitted without every candidate cluster put it in another class?"""
    moved = np.zeros(len(y), dtype=bool)
    if not candidates:
        return moved
    held_out = np.concatenate([members for members, _, _ in candidates.values()])
    keep = np.ones(len(y), dtype=bool)
    keep[held_out] = False
    if len(np.unique(y[keep])) < 2:
        return moved
    model = _reclassifier(estimator, rng).fit(x[keep], y[keep])
    moved[held_out] = model.predict(x[held_out]) != y[held_out]
    return moved


def _project(values: np.ndarray, components: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.decomposition import PCA

    k = min(components, values.shape[1], len(values) - 1)
    return PCA(k, random_state=int(rng.integers(1 << 31))).fit_transform(values)


def _spectral_signature(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def _two_clusters(
    values: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Smaller cluster's mask, its share, the silhouette, and per row how much closer it is
    to the smaller cluster's centre than to the larger's (positive = in the smaller)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    fit = KMeans(2, n_init=4, random_state=int(rng.integers(1 << 31))).fit(values)
    labels = fit.labels_
    if len(np.unique(labels)) < 2:
        return np.zeros(len(values), bool), 1.0, 0.0, np.zeros(len(values))
    small_id = int(np.argmin(np.bincount(labels)))
    small = labels == small_id
    distances = fit.transform(values)
    spread = np.median(distances.min(axis=1)) or 1.0
    margin = (distances[:, 1 - small_id] - distances[:, small_id]) / spread
    silhouette = float(silhouette_score(values, labels))
    return small, float(small.mean()), silhouette, np.maximum(margin, 0.0)


def duplicates(result: CheckResult, x: np.ndarray, y: np.ndarray, options: CheckOptions) -> None:
    from sklearn.neighbors import NearestNeighbors

    _, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    exact = counts[inverse] > 1
    conflicting = np.zeros(len(y), dtype=bool)
    for group in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inverse == group)
        if len(np.unique(y[members])) > 1:
            conflicting[members] = True
    scaled = _standardise(x)
    distance, neighbour = NearestNeighbors(n_neighbors=2).fit(scaled).kneighbors(scaled)
    typical = np.median(distance[:, 1]) or 1.0
    near = (distance[:, 1] < options.near_duplicate * typical) & ~exact
    result.scores["duplicate"] = np.clip(1.0 - distance[:, 1] / typical, 0.0, 1.0)
    result.flags["duplicate"] = conflicting | near
    _reason(result, np.flatnonzero(conflicting), "exact duplicate with a different label")
    for row in np.flatnonzero(near):
        result.reasons.setdefault(int(row), []).append(
            f"near duplicate of row {int(neighbour[row, 1])}"
            + (" with a different label" if y[neighbour[row, 1]] != y[row] else "")
        )
    result.classes.setdefault(-1, {})["exact_duplicate_rows"] = int(exact.sum())


def outliers(result: CheckResult, space: np.ndarray, y: np.ndarray, options: CheckOptions) -> None:
    score = np.zeros(len(y))
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        if len(rows) < 10:
            continue
        centre = np.median(space[rows], axis=0)
        score[rows] = np.maximum(_robust_z(np.linalg.norm(space[rows] - centre, axis=1)), 0.0)
    flagged = score > options.outlier_z
    result.scores["outlier"] = score
    result.flags["outlier"] = flagged
    _reason(result, np.flatnonzero(flagged), "far from the rest of its class")


def check_findings(
    result: CheckResult,
    source: str,
    classes: tuple[object, ...],
    trigger_rows: int = 10,
    triggers: TriggerSearch | None = None,
) -> list[Finding]:
    """One finding per detector that flagged rows (the rows are in the evidence), and one
    for a model whose trigger search found a suspect class."""
    location = Location(source)
    findings = []
    specs = [
        ("backdoor", BACKDOOR_CLUSTER, "rows form a separate cluster inside their class"),
        ("label_issue", LABEL_ISSUES, "rows look mislabelled (confident learning)"),
        ("duplicate", DUPLICATES, "rows are conflicting or near duplicates"),
        ("outlier", OUTLIERS, "rows are far from the rest of their class"),
    ]
    for detector, rule, text in specs:
        rows = result.flagged(detector) if detector in result.flags else np.empty(0, int)
        if not len(rows):
            continue
        evidence: dict[str, Any] = {"rows": len(rows), "first_rows": rows[:trigger_rows].tolist()}
        if detector == "backdoor":
            evidence["classes"] = [
                str(_class_name(classes, c))
                for c, stats in sorted(result.classes.items())
                if stats.get("poisoned")
            ]
        findings.append(rule.finding(f"{len(rows)} {text}", location, evidence=evidence))
    if triggers is not None and triggers.suspects:
        names = ", ".join(str(_class_name(classes, c)) for c in triggers.suspects)
        findings.append(
            MODEL_BACKDOOR.finding(
                f"the model has an anomalously small trigger for class {names}",
                location,
                evidence=triggers.to_json(),
            )
        )
    return findings
