"""Plots the report draws from an audit's numbers (a check's own plots come with its result).
Images are PNG bytes, made without a display (matplotlib's Agg backend)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.audit import ThreatScore

_GRADE_COLOUR = {"A": "#2e7d32", "B": "#7cb342", "C": "#f9a825", "D": "#ef6c00", "F": "#c62828"}


def threat_scores_png(scores: list[ThreatScore]) -> bytes:
    """A horizontal bar per threat: its score out of 100, or 'not assessed'."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.4), dpi=100)
    axes = figure.subplots()
    labels = [s.threat.value.replace("-", " ") for s in scores]
    rows = range(len(scores))
    values = [s.score or 0 for s in scores]
    colours = [_GRADE_COLOUR.get(s.grade, "#bdbdbd") for s in scores]
    axes.barh(rows, values, color=colours)
    for row, s in zip(rows, scores, strict=True):
        text = "not assessed" if s.score is None else f"{s.score} ({s.grade})"
        axes.text(min(values[row], 100) + 1.5, row, text, va="center", fontsize=9)
    axes.set_yticks(list(rows), labels, fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(0, 118)
    axes.set_xticks([0, 20, 40, 60, 80, 100])
    axes.set_xlabel("score (100 = no findings)")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
