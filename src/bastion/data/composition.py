"""What a dataset is made of, measured rather than described: rows, features, classes and
their balance, missing values per column. The datasheet and the ML-BOM both report these.

Tables (CSV, Parquet, JSONL) are measured as read, before any cleaning, so missing values
in any column, the label included, are counted. Arrays and image folders go through
`load_dataset`; their missing values are NaNs per feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bastion.data.dataset import TABLE_SUFFIXES, _read_table, load_dataset
from bastion.errors import InputError

# Arrays can have thousands of feature columns (pixels); only those with gaps are listed.
LISTED_COLUMNS = 200


@dataclass(frozen=True)
class ClassCount:
    label: str
    count: int
    share: float


@dataclass(frozen=True)
class Composition:
    path: str
    format: str
    rows: int
    features: int
    feature_shape: tuple[int, ...]
    label: str | None
    classes: tuple[ClassCount, ...] = ()
    missing: dict[str, int] = field(default_factory=dict)  # column -> missing cells (> 0 only)
    columns: int = 0  # columns checked for missing values

    @property
    def missing_total(self) -> int:
        return sum(self.missing.values())

    @property
    def imbalance_ratio(self) -> float | None:
        """Largest class over smallest; 1.0 is perfectly balanced."""
        counts = [c.count for c in self.classes if c.count > 0]
        return max(counts) / min(counts) if counts else None

    @property
    def balance_entropy(self) -> float | None:
        """Shannon entropy of the class shares over log(k): 1.0 balanced, towards 0 skewed."""
        shares = [c.share for c in self.classes if c.count > 0]
        if len(shares) < 2:
            return None
        return -sum(s * math.log(s) for s in shares) / math.log(len(shares))


def measure(path: str | Path, label: str | None = None) -> Composition:
    """Composition of the data at `path` (`label`: the class column of a table)."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such data file or folder")
    if source.is_file() and source.suffix.lower() in TABLE_SUFFIXES:
        return _measure_table(source, label)
    return _measure_arrays(source, label)


def _class_counts(values: list[object]) -> tuple[ClassCount, ...]:
    labels, counts = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
    total = int(counts.sum())
    ordered = sorted(zip(labels.tolist(), counts.tolist(), strict=True), key=_natural)
    return tuple(ClassCount(str(lab), int(n), n / total) for lab, n in ordered)


def _natural(item: tuple[str, int]) -> tuple[int, float | str]:
    """Numeric labels in numeric order (2 before 10), then text labels."""
    try:
        return (0, float(item[0]))
    except ValueError:
        return (1, item[0])


def _measure_table(source: Path, label: str | None) -> Composition:
    frame = _read_table(source)
    if label is not None and label not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise InputError(f"{source}: no label column {label!r} (columns: {columns})")
    missing = {str(c): int(n) for c, n in frame.isna().sum().items() if n}
    classes = _class_counts(frame[label].dropna().tolist()) if label else ()
    features = len(frame.columns) - (1 if label else 0)
    return Composition(
        path=str(source),
        format=TABLE_SUFFIXES[source.suffix.lower()],
        rows=len(frame),
        features=features,
        feature_shape=(features,),
        label=label,
        classes=classes,
        missing=missing,
        columns=len(frame.columns),
    )


def _array_label(source: Path, labelled: bool) -> str | None:
    if not labelled:
        return None
    return "sub-folder name" if source.is_dir() else "y"


def _measure_arrays(source: Path, label: str | None) -> Composition:
    data = load_dataset(source, label=label)
    flat = data.x.reshape(len(data.x), -1)
    missing: dict[str, int] = {}
    if np.issubdtype(flat.dtype, np.floating):
        gaps = np.isnan(flat).sum(axis=0)
        names = data.feature_names or tuple(f"x[{i}]" for i in range(flat.shape[1]))
        for i in np.flatnonzero(gaps)[:LISTED_COLUMNS]:
            missing[names[i]] = int(gaps[i])
    classes = (
        _class_counts([data.classes[i] for i in data.y]) if data.y is not None else ()
    )
    kind = "image folder" if source.is_dir() else source.suffix.lower().lstrip(".")
    return Composition(
        path=str(source),
        format=kind,
        rows=len(data.x),
        features=int(flat.shape[1]),
        feature_shape=tuple(int(d) for d in data.x.shape[1:]),
        label=label or _array_label(source, data.y is not None),
        classes=classes,
        missing=missing,
        columns=int(flat.shape[1]),
    )
