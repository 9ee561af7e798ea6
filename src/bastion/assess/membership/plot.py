"""The log-log ROC curve: the low false-positive region is where membership leaks matter."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from bastion.fsutil import atomic_write


def plot_roc(results: Sequence, path: str | os.PathLike[str]) -> None:
    """Write a PNG with one curve per MembershipResult and the chance diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    try:
        floor = 1e-4
        for result in results:
            fpr = np.maximum(result.roc.fpr, floor)
            tpr = np.maximum(result.roc.tpr, floor)
            axes.plot(fpr, tpr, label=f"{result.attack} (AUC {result.roc.auc:.3f})")
        axes.plot([floor, 1], [floor, 1], "k--", linewidth=0.8, label="chance")
        axes.set(
            xscale="log",
            yscale="log",
            xlim=(floor, 1),
            ylim=(floor, 1),
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            title="Membership inference ROC",
        )
        axes.legend(loc="lower right", fontsize="small")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    atomic_write(path, buffer.getvalue())
