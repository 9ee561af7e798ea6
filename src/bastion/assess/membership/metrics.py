"""How well membership scores separate members from non-members."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

# The false-positive rates at which the true-positive rate is reported (ML Privacy Meter,
# Carlini et al. 2022): an attack is dangerous when it is right about some records while
# almost never wrong.
LOW_FPRS = (0.001, 0.01)


@dataclass(frozen=True)
class RocSummary:
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    balanced_accuracy: float  # at the best threshold
    tpr_at_fpr: dict[float, float]


def summarise(scores: np.ndarray, is_member: np.ndarray) -> RocSummary:
    """ROC curve, AUC, best balanced accuracy and TPR at each of LOW_FPRS."""
    fpr, tpr, _ = roc_curve(is_member, scores)
    return RocSummary(
        fpr=fpr,
        tpr=tpr,
        auc=float(roc_auc_score(is_member, scores)),
        balanced_accuracy=float(np.max((tpr + 1.0 - fpr) / 2.0)),
        tpr_at_fpr={rate: tpr_at(fpr, tpr, rate) for rate in LOW_FPRS},
    )


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, rate: float) -> float:
    """The highest TPR among thresholds whose FPR does not exceed `rate`."""
    allowed = fpr <= rate
    return float(tpr[allowed].max()) if allowed.any() else 0.0
