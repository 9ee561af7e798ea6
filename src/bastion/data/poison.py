"""Which training rows look poisoned: label issues, backdoor sub-populations, duplicates and
outliers, each with a score per row.

- Label issues: confident learning (cleanlab) on out-of-fold predicted probabilities from
  the user's scikit-learn estimator (cloned) or a default logistic regression.
- Backdoors: per class, in a feature space (a white-box model's penultimate activations, else
  the standardised inputs), all classes in one batched computation: the spectral signature
  (Tran et al. 2018: squared projection on the top principal axis of the centred class
  features, as a robust z-score within the class; a ranking score, not a flag) and
  activation clustering (Chen et al. 2018: 2-means on a 10-d PCA projection). A class is
  poisoned when one of its two clusters (the smaller first, then the larger: at high poison
  rates the poison outnumbers the class's own rows) shares out-of-range values on some
  input features (the trigger), separates with silhouette above `min_silhouette`, and
  exclusionary reclassification agrees (a model fitted on the inputs without the suspect
  clusters assigns most of its rows to other classes); the tests run in that order,
  cheapest first. No size limit: ART's relative-size rule (under 35% of the class) misses
  every backdoor of 10% of the data or more, and the three confirmations keep clean classes
  clean. Rows of such a cluster, and rows of its class carrying the same trigger values,
  are flagged.
- Exact duplicates (same bytes), near duplicates (nearest neighbour much closer than usual)
  and per-class outliers (robust z of distance to the class centre).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
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
EXACT_PCA_UP_TO = 256  # classes with more rows and features than this get a randomized PCA


@dataclass(frozen=True)
class CheckOptions:
    folds: int = 5
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


def _float_rows(x: np.ndarray) -> np.ndarray:
    """One row per sample, as float32 or float64 as given (a view, no copy), else float64."""
    rows = np.asarray(x).reshape(len(x), -1)
    return rows if rows.dtype in (np.float32, np.float64) else rows.astype(np.float64)


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
    # Activations keep their scale (standardising would inflate near-dead units) and their
    # offset (every detector centres each class itself); raw inputs are standardised so that
    # no feature dominates by its unit.
    space = _standardise(_flat(x)) if features is None else _float_rows(features)
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise UsageError(
            f"unknown detector(s) {', '.join(unknown)} (known: {', '.join(DETECTORS)})"
        )
    result = CheckResult(len(x), {}, {})
    if "labels" in detectors:
        label_issues(result, _flat(x), y, estimator, options, rng)
    if "backdoor" in detectors:
        backdoor_rows(result, _float_rows(x), space, y, estimator, options, rng)
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


@functools.cache
def _thread_controller() -> Any:
    """threadpoolctl's view of the loaded thread pools, found once per process (~1 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread(function: Callable[..., None]) -> Callable[..., None]:
    """`function` run with BLAS limited to one thread. Its work is many small or skinny
    matrices (per-class covariances, QR of rows x 20 probes), microseconds to milliseconds
    each, where waking BLAS threads that wait for a busy core costs more than it gives: on 2
    shared cores a 32 x 32 eigen-decomposition took 20 ms with two threads and 0.1 ms with
    one, a QR of 1000 x 20 one second."""

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> None:
        with _thread_controller().limit(limits=1, user_api="blas"):
            function(*args, **kwargs)

    return limited


@_one_blas_thread
def backdoor_rows(
    result: CheckResult,
    x: np.ndarray,
    space: np.ndarray,
    y: np.ndarray,
    estimator: Any,
    options: CheckOptions,
    rng: np.random.Generator,
) -> None:
    """Spectral signature and 2-means activation clustering of every class at once; a
    class's cluster is poison when its rows share a trigger, it separates (silhouette) and
    exclusionary reclassification (Chen et al. 2018) agrees: a
    model fitted on the inputs without the suspect clusters assigns most of its rows to
    other classes. The cheap tests run first, so the dear ones see only clusters still
    suspect."""
    spectral, cluster = np.zeros(len(y)), np.zeros(len(y))
    stats = {
        label: {"rows": count, "poisoned": False}
        for label, count in enumerate(np.bincount(y).tolist())
        if count
    }
    suspects: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    span, order = np.ptp(x, axis=0), ColumnOrder(x)
    # Features constant over the data (dead units) add nothing to any class's covariance:
    # dropping them leaves every projection as it was and shrinks the eigen-decompositions.
    live = np.flatnonzero(np.ptp(space, axis=0) > 0)
    if 0 < len(live) < space.shape[1]:
        space = space.take(live, axis=1)  # C order (space[:, live] is not: slow to gather)
    for labels, index, mask in _class_groups(y, space.shape[1]):
        projected = _principal_projection(space[index], mask, options.components)
        signature = _robust_z_per_class(projected[..., 0] ** 2, mask)
        spectral[index[mask]] = np.maximum(signature[mask], 0.0)
        small, lean = _two_means(projected, mask)
        # The cluster score: how far a row leans to its class's smaller cluster, or to the
        # larger one where that is the poison (set below).
        cluster[index[mask]] = np.maximum(lean[mask], 0.0)
        for i in np.flatnonzero(small.any(axis=1)):  # classes that 2-means split in two
            label = int(labels[i])
            for towards, side in ((1.0, small[i]), (-1.0, mask[i] & ~small[i])):
                members = index[i][side]
                trigger = shared_trigger(
                    x, members, y != label, options.trigger_share, span, order
                )
                if not len(trigger):
                    continue
                silhouette = _silhouette(projected[i][mask[i]], side[mask[i]], rng)
                stats[label].update(
                    cluster_fraction=round(len(members) / int(mask[i].sum()), 4),
                    trigger_features=trigger.tolist(), silhouette=round(silhouette, 4),
                )
                if silhouette > options.min_silhouette:
                    suspects[label] = (members, trigger)
                    rows = index[i][mask[i]]
                    cluster[rows] = np.maximum(towards * lean[i][mask[i]], 0.0)
                break
    shares = _exclusionary_reclassification(
        x, y, [members for members, _ in suspects.values()], estimator, rng
    )
    flagged = np.zeros(len(y), dtype=bool)
    for (label, (members, trigger)), share in zip(suspects.items(), shares, strict=True):
        stats[label].update(reclassified=round(share, 4), poisoned=share > options.reclassified)
        if stats[label]["poisoned"]:
            rows = np.union1d(members, _carriers(x, members, trigger, y == label))
            flagged[rows] = True
            _reason(
                result,
                rows,
                f"backdoor: class {label} holds a separate cluster of {len(members)} rows "
                f"(silhouette {stats[label]['silhouette']:.2f}), {share:.0%} of which belong "
                f"to other classes without it, sharing out-of-range values in features "
                f"{trigger.tolist()}",
            )
    result.classes.update(stats)
    result.scores["spectral"] = spectral
    result.scores["cluster"] = cluster
    result.flags["backdoor"] = flagged


def _class_groups(
    y: np.ndarray, width: int, budget: int = 8_000_000, smallest: int = 10
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Classes of at least `smallest` rows in groups of similar size, each as its labels, a
    (classes, longest) matrix of row numbers (short classes padded with their last row) and
    the mask of real entries. One group holds every class of a balanced dataset; a group
    stays within `budget` padded values of `width` features, so memory follows the data."""
    labels, counts = np.unique(y, return_counts=True)
    order = np.argsort(y, kind="stable")
    starts = np.cumsum(counts) - counts
    group: list[int] = []
    for i in [i for i in np.argsort(counts, kind="stable") if counts[i] >= smallest]:
        if group and (len(group) + 1) * counts[i] * width > budget:
            yield _padded(labels, counts, starts, order, group)
            group = []
        group.append(i)
    if group:
        yield _padded(labels, counts, starts, order, group)


def _padded(
    labels: np.ndarray, counts: np.ndarray, starts: np.ndarray, order: np.ndarray, group: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = counts[group][:, None]
    offsets = np.arange(sizes.max())
    index = order[starts[group][:, None] + np.minimum(offsets, sizes - 1)]
    return labels[group], index, offsets < sizes


def _principal_projection(values: np.ndarray, mask: np.ndarray, components: int) -> np.ndarray:
    """Each class's centred rows (classes, rows, features) on its top principal axes (PCA),
    largest first; padded rows are 0. The first column squared is the spectral signature.
    Small classes: the smaller of the covariance (d x d) and Gram (n x n) matrices,
    eigen-decomposed for all classes in one batched call; large ones: randomized."""
    weights = mask[..., None]
    # Means as one matrix product and the centring in place: on large classes each pass
    # over (classes, rows, features) costs more than the arithmetic.
    means = (mask[:, None, :].astype(values.dtype) @ values) / mask.sum(axis=1)[:, None, None]
    centred = values - means
    centred *= weights
    _, rows, width = centred.shape
    k = max(1, min(components, width, int(mask.sum(axis=1).min()) - 1))
    if min(rows, width) > EXACT_PCA_UP_TO:
        return _randomized_projection(centred, k) * weights
    if width <= rows:
        _, axes = np.linalg.eigh(centred.transpose(0, 2, 1) @ centred)
        return centred @ np.ascontiguousarray(axes[..., : -k - 1 : -1])
    variances, scores = np.linalg.eigh(centred @ centred.transpose(0, 2, 1))
    top = np.sqrt(np.maximum(variances[:, None, : -k - 1 : -1], 0.0))
    return scores[..., : -k - 1 : -1] * top * weights


def _randomized_projection(
    centred: np.ndarray, k: int, oversample: int = 10, power: int = 4
) -> np.ndarray:
    """Top-k principal scores of each class by randomized SVD (Halko, Martinsson & Tropp
    2011; what scikit-learn's PCA does for large data): a fixed random probe, `power`
    re-orthonormalised power iterations, then an exact SVD of the small projected matrix.
    Its cost grows with rows x features x k, not with features cubed."""
    _, rows, width = centred.shape
    size = min(k + oversample, rows, width)
    probe = np.random.default_rng(0).standard_normal((len(centred), width, size))
    basis = np.linalg.qr(centred @ probe.astype(centred.dtype))[0]
    for _ in range(power):
        basis = np.linalg.qr(centred.transpose(0, 2, 1) @ basis)[0]
        basis = np.linalg.qr(centred @ basis)[0]
    small, singular, _ = np.linalg.svd(basis.transpose(0, 2, 1) @ centred, full_matrices=False)
    return (basis @ small[..., :k]) * singular[:, None, :k]


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=1)
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    rows = np.arange(len(values))
    return 0.5 * (ordered[rows, (counts - 1) // 2] + ordered[rows, counts // 2])


def _robust_z_per_class(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`_robust_z` of each row of `values` over its masked entries."""
    median = _masked_median(values, mask)[:, None]
    mad = _masked_median(np.abs(values - median), mask)[:, None] * MAD_SCALE
    counts = mask.sum(axis=1, keepdims=True)
    mean = (values * mask).sum(axis=1, keepdims=True) / counts
    std = np.sqrt(((values - mean) ** 2 * mask).sum(axis=1, keepdims=True) / counts)
    scale = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))
    return (values - median) / scale


def _two_means(
    values: np.ndarray, mask: np.ndarray, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """2-means (Lloyd) in every class at once, started from the split of the first principal
    axis at the mean: the direction along which two sub-populations separate most. Returns
    per class the smaller cluster's mask, and per row how much closer it is to the smaller
    cluster's centre than to the larger's, in units of the class's median distance to its
    nearest centre (negative for rows nearer the larger cluster; 0 in unsplit classes)."""
    side = (values[..., 0] > 0) & mask
    counts, totals = mask.sum(axis=1), values.sum(axis=1)  # padded rows are 0
    inside = side.sum(axis=1)
    split = (inside > 0) & (inside < counts)  # else one side is empty
    for _ in range(iterations):
        off, on = _two_centres(values, side, inside, counts, totals)
        # Nearer to `on` in squared distance: 2 v.(on - off) > |on|^2 - |off|^2.
        towards = on - off
        nearer = (values @ (2.0 * towards)[..., None])[..., 0] > (
            (towards * (on + off)).sum(axis=1)[:, None]
        )
        nearer &= mask
        now_inside = nearer.sum(axis=1)
        emptied = (now_inside == 0) | (now_inside == counts)
        if emptied.any():  # a class keeps its last two-sided split
            nearer[emptied], now_inside[emptied] = side[emptied], inside[emptied]
        if (nearer == side).all():
            break
        side, inside = nearer, now_inside
    centres = np.stack(_two_centres(values, side, inside, counts, totals), axis=1)
    distances = np.sqrt(((values[:, :, None, :] - centres[:, None]) ** 2).sum(axis=3))
    side_is_small = (inside <= counts / 2)[:, None]
    small = np.where(side_is_small, side, mask & ~side) & split[:, None]
    to_small = np.where(side_is_small, distances[..., 1], distances[..., 0])
    to_large = np.where(side_is_small, distances[..., 0], distances[..., 1])
    spread = _masked_median(distances.min(axis=2), mask)[:, None]
    margin = (to_large - to_small) / np.where(spread > 0, spread, 1.0)
    return small, margin * (mask & split[:, None])


def _two_centres(
    values: np.ndarray,
    side: np.ndarray,
    inside: np.ndarray,
    counts: np.ndarray,
    totals: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the centres (classes, k) of its rows off and on `side` (`inside` of them
    on it), from the sum of the rows on it and the class totals."""
    on_sum = (side[:, None, :].astype(values.dtype) @ values)[:, 0]
    off = (totals - on_sum) / np.maximum(counts - inside, 1)[:, None]
    return off, on_sum / np.maximum(inside, 1)[:, None]


def _silhouette(
    values: np.ndarray,
    small: np.ndarray,
    rng: np.random.Generator | None = None,
    sample: int = 1000,
) -> float:
    """Mean silhouette of a two-cluster split (Rousseeuw 1987; as scikit-learn's
    silhouette_score), from block-wise pairwise distances to bound memory on a large class.
    With `rng`, a class of more than `sample` rows is scored on a random sample of about that
    many (as silhouette_score's sample_size): its cost grows with the square of the rows."""
    from scipy.spatial.distance import cdist

    if rng is not None and len(values) > sample:
        # Stratified: each cluster in proportion, at least two rows of each (one row has no
        # within-cluster distance), so a small cluster is never missed.
        parts = (np.flatnonzero(small), np.flatnonzero(~small))
        chosen = np.sort(
            np.concatenate(
                [
                    rng.choice(part, _share(len(part), len(values), sample), replace=False)
                    for part in parts
                ]
            )
        )
        values, small = values[chosen], small[chosen]
    in_small = small.astype(np.float64)
    sizes = np.array([len(small) - in_small.sum(), in_small.sum()])
    block = max(1, 4_000_000 // len(values))
    scores = np.empty(len(values))
    for start in range(0, len(values), block):
        distances = cdist(values[start : start + block], values)
        to_small = distances @ in_small
        totals = np.stack([distances.sum(axis=1) - to_small, to_small], axis=1)
        own = small[start : start + block].astype(int)
        rows = np.arange(len(own))
        within = totals[rows, own] / np.maximum(sizes[own] - 1, 1)
        between = totals[rows, 1 - own] / sizes[1 - own]
        larger = np.maximum(within, between)
        scores[start : start + block] = np.divide(
            between - within, larger, out=np.zeros(len(own)), where=(sizes[own] > 1) & (larger > 0)
        )
    return float(scores.mean())


def _share(part: int, whole: int, sample: int) -> int:
    """Rows to sample from a part of `whole` rows: its share of `sample`, at least 2."""
    return min(part, max(2, sample * part // whole))


class ColumnOrder:
    """Each feature's values over all rows of `x`, sorted the first time a trigger test asks
    for that feature (a clean class's cluster asks about a few dozen, mostly blank, features;
    the same ones for every class), so order statistics cost a lookup instead of a pass over
    every row. The sorted rows are allocated up front but never written, so take no memory,
    until a feature is asked for."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.values = np.empty((x.shape[1], len(x)), dtype=x.dtype)
        self.sorted = np.zeros(x.shape[1], dtype=bool)

    def at(self, features: np.ndarray, rank: int) -> np.ndarray:
        """The `rank`-th smallest value (from 0) of each feature."""
        missing = features[~self.sorted[features]]
        if len(missing):
            self.values[missing] = np.sort(self.x.take(missing, axis=1).T, axis=1)
            self.sorted[missing] = True
        return self.values[features, rank]


def shared_trigger(
    x: np.ndarray,
    members: np.ndarray,
    others: np.ndarray,
    share: float,
    span: np.ndarray | None = None,
    order: ColumnOrder | None = None,
) -> np.ndarray:
    """Features on which at least `share` of the cluster lies outside the range (1% and 99%
    quantiles) of the rows of other classes (`others`, a mask), at one common value (a
    stamped patch or a set feature, not natural variation): the trigger. Empty when none.
    Other classes are the reference because a backdoor relabels every triggered row into
    the target class, so they hold no trigger, while the target class may hold triggered
    rows the cluster missed. `span`: each feature's range over `x`, and `order`: its sorted
    columns, when already at hand (a detector testing many clusters shares them)."""
    values = np.sort(x[members], axis=0)
    span = np.ptp(x, axis=0) if span is None else span
    middle = (len(values) - 1) // 2, len(values) // 2
    typical = 0.5 * (values[middle[0]] + values[middle[1]])  # the median
    common = (np.abs(values - typical) <= 0.05 * np.where(span > 0, span, 1.0)).mean(axis=0)
    agreed = np.flatnonzero(common >= share)
    if not len(agreed):
        return agreed
    # At least `share` of the cluster is above the other rows' 99% quantile only if its r-th
    # largest value is, so only the other rows' top 1% reach that value, and of all rows at
    # most those plus the cluster's class (`above` rows): an order statistic of all rows,
    # looked up, rules out most shared features (blank pixels, say) before any quantile of
    # the others is sorted (likewise below).
    needed = int(np.ceil(share * len(values) - 1e-9))
    top, bottom = values[len(values) - needed, agreed], values[needed - 1, agreed]
    rows = int(np.count_nonzero(others))
    in_class = len(x) - rows
    above = rows - int(np.floor(0.99 * (rows - 1))) - 1 + in_class
    below = int(np.ceil(0.01 * (rows - 1))) + in_class
    if above < len(x) and below < len(x):
        order = order if order is not None else ColumnOrder(x)
        agreed = agreed[
            (top > order.at(agreed, len(x) - above - 1)) | (bottom < order.at(agreed, below))
        ]
    if not len(agreed):
        return agreed
    low, high = _quantiles(x.take(agreed, axis=1)[others].T, (0.01, 0.99))
    values = values[:, agreed]
    outside = np.maximum((values > high).mean(axis=0), (values < low).mean(axis=0))
    return agreed[outside >= share]


def _quantiles(rows: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """np.quantile(rows, levels, axis=1) (linear interpolation) from one sort per row,
    which beats its partitioning for the few thousand, often tied, values of a feature."""
    ordered = np.sort(rows, axis=1)
    position = np.asarray(levels) * (ordered.shape[1] - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, ordered.shape[1] - 1)
    fraction = position - below
    return (ordered[:, below] * (1 - fraction) + ordered[:, above] * fraction).T


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
    suspects: list[np.ndarray],
    estimator: Any,
    rng: np.random.Generator,
    queries: int = 32,
) -> list[float]:
    """Per suspect cluster, the share of its rows that a model fitted without every suspect
    cluster puts in another class. The model is the user's estimator (cloned and fitted),
    else 5 nearest neighbours on range-scaled inputs, which follow a small sub-style of a
    class better than a linear model does (a rare but genuine style must not look like
    poison). Range scaling, not standardising: a near-constant trigger feature must not
    dominate the distance. The nearest-neighbour vote asks at most `queries` rows of a
    cluster, drawn at random: its cost grows with the rows asked, and the share needs no
    more (its standard error is at most 0.09)."""
    held_out = np.concatenate(suspects) if suspects else np.empty(0, np.intp)
    keep = np.ones(len(y), dtype=bool)
    keep[held_out] = False
    if not suspects or np.count_nonzero(np.bincount(y[keep])) < 2:
        return [0.0] * len(suspects)
    if estimator is not None:
        model = _default_model(estimator, rng).fit(x[keep], y[keep])
        asked = suspects
        predicted = model.predict(x[held_out])
    else:
        asked = [
            rows if len(rows) <= queries else np.sort(rng.choice(rows, queries, replace=False))
            for rows in suspects
        ]
        rows = np.concatenate(asked)
        predicted = _nearest_neighbour_vote(x[keep], y[keep], x[rows], k=5)
    moved = predicted != y[np.concatenate(asked)]
    ends = np.cumsum([len(rows) for rows in asked])
    return [float(part.mean()) for part in np.split(moved, ends[:-1])]


def _nearest_neighbour_vote(
    train: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """The majority label (smallest on ties) of each query's k nearest training rows, with
    every feature scaled to the training rows' [0, 1] range: brute force, one matrix product
    per block of queries, as there are few queries and no index pays for itself. `labels`
    are class indices (non-negative integers)."""
    span = np.ptp(train, axis=0)
    weights = (1.0 / np.where(span > 0, span, 1.0) ** 2).astype(train.dtype)
    # The scaling folds into feature weights (the offset cancels in differences), so the
    # training rows are never copied; each query's own squared norm is common to its
    # distances and left out.
    train_terms = (train * train) @ weights
    k = min(k, len(train))
    classes = np.arange(labels.max() + 1)
    block = max(1, 4_000_000 // len(train))
    votes = np.empty(len(queries), dtype=np.intp)
    for start in range(0, len(queries), block):
        distances = train_terms - (2.0 * weights * queries[start : start + block]) @ train.T
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        votes[start : start + block] = (labels[nearest][..., None] == classes).sum(1).argmax(1)
    return votes


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
