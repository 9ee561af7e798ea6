"""Datasets as a stream of row chunks in canonical bytes, for hashing in bounded memory.

A row's canonical bytes are its non-label values in column-name order, each escaped
(backslash and the unit separator 0x1f) and joined by 0x1f; a missing value is `\\N`.
Column order in the file therefore does not matter, and values are compared as the text the
file holds (CSV, JSONL) or Arrow's text of the stored value (Parquet). .npz rows are the raw
bytes of `x[i]` (dtype and shape are part of the schema); an image is its file's bytes.
The label travels beside the content, as text, so a relabelled row keeps its content hash.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bastion.data.dataset import IMAGE_SUFFIXES, TABLE_SUFFIXES
from bastion.errors import InputError, UsageError

SEPARATOR = "\x1f"
NULL = "\\N"
CSV_BLOCK = 4 << 20  # Arrow parses blocks on its threads and reads a few ahead: bounded
CHUNK_ROWS = 65536
BACKSLASH, UNIT_SEPARATOR = 0x5C, 0x1F


@dataclass
class RowChunk:
    """Canonical content of `len(offsets) - 1` rows: row i is data[offsets[i]:offsets[i+1]]."""

    data: memoryview | bytes
    offsets: np.ndarray
    labels: pa.Array | None  # one text per row, when the dataset has labels
    keys: pa.Array | None  # one text per row, when rows have an identity (--key, file names)


@dataclass(frozen=True)
class RowSource:
    path: Path
    schema: str  # what must match for two versions to be comparable row by row
    chunks: Iterator[RowChunk]
    # Where the --key column sits among a row's 0x1f-separated fields: its value is read from
    # the bytes of the few changed rows, instead of being carried for every row.
    key_field: int | None = None


def open_rows(
    path: str | os.PathLike[str], *, label: str | None = None, key: str | None = None
) -> RowSource:
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such data file or folder")
    suffix = source.suffix.lower()
    if key is not None and (source.is_dir() or suffix == ".npz"):
        raise UsageError(
            f"{source}: --key names a column of a CSV, Parquet or JSONL file; .npz rows and "
            "images have none (an image is keyed by its file name already)"
        )
    if source.is_dir():
        return _image_rows(source)
    if suffix == ".npz":
        return _npz_rows(source)
    kind = TABLE_SUFFIXES.get(suffix)
    if kind == "CSV":
        return _table_rows(source, _csv_batches(source), _csv_header(source), label, key)
    if kind == "Parquet":
        names, batches = _parquet_batches(source)
        return _table_rows(source, batches, names, label, key)
    if kind == "JSONL":
        names, batches = _jsonl_batches(source)
        return _table_rows(source, batches, names, label, key)
    raise InputError(
        f"{source}: unsupported data file for diff; use .csv, .parquet, .jsonl, .npz "
        "or a folder of images with one sub-folder per class"
    )


def _csv_header(source: Path) -> list[str]:
    try:
        with open(source, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{source}: not a readable CSV file ({exc})") from None
    if not header:
        raise InputError(f"{source}: empty CSV file (no header line)")
    if len(set(header)) != len(header):
        raise InputError(f"{source}: CSV header has duplicate column names")
    return header


def _csv_batches(source: Path) -> Iterator[pa.RecordBatch]:
    from pyarrow import csv as pacsv

    names = _csv_header(source)
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK, use_threads=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from reader
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source}: not a readable CSV file ({_first_line(exc)})") from None


def _parquet_batches(source: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source}: not a readable Parquet file ({_first_line(exc)})") from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from handle.iter_batches(batch_size=CHUNK_ROWS)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{source}: corrupt Parquet file ({_first_line(exc)})") from None

    return list(handle.schema_arrow.names), batches()


def _jsonl_batches(source: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    import pandas as pd

    def frames() -> Iterator[pd.DataFrame]:
        try:
            reader = pd.read_json(source, lines=True, chunksize=CHUNK_ROWS, dtype=False)
            with reader:
                yield from reader
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: not a readable JSONL file ({_first_line(exc)})") from None

    stream = frames()
    first = next(stream, None)
    if first is None:
        raise InputError(f"{source}: empty JSONL file")
    names = [str(c) for c in first.columns]

    def batches() -> Iterator[pa.RecordBatch]:
        for frame in itertools.chain([first], stream):
            frame = frame.reindex(columns=names)  # a key missing from a line is a null value
            try:
                yield pa.RecordBatch.from_pandas(frame.astype(object), preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(f"{source}: mixed value types ({_first_line(exc)})") from None

    return names, batches()


def _table_rows(
    source: Path,
    batches: Iterator[pa.RecordBatch],
    names: list[str],
    label: str | None,
    key: str | None,
) -> RowSource:
    for role, column in (("label", label), ("key", key)):
        if column is not None and column not in names:
            raise InputError(f"{source}: no {role} column {column!r} (columns: {', '.join(names)})")
    content = sorted(n for n in names if n != label)
    schema = "table:" + SEPARATOR.join(content) + f"|label={label or ''}"
    key_field = content.index(key) if key is not None and key != label else None
    carried = key if key_field is None else None  # a key that is the label travels as keys

    def chunks() -> Iterator[RowChunk]:
        seen = 0
        for batch in batches:
            yield _table_chunk(source, batch, content, label, carried, seen)
            seen += batch.num_rows

    return RowSource(source, schema, chunks(), key_field)


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"cannot compare values of type {column.type}") from None


def _escaped(column: pa.Array) -> pa.Array:
    """Backslash and the separator escaped, for the columns that hold either (the scan may
    cover bytes past this slice; escaping then changes nothing)."""
    if _holds(column, BACKSLASH):
        column = pc.replace_substring(column, "\\", "\\\\")
    if _holds(column, UNIT_SEPARATOR):
        column = pc.replace_substring(column, SEPARATOR, "\\u001f")
    return column


def _text_column(column: pa.Array) -> pa.Array:
    return _escaped(_as_text(column))


def _holds(column: pa.Array, byte: int) -> bool:
    """Whether any value of a string column contains `byte`: one native scan of its data."""
    data = column.buffers()[2]
    return data is not None and bool(np.any(np.frombuffer(data, np.uint8) == byte))


def _join(columns: list[pa.Array]) -> pa.Array:
    # without missing values Arrow joins faster when not asked to replace them
    nulls = {"null_handling": "replace", "null_replacement": NULL}
    joined = pc.binary_join_element_wise(
        *columns, SEPARATOR, **(nulls if any(c.null_count for c in columns) else {})
    )
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _needs_escaping(joined: pa.Array, fields: int) -> bool:
    """Whether some value holds a backslash or the separator, judged on the joined rows in
    two scans: no backslash at all, and exactly `fields - 1` separators per row, mean no."""
    _validity, offsets, data = joined.buffers()
    if data is None or len(joined) == 0:
        return False
    bounds = np.frombuffer(offsets, np.int32)[[joined.offset, joined.offset + len(joined)]]
    raw = np.frombuffer(data, np.uint8)[bounds[0] : bounds[1]]
    separators = np.count_nonzero(raw == UNIT_SEPARATOR)
    return bool(np.any(raw == BACKSLASH)) or separators != len(joined) * (fields - 1)


def _table_chunk(
    source: Path,
    batch: pa.RecordBatch,
    content: list[str],
    label: str | None,
    key: str | None,
    seen: int,
) -> RowChunk:
    try:
        columns = [_as_text(batch.column(name)) for name in content]
    except InputError as exc:
        raise InputError(f"{source}: {exc.message}") from None
    joined = _join(columns)
    if _needs_escaping(joined, len(columns)):  # rare: escape the columns that need it
        joined = _join([_escaped(column) for column in columns])
    labels = _labels(source, batch.column(label), seen) if label else None
    keys = _text_column(batch.column(key)) if key else None
    return _binary_chunk(joined, labels, keys)


def _labels(source: Path, column: pa.Array, seen: int) -> pa.Array:
    text = pc.cast(column, pa.string()) if not pa.types.is_string(column.type) else column
    missing = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    if pc.any(missing).as_py():
        row = seen + int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{source}: label of row {row} is missing")
    if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
        row = seen + int(np.flatnonzero(pc.is_nan(column).to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{source}: label of row {row} is missing (NaN)")
    return text


def _binary_chunk(joined: pa.Array, labels: pa.Array | None, keys: pa.Array | None) -> RowChunk:
    """Zero-copy view of an Arrow string array's value buffer and offsets."""
    _validity, offsets_buffer, data_buffer = joined.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        joined.offset : joined.offset + len(joined) + 1
    ]
    data = memoryview(data_buffer) if data_buffer is not None else b""
    return RowChunk(data, offsets.astype(np.int64), labels, keys)


def _npz_rows(source: Path) -> RowSource:
    import zipfile

    try:
        with np.load(source, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise InputError(f"{source}: no array 'x' (has {', '.join(archive.files)})")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: not a readable .npz archive ({exc})") from None
    if x.ndim < 1 or (y is not None and len(y) != len(x)):
        raise InputError(f"{source}: {len(x)} rows of features but {len(y)} labels")
    if y is not None and y.dtype.kind == "f" and np.isnan(y).any():
        raise InputError(f"{source}: label of row {int(np.isnan(y).argmax())} is missing (NaN)")
    schema = f"npz:{x.dtype.str}:{x.shape[1:]}|label={'y' if y is not None else ''}"

    def chunks() -> Iterator[RowChunk]:
        width = int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize
        for start in range(0, len(x), CHUNK_ROWS):
            part = np.ascontiguousarray(x[start : start + CHUNK_ROWS])
            offsets = np.arange(len(part) + 1, dtype=np.int64) * width
            labels = (
                pc.cast(pa.array(y[start : start + CHUNK_ROWS]), pa.string())
                if y is not None
                else None
            )
            yield RowChunk(memoryview(part.reshape(-1).view(np.uint8)), offsets, labels, None)

    return RowSource(source, schema, chunks())


def _image_rows(source: Path) -> RowSource:
    """One row per image file: its bytes, its class folder as label, its name as key, so a
    file moved to another class is a label change and an edited file is a modification."""
    class_dirs = sorted(p for p in source.iterdir() if p.is_dir())
    if not class_dirs:
        raise InputError(f"{source}: an image folder needs one sub-folder per class")
    files = [
        (folder.name, file)
        for folder in class_dirs
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES
    ]

    def chunks() -> Iterator[RowChunk]:
        for start in range(0, len(files), 1024):
            part = files[start : start + 1024]
            blobs = [_read_image_bytes(file) for _, file in part]
            offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
            labels = pa.array([name for name, _ in part], pa.string())
            keys = pa.array([file.relative_to(source / name).as_posix() for name, file in part])
            yield RowChunk(b"".join(blobs), offsets, labels, keys)

    return RowSource(source, "images|label=folder", chunks())


def _read_image_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({exc.strerror})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
