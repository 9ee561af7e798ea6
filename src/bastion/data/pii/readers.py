"""Reading a dataset in chunks of rows, as columns of strings, whatever its format.

Memory stays bounded by the chunk size: CSV through pandas' chunked parser, Parquet by
record batches, JSON Lines and text line by line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from bastion.errors import InputError

Chunk = tuple[dict[str, list[str]], int]  # columns, index of the chunk's first row
TEXT_COLUMN = "text"


def read_chunks(path: Path, rows: int) -> Iterator[Chunk]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path, rows)
    if suffix == ".parquet":
        return _parquet(path, rows)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path, rows)
    return _text(path, rows)


def _csv(path: Path, rows: int) -> Iterator[Chunk]:
    import pandas as pd

    try:
        reader = pd.read_csv(
            path, dtype=str, keep_default_na=False, chunksize=rows, encoding_errors="replace"
        )
        offset = 0
        for frame in reader:
            yield {str(c): frame[c].tolist() for c in frame.columns}, offset
            offset += len(frame)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({_first_line(exc)})") from None


def _parquet(path: Path, rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        offset = 0
        for batch in parquet.iter_batches(batch_size=rows):
            columns = {
                name: _as_strings(batch.column(i), pa)
                for i, name in enumerate(batch.schema.names)
            }
            yield columns, offset
            offset += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


def _as_strings(column, pa) -> list[str]:
    try:
        values = column.cast(pa.string()).to_pylist()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: their JSON text
        values = [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()]
    return ["" if v is None else v for v in values]


def _jsonl(path: Path, rows: int) -> Iterator[Chunk]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        offset = 0
        while lines := list(islice(handle, rows)):
            columns: dict[str, list[str]] = {}
            for index, line in enumerate(lines):
                record = _record(path, line, offset + index)
                for key, value in record.items():
                    column = columns.setdefault(key, [""] * len(lines))
                    column[index] = value if isinstance(value, str) else json.dumps(value)
            yield columns, offset
            offset += len(lines)


def _record(path: Path, line: str, index: int) -> dict:
    if not line.strip():
        return {}
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {index + 1} is not JSON ({exc.msg})") from None
    return record if isinstance(record, dict) else {TEXT_COLUMN: json.dumps(record)}


def _text(path: Path, rows: int) -> Iterator[Chunk]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        offset = 0
        while lines := list(islice(handle, rows)):
            yield {TEXT_COLUMN: [line.rstrip("\n") for line in lines]}, offset
            offset += len(lines)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
