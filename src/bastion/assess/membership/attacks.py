"""Membership scores (higher = more likely a member) for the four attack families.

Every function takes the target model's probabilities on the audit pool, the pool's labels
and, for the reference-model attacks, the reference models' probabilities and IN/OUT mask,
and returns one score per pool record.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from bastion.assess.membership.references import ReferenceOutputs
from bastion.assess.membership.signals import (
    log_likelihood,
    logit_confidence,
    true_class_probability,
)
from bastion.errors import UsageError

# Below this many references per side, one variance shared by all records is a better
# estimate than each record's own (Carlini et al. 2022, section VI-A).
PER_EXAMPLE_VARIANCE_MIN = 32
A_GRID = np.linspace(0.0, 1.0, 11)
_TINY = 1e-300  # keeps likelihood ratios finite when a reference model gives p = 0


def loss_scores(target_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Yeom et al. 2018: members have lower loss, so the score is the log-likelihood."""
    return log_likelihood(target_probs, y)


def shadow_scores(
    target_probs: np.ndarray, y: np.ndarray, refs: ReferenceOutputs, seed: int
) -> np.ndarray:
    """Shokri et al. 2017: learn IN/OUT from the reference (shadow) models' outputs."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    features = np.concatenate([_shadow_features(p, y) for p in refs.probabilities])
    labels = refs.in_mask.reshape(-1)
    attack = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):  # small data: threads only contend
        attack.fit(features, labels)
        return attack.predict_proba(_shadow_features(target_probs, y))[:, 1]


def _shadow_features(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per record: the confidence signals, the sorted probability vector, the label."""
    top = np.sort(probs, axis=1)[:, ::-1][:, : min(probs.shape[1], 10)]
    return np.column_stack([logit_confidence(probs, y), log_likelihood(probs, y), top, y])


def lira_scores(
    target_probs: np.ndarray, y: np.ndarray, refs: ReferenceOutputs, *, online: bool
) -> np.ndarray:
    """Carlini et al. 2022: Gaussian fits of the logit-scaled confidence per record.

    Online: log-likelihood ratio of the IN and OUT Gaussians. Offline: how far above the OUT
    Gaussian the target's confidence lies (a one-sided test, as a z-score).
    """
    observed = logit_confidence(target_probs, y)
    ref_conf = logit_confidence(refs.probabilities, y)  # (refs, n)
    mu_out, sd_out = _gaussian(ref_conf, ~refs.in_mask)
    if not online:
        return (observed - mu_out) / sd_out
    mu_in, sd_in = _gaussian(ref_conf, refs.in_mask)
    return _log_normal(observed, mu_in, sd_in) - _log_normal(observed, mu_out, sd_out)


def _gaussian(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = mask.sum(axis=0)
    mean = np.where(mask, values, 0.0).sum(axis=0) / counts
    residuals = np.where(mask, values - mean, 0.0)
    if counts.min() >= PER_EXAMPLE_VARIANCE_MIN:
        sd = np.sqrt((residuals**2).sum(axis=0) / (counts - 1))
    else:
        pooled = np.sqrt((residuals**2).sum() / max(mask.sum() - mask.shape[1], 1))
        sd = np.full_like(mean, pooled)
    return mean, np.maximum(sd, 1e-6)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def rmia_scores(
    target_probs: np.ndarray,
    y: np.ndarray,
    refs: ReferenceOutputs,
    population: np.ndarray,
    *,
    online: bool,
    gamma: float,
    a: float | None = None,
) -> tuple[np.ndarray, float | None]:
    """Zarifzadeh et al. 2024: pairwise likelihood ratios against population records z.

    The score of x is the fraction of z for which Pr(x|θ)/Pr(x) exceeds gamma times
    Pr(z|θ)/Pr(z), with Pr(·) the average over reference models. Offline, only OUT models
    are available and Pr(x) is approximated as ((1 + a)·Pr_OUT(x) + (1 - a)) / 2; `a` is
    calibrated on the reference models when not given. Returns the scores and `a`.
    """
    ref_p = np.maximum(true_class_probability(refs.probabilities, y), _TINY)
    target_p = true_class_probability(target_probs, y)
    if online:
        return _pairwise(target_p / ref_p.mean(axis=0), population, gamma), None
    if a is None:
        a = calibrate_a(ref_p, refs.in_mask, population, gamma)
    return _pairwise(target_p / _offline_marginal(ref_p, ~refs.in_mask, a), population, gamma), a


def _offline_marginal(ref_p: np.ndarray, out_mask: np.ndarray, a: float) -> np.ndarray:
    p_out = np.where(out_mask, ref_p, 0.0).sum(axis=0) / np.maximum(out_mask.sum(axis=0), 1)
    return ((1.0 + a) * p_out + (1.0 - a)) / 2.0


def _pairwise(ratio: np.ndarray, population: np.ndarray, gamma: float) -> np.ndarray:
    """Fraction of population records z with ratio[x] / ratio[z] > gamma, for every x."""
    reference = np.sort(ratio[population])
    below = np.searchsorted(reference, ratio / gamma, side="left")
    return below / len(reference)


def calibrate_a(
    ref_p: np.ndarray, in_mask: np.ndarray, population: np.ndarray, gamma: float
) -> float:
    """The `a` that maximises the offline attack's AUC when reference model 0 plays the
    target and the others' OUT models are the references (Zarifzadeh et al., appendix)."""
    if len(ref_p) < 4:
        raise UsageError("offline RMIA calibrates `a` on the reference models: use at least 4")
    pseudo_target, others, others_out = ref_p[0], ref_p[1:], ~in_mask[1:]
    best_a, best_auc = 0.0, -1.0
    for a in A_GRID:
        ratio = pseudo_target / _offline_marginal(others, others_out, float(a))
        auc = roc_auc_score(in_mask[0], _pairwise(ratio, population, gamma))
        if auc > best_auc:
            best_a, best_auc = float(a), auc
    return best_a
