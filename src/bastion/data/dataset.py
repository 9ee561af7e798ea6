"""`--data PATH` the same way for every command: .npz/.npy arrays, CSV, Parquet, JSONL with a
label column, or an image folder with one sub-folder per class.

Labels are returned as class indices 0..k-1 with `classes` naming them, so every check can
use them directly; bad data is an InputError naming the file and what is wrong.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bastion.errors import InputError

PathLike = str | os.PathLike[str]
TABLE_SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSONL", ".json": "JSONL"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None  # class indices into `classes`
    classes: tuple[object, ...] = ()
    feature_names: tuple[str, ...] = ()
    keys: np.ndarray | None = None  # row ids from --key, when given
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.x)


def load_dataset(
    path: PathLike,
    *,
    label: str | None = None,
    key: str | None = None,
    x_key: str = "x",
    y_key: str = "y",
) -> Dataset:
    """Load features and (when present) labels from `path`."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such data file or folder")
    if source.is_dir():
        return _load_image_folder(source)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return _load_npz(source, x_key, y_key)
    if suffix == ".npy":
        return Dataset(x=_checked_features(source, _np_load(source)), y=None, source=source)
    if suffix in TABLE_SUFFIXES:
        return _load_table(source, label, key)
    raise InputError(
        f"{source}: unsupported data file; use .npz (x, y), .npy, .csv, .parquet, .jsonl "
        "or a folder of images with one sub-folder per class"
    )


def _np_load(source: Path) -> np.ndarray:
    try:
        return np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{source}: not a readable NumPy file ({exc})") from None


def _load_npz(source: Path, x_key: str, y_key: str) -> Dataset:
    try:
        with np.load(source, allow_pickle=False) as archive:
            names = set(archive.files)
            if x_key not in names:
                raise InputError(
                    f"{source}: no array {x_key!r} (has {', '.join(sorted(names)) or 'none'}); "
                    "name it with --x-key"
                )
            x = archive[x_key]
            raw_y = archive[y_key] if y_key in names else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: not a readable .npz archive ({exc})") from None
    x = _checked_features(source, x)
    if raw_y is None:
        return Dataset(x=x, y=None, source=source)
    y, classes = encode_labels(source, raw_y, len(x))
    return Dataset(x=x, y=y, classes=classes, source=source)


def _checked_features(source: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{source}: features must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(f"{source}: features must have shape (n, ...), got {x.shape}")
    return x


def encode_labels(source: Path, raw: np.ndarray, n: int) -> tuple[np.ndarray, tuple[object, ...]]:
    """Labels -> (indices, classes). Integer labels 0..k-1 stay as they are."""
    raw = np.asarray(raw).reshape(-1)
    if len(raw) != n:
        raise InputError(f"{source}: {n} rows of features but {len(raw)} labels")
    if raw.dtype.kind == "f":
        if np.isnan(raw).any():
            raise InputError(f"{source}: label of row {int(np.isnan(raw).argmax())} is missing")
        if not np.all(raw == np.round(raw)):
            raise InputError(f"{source}: labels must be classes, found fractional values")
        raw = raw.astype(np.int64)
    if raw.dtype.kind in "iub" and len(raw) and raw.min() >= 0:
        # Already class indices: a subset that lacks a class must keep its numbering.
        return raw.astype(np.int64), tuple(range(int(raw.max()) + 1))
    classes, indices = np.unique(raw, return_inverse=True)
    return indices.astype(np.int64), tuple(classes.tolist())


def _read_table(source: Path):  # -> pandas.DataFrame
    import pandas as pd

    kind = TABLE_SUFFIXES[source.suffix.lower()]
    try:
        if kind == "CSV":
            return pd.read_csv(source)
        if kind == "Parquet":
            return pd.read_parquet(source)
        return pd.read_json(source, lines=True)
    except (ValueError, OSError, UnicodeDecodeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: not a readable {kind} file ({first})") from None


def _load_table(source: Path, label: str | None, key: str | None) -> Dataset:
    import pandas as pd

    frame = _read_table(source)
    for role, column in (("label", label), ("key", key)):
        if column is not None and column not in frame.columns:
            columns = ", ".join(map(str, frame.columns))
            raise InputError(f"{source}: no {role} column {column!r} (columns: {columns})")
    keys = frame.pop(key).to_numpy() if key else None
    if label is not None:
        labels = frame.pop(label)
        if labels.isna().any():
            raise InputError(
                f"{source}: label of row {int(labels.isna().to_numpy().argmax())} is missing"
            )
        y, classes = encode_labels(source, labels.to_numpy(), len(frame))
    else:
        y, classes = None, ()
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise InputError(
            f"{source}: non-numeric feature column(s) {', '.join(text)}; encode them first "
            "or name the label with --label"
        )
    return Dataset(
        x=frame.to_numpy(dtype=np.float64),
        y=y,
        classes=classes,
        feature_names=tuple(str(c) for c in frame.columns),
        keys=keys,
        source=source,
    )


def _load_image_folder(source: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in source.iterdir() if p.is_dir())
    if not class_dirs:
        raise InputError(f"{source}: an image folder needs one sub-folder per class")
    images, labels = [], []
    for index, folder in enumerate(class_dirs):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"{file}: not a readable image ({exc})") from None
            if images and pixels.shape != images[0].shape:
                raise InputError(
                    f"{file}: image is {pixels.shape[1]}x{pixels.shape[0]} but earlier ones are "
                    f"{images[0].shape[1]}x{images[0].shape[0]}; resize them to one size"
                )
            images.append(pixels)
            labels.append(index)
    if not images:
        raise InputError(f"{source}: no images found in its class sub-folders")
    x = np.stack(images).transpose(0, 3, 1, 2)  # NCHW, as torch models expect
    return Dataset(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        classes=tuple(p.name for p in class_dirs),
        source=source,
    )
