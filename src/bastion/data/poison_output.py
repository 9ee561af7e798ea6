"""What `bastion data check` and the audit's poisoning check write: the suspicious rows as
CSV or JSON, and a histogram of each detector's scores with the flagged rows in red."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bastion.data.poison import CheckResult
from bastion.fsutil import atomic_write


def write_rows(rows: list[dict[str, Any]], path: str) -> None:
    if path.endswith(".json"):
        atomic_write(path, json.dumps(rows, indent=2, default=str) + "\n")
        return
    import csv
    import io

    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["row", "label", "score", "reasons"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


def score_plot(result: CheckResult, path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.scores)
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    flagged = np.zeros(result.n_rows, dtype=bool)
    flagged[result.flagged()] = True
    for axis, name in zip(axes[0], names, strict=True):
        scores = result.scores[name]
        bins = np.linspace(scores.min(), scores.max() + 1e-9, 40)
        axis.hist(scores[~flagged], bins=bins, color="tab:blue", label="kept")
        axis.hist(scores[flagged], bins=bins, color="tab:red", label="suspicious")
        axis.set_yscale("log")
        axis.set_title(name)
    axes[0][0].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.rsplit(".", 1)[-1] if "." in path else "png")
    plt.close(figure)
    atomic_write(path, buffer.getvalue())
