"""The robustness curve as a PNG or SVG: robust accuracy against epsilon, one line for the
whole sequence and one per attack stage, clean accuracy as the reference."""

from __future__ import annotations

import io
import os
from pathlib import Path

from bastion.assess.evasion.robustness import RobustnessResult
from bastion.errors import UsageError
from bastion.fsutil import atomic_write

PLOT_FORMATS = {".png": "png", ".svg": "svg"}


def plot_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot must end in .png or .svg, got {Path(path).name!r}")
    return PLOT_FORMATS[suffix]


def plot_curve(result: RobustnessResult, path: str | os.PathLike[str]) -> Path:
    fmt = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    epsilons = [p.eps for p in result.curve]
    for position, attack in enumerate(result.attacks):
        after = [p.stages[position].robust_accuracy for p in result.curve]
        axes.plot(epsilons, after, linestyle="--", marker=".", alpha=0.6, label=f"after {attack}")
    axes.plot(epsilons, [p.robust_accuracy for p in result.curve], marker="o", linewidth=2,
              color="black", label="robust accuracy")
    axes.axhline(result.clean_accuracy, color="grey", linestyle=":", label="clean accuracy")
    axes.set_xlabel(f"epsilon (L{result.norm})")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.set_title(f"Robustness curve ({result.n_points} points)")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    return atomic_write(path, buffer.getvalue())
