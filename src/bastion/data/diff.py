"""What changed between two versions of a dataset, row by row, in bounded memory.

Both versions are read at once on two threads. Each row's canonical bytes (see `rowstream`)
get a 64-bit id computed for a whole chunk at once in numpy; the label is kept beside it as
a code. Rows (record + bytes) go to 256 buckets by the id's first byte, held in memory up to
SPILL_BYTES and spilled beyond, one run of files per flush, so memory stays bounded whatever
the size of the data. Each bucket splits into 256 leaves by the id's second byte: 65536
leaves. A leaf's digest is BLAKE3 over its rows in canonical order (by id, then label hash,
then bytes): the rows' lengths and label hashes, then their bytes, so it commits to the
exact multiset of rows whatever their order. Each bucket's 256 leaf digests hash into one node,
and a binary SHA-256 Merkle tree over the 256 bucket nodes gives the dataset root, a digest
the ledger records as is. Two equal roots mean equal datasets (O(1)); otherwise descending
where hashes differ finds each changed bucket in O(log 256) steps and its changed leaves
among its 256.

The ids are not cryptographic and need not be: they only bucket and order rows. Rows of
changed leaves are matched by (id, label) and every match is confirmed byte for byte, so a
crafted id collision cannot hide an edit (the bucket is then compared by BLAKE3 of each
row); only unmatched rows are hashed one by one.

Pairing rule for "modified": a removed and an added row are one modified row when they
share the `--key` value; without a key, when they share the same content (all non-label
values) and differ only in the label. Everything else is added or removed. Image folders
use the file name under its class folder as the key.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from blake3 import blake3

from bastion.data.rowstream import SEPARATOR, RowChunk, RowSource, open_rows
from bastion.data.rules import CLASS_SHIFT, LABELS_CHANGED, ROWS_CHANGED, SCHEMA_CHANGED
from bastion.errors import InputError
from bastion.findings import Finding, Location

BUCKETS = 256  # spill files, by the first byte of the row id
LEAVES_PER_BUCKET = 256  # Merkle leaves per file, by the second byte: 65536 leaves in all
HASH_BYTES = 16
FAST_WIDTH = 512  # rows up to this many bytes get the vectorised id; longer ones BLAKE3
RECORD = np.dtype(
    [("id", "<u8"), ("label", "<i4"), ("length", "<i4"), ("key", "<u8"), ("row", "<i8")]
)
CHANGED = np.dtype([("c", f"V{HASH_BYTES}"), ("label", "<i4"), ("key", "<u8"), ("row", "<i8")])
KINDS = ("rec", "bin")  # a spill run's two files: records, then the rows' bytes
SPILL_BYTES = 64 << 20  # rows held in memory (per dataset) before buckets go to disk
EMPTY_LEAF = blake3(b"").digest()
NO_LABEL = -1
FIELD_SEPARATOR = SEPARATOR.encode()
ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
EXAMPLES = 20


@dataclass(frozen=True)
class DiffPolicy:
    """Thresholds above which a change becomes a finding (fractions of the old row count)."""

    max_changed: float = 0.05
    max_label_changes: float = 0.001
    max_class_shift: float = 0.02


@dataclass
class DatasetDigest:
    path: str
    rows: int
    root: str  # "sha256:<hex>" over the schema and the bucket Merkle tree
    schema: str
    class_counts: dict[str, int]
    leaves: list[bytes] = field(repr=False, default_factory=list)  # 65536 leaf digests
    tree: list[list[bytes]] = field(repr=False, default_factory=list)  # over the 256 buckets
    labels: list[str] = field(repr=False, default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "root": self.root,
            "classes": self.class_counts,
        }


@dataclass
class DiffResult:
    old: DatasetDigest
    new: DatasetDigest
    added: np.ndarray  # new row numbers
    removed: np.ndarray  # old row numbers
    modified: list[tuple[int, int, str | None, str | None]]  # old row, new row, old/new label
    leaves_compared: int

    @property
    def identical(self) -> bool:
        return self.old.root == self.new.root

    @property
    def label_changes(self) -> Counter[tuple[str, str]]:
        return Counter((a, b) for _, _, a, b in self.modified if a is not None and a != b)

    def class_shift(self) -> dict[str, dict[str, float]]:
        """Per class: rows and share in each version, and the change of share."""
        classes = sorted(set(self.old.class_counts) | set(self.new.class_counts))
        shift = {}
        for name in classes:
            old_n, new_n = self.old.class_counts.get(name, 0), self.new.class_counts.get(name, 0)
            old_share = old_n / self.old.rows if self.old.rows else 0.0
            new_share = new_n / self.new.rows if self.new.rows else 0.0
            shift[name] = {
                "old": old_n,
                "new": new_n,
                "share_change": round(new_share - old_share, 6),
            }
        return shift

    def metrics(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "old_rows": self.old.rows,
            "new_rows": self.new.rows,
            "added": len(self.added),
            "removed": len(self.removed),
            "modified": len(self.modified),
            "label_changes": sum(self.label_changes.values()),
            "leaves_compared": self.leaves_compared,
        }

    def details(self) -> dict[str, Any]:
        """JSON-safe detail: per-class shift, label changes and examples of each change."""
        return {
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "class_balance": self.class_shift(),
            "label_changes": [
                {"from": a, "to": b, "rows": n} for (a, b), n in sorted(self.label_changes.items())
            ],
            "added_rows": self.added[:EXAMPLES].tolist(),
            "removed_rows": self.removed[:EXAMPLES].tolist(),
            "modified_rows": [
                {"old_row": o, "new_row": n, "old_label": a, "new_label": b}
                for o, n, a, b in self.modified[:EXAMPLES]
            ],
        }


def diff_datasets(
    old: str | os.PathLike[str],
    new: str | os.PathLike[str],
    *,
    label: str | None = None,
    key: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> DiffResult:
    """Compare two dataset versions; spill space comes from `workdir` (default: system temp).
    Both versions are bucketed at the same time on two threads (parsing, hashing and sorting
    run in Arrow and numpy, which release the GIL); then each bucket of both is read once,
    to digest its leaves and, where leaves differ, to find the changed rows."""
    with tempfile.TemporaryDirectory(prefix="bastion-diff-", dir=workdir) as spill:
        sources = (open_rows(old, label=label, key=key), open_rows(new, label=label, key=key))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bastion-diff") as pool:
            futures = [
                pool.submit(spill_rows, rows, Path(spill) / side)
                for rows, side in zip(sources, ("old", "new"), strict=True)
            ]
            before, after = (future.result() for future in futures)
            with before.spill.opened(), after.spill.opened():
                compared = list(
                    pool.map(lambda b: _compare_bucket(before, after, b), range(BUCKETS))
                )
    old_digest = before.digest([leaf for old_leaves, *_ in compared for leaf in old_leaves])
    new_digest = after.digest([leaf for _, new_leaves, *_ in compared for leaf in new_leaves])
    changed = changed_leaves(old_digest, new_digest)
    removed = np.concatenate([gone for *_, gone, _ in compared])
    added = np.concatenate([came for *_, came in compared])
    removed_rows, added_rows, modified = _pair(removed, added, old_digest, new_digest, key)
    return DiffResult(old_digest, new_digest, added_rows, removed_rows, modified, len(changed))


class Spill:
    """Rows by bucket: held in memory, and written out as one run (a records file and a
    bytes file, bucket after bucket) each time they pass `limit` bytes, so small datasets
    never touch the disk and large ones stay within bounded memory."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit, self.held = folder, limit, 0
        self.parts: list[list[tuple[np.ndarray, memoryview]]] = [[] for _ in range(BUCKETS)]
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # per run: byte bounds by bucket
        self.handles: list[tuple[int, int]] = []

    def add(self, bucket: int, records: np.ndarray, data: memoryview) -> None:
        self.parts[bucket].append((records, data))
        self.held += records.nbytes + len(data)
        if self.held > self.limit:
            self.flush()

    def flush(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        run = len(self.runs)
        record_bounds = np.zeros(BUCKETS + 1, np.int64)
        byte_bounds = np.zeros(BUCKETS + 1, np.int64)
        with (
            open(self.folder / f"{run:05d}.rec", "wb") as records_file,
            open(self.folder / f"{run:05d}.bin", "wb") as bytes_file,
        ):
            for bucket, parts in enumerate(self.parts):
                for records, data in parts:
                    records_file.write(records)
                    bytes_file.write(data)
                record_bounds[bucket + 1] = record_bounds[bucket] + sum(r.nbytes for r, _ in parts)
                byte_bounds[bucket + 1] = byte_bounds[bucket] + sum(len(d) for _, d in parts)
                parts.clear()
        self.runs.append((record_bounds, byte_bounds))
        self.held = 0

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Keep every run open while buckets are read (os.preadv: safe from several threads)."""
        for run in range(len(self.runs)):
            self.handles.append(
                tuple(os.open(self.folder / f"{run:05d}.{kind}", os.O_RDONLY) for kind in KINDS)
            )
        try:
            yield
        finally:
            for handle in self.handles:
                for fd in handle:
                    os.close(fd)
            self.handles.clear()

    def read(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """The bucket's records and bytes: each run's piece read straight into place."""
        records = self._gather(0, bucket, [r.view(np.uint8) for r, _ in self.parts[bucket]])
        data = self._gather(1, bucket, [np.frombuffer(d, np.uint8) for _, d in self.parts[bucket]])
        return records.view(RECORD), data

    def _gather(self, kind: int, bucket: int, held: list[np.ndarray]) -> np.ndarray:
        spans = [(int(b[kind][bucket]), int(b[kind][bucket + 1])) for b in self.runs]
        out = np.empty(sum(hi - lo for lo, hi in spans) + sum(len(h) for h in held), np.uint8)
        at = 0
        for (lo, hi), handle in zip(spans, self.handles, strict=True):
            if hi > lo and os.preadv(handle[kind], [out[at : at + hi - lo]], lo) != hi - lo:
                raise OSError(f"short read from spill file in {self.folder}")
            at += hi - lo
        for piece in held:
            out[at : at + len(piece)] = piece
            at += len(piece)
        return out


@dataclass
class Spilled:
    """One version bucketed: its rows on disk (or in memory), label names and counts."""

    path: str
    schema: str
    rows: int
    spill: Spill
    labels: list[str]
    counts: np.ndarray
    key_field: int | None

    def __post_init__(self) -> None:
        self.label_ids = _label_ids(self.labels)

    def bucket(self, bucket: int) -> Bucket:
        return Bucket.sorted(*self.spill.read(bucket), self.label_ids, self.key_field)

    def digest(self, leaves: list[bytes]) -> DatasetDigest:
        tree = merkle_levels(_bucket_nodes(leaves))
        root = sha256(b"bastion-dataset-v3\0" + self.schema.encode() + b"\0" + tree[-1][0])
        return DatasetDigest(
            path=self.path,
            rows=self.rows,
            root="sha256:" + root.hexdigest(),
            schema=self.schema,
            class_counts={self.labels[c]: int(n) for c, n in enumerate(self.counts.tolist()) if n},
            leaves=leaves,
            tree=tree,
            labels=self.labels,
        )


def spill_rows(rows: RowSource, spill_folder: Path) -> Spilled:
    """Bucket every row (record + bytes), spilling to `spill_folder` when large."""
    spill = Spill(spill_folder, SPILL_BYTES)
    labels: dict[str, int] = {}
    counts = np.zeros(0, dtype=np.int64)
    total = 0
    for chunk in rows.chunks:
        records, blob = _records(chunk, labels, total)
        labelled = records["label"][records["label"] != NO_LABEL]
        found = np.bincount(labelled, minlength=len(labels))
        counts = np.pad(counts, (0, len(found) - len(counts))) + found
        _spill(records, blob, spill)
        total += len(records)
    return Spilled(str(rows.path), rows.schema, total, spill, list(labels), counts, rows.key_field)


def digest_dataset(rows: RowSource, spill_folder: Path) -> DatasetDigest:
    """One version's digest: its rows bucketed, then each bucket's 256 leaf digests."""
    spilled = spill_rows(rows, spill_folder)
    with spilled.spill.opened():
        return spilled.digest([leaf for b in range(BUCKETS) for leaf in spilled.bucket(b).leaves()])


def _binary(data: Any, offsets: np.ndarray) -> pa.Array:
    """Rows as an Arrow large_binary array over the chunk's bytes (zero-copy where it can)."""
    base = int(offsets[0])
    body = memoryview(data)[base : int(offsets[-1])]
    return pa.Array.from_buffers(
        pa.large_binary(),
        len(offsets) - 1,
        [None, pa.py_buffer((offsets - base).astype(np.int64)), pa.py_buffer(body)],
    )


def _offsets(rows: pa.Array) -> np.ndarray:
    """Value offsets of a binary or string array (large or not), as int64."""
    _, offsets_buffer, _ = rows.buffers()
    large = pa.types.is_large_binary(rows.type) or pa.types.is_large_string(rows.type)
    offsets = np.frombuffer(offsets_buffer, np.int64 if large else np.int32)
    return offsets[rows.offset : rows.offset + len(rows) + 1].astype(np.int64, copy=False)


def _values(rows: pa.Array) -> np.ndarray:
    data = rows.buffers()[2]
    return np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)


def _fmix(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit affects every output bit (in place)."""
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xFF51AFD7ED558CCD)
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xC4CEB9FE1A85EC53)
    values ^= values >> np.uint64(33)
    return values


def row_ids(rows: pa.Array) -> np.ndarray:
    """A 64-bit id per row of a binary or string array, computed for all rows at once: rows up
    to FAST_WIDTH bytes are read as little-endian 8-byte words (the last one zero-padded),
    group by group of equal word count, and mixed word by word; longer rows take BLAKE3's
    first 8 bytes. Ids only bucket and order rows: integrity rests on the BLAKE3 leaf
    digests over the bytes, and rows matched by id are confirmed byte for byte."""
    n = len(rows)
    ids = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return ids
    offsets, raw = _offsets(rows), _values(rows)
    lengths = np.diff(offsets)
    short = lengths <= FAST_WIDTH
    for row in np.flatnonzero(~short).tolist():
        digest = blake3(raw[offsets[row] : offsets[row + 1]]).digest(8)
        ids[row] = np.frombuffer(digest, np.uint64)[0]
    if not short.any():
        return ids
    padded = np.concatenate([raw[offsets[0] : offsets[-1]], np.zeros(FAST_WIDTH + 8, np.uint8)])
    starts = offsets[:-1] - offsets[0]
    longest = FAST_WIDTH // 8
    words = np.where(short, (lengths + 7) // 8, longest + 1).astype(np.uint8)  # long: apart
    order = np.argsort(words, kind="stable")  # a radix sort: rows grouped by word count
    bounds = np.searchsorted(words[order], np.arange(longest + 2))
    for count in range(longest + 1):
        group = order[bounds[count] : bounds[count + 1]]
        if len(group):
            ids[group] = _mix_words(padded, starts[group], lengths[group], count)
    return ids


def _mix_words(
    padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray, count: int
) -> np.ndarray:
    """Ids of rows that all span `count` 8-byte words; only the last word needs masking (its
    window runs into the next row)."""
    mixed = lengths.astype(np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)
    if count:
        matrix = np.lib.stride_tricks.sliding_window_view(padded, 8 * count)[starts]
        words = matrix.view("<u8")
        tail = (lengths - 8 * (count - 1)).astype(np.uint64) * np.uint64(8)  # 8..64 bits
        last = words[:, count - 1] & (ALL_ONES >> (np.uint64(64) - tail))
        for column in range(count):
            mixed ^= words[:, column] if column < count - 1 else last
            mixed *= np.uint64(0x87C37B91114253D5)
            mixed ^= mixed >> np.uint64(29)
    return _fmix(mixed)


def _records(
    chunk: RowChunk, labels: dict[str, int], first_row: int
) -> tuple[np.ndarray, pa.Array]:
    rows = _binary(chunk.data, chunk.offsets)
    records = np.empty(len(rows), dtype=RECORD)
    records["id"] = row_ids(rows)
    records["label"] = NO_LABEL if chunk.labels is None else _label_codes(chunk.labels, labels)
    records["key"] = _key_ids(chunk.keys) if chunk.keys is not None else 0
    records["row"] = np.arange(first_row, first_row + len(rows))
    lengths = np.diff(chunk.offsets)
    if len(lengths) and lengths.max() > np.iinfo(np.int32).max:
        row = first_row + int(lengths.argmax())
        raise InputError(f"row {row} is over 2 GiB: too large to compare as one row")
    records["length"] = lengths
    return records, rows


def _label_codes(texts: pa.Array, codes: dict[str, int]) -> np.ndarray:
    """Per-dataset label codes (first seen, first coded), without a Python loop per row."""
    encoded = pc.dictionary_encode(texts)
    lookup = np.array(
        [codes.setdefault(text, len(codes)) for text in encoded.dictionary.to_pylist()],
        dtype=np.int32,
    )
    return lookup[encoded.indices.to_numpy(zero_copy_only=False)]


def _key_ids(keys: pa.Array) -> np.ndarray:
    """64-bit ids for pairing removed and added rows by key; integrity never rests on them
    (the row bytes include the key column)."""
    return row_ids(keys)


def _label_ids(names: list[str]) -> np.ndarray:
    """(k + 1, 2) uint64: BLAKE3 of each label's text; the last row (code -1) is no label, so
    a leaf names labels by text, not by a code that depends on the order they were seen."""
    table = np.zeros((len(names) + 1, 2), dtype=np.uint64)
    for code, text in enumerate(names):
        table[code] = np.frombuffer(blake3(text.encode()).digest(HASH_BYTES), np.uint64)
    return table


def _spill(records: np.ndarray, rows: pa.Array, spill: Spill) -> None:
    buckets = (records["id"] >> np.uint64(56)).astype(np.uint8)
    order = np.argsort(buckets, kind="stable")  # a radix sort for 8-bit keys
    bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
    ordered = _gather(records, order)
    taken = pc.take(rows, pa.array(order))
    offsets = _offsets(taken)
    data = memoryview(_values(taken))
    for b in np.flatnonzero(np.diff(bounds)).tolist():
        lo, hi = bounds[b], bounds[b + 1]
        spill.add(b, ordered[lo:hi], data[offsets[lo] : offsets[hi]])  # a view, no copy


def _gather(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`table[indices]` for rows of a structured or 2-D array, moved as opaque bytes (many
    times faster than numpy's field-by-field gather)."""
    width = table.dtype.itemsize * (table.shape[1] if table.ndim == 2 else 1)
    rows = np.ascontiguousarray(table).view(f"V{width}").reshape(-1)
    return np.take(rows, indices).view(table.dtype).reshape(-1, *table.shape[1:])


def _leaf_of(ids: np.ndarray) -> np.ndarray:
    return ((ids >> np.uint64(48)) & np.uint64(0xFF)).astype(np.int64)


def _row_offsets(records: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(records["length"], out=offsets[1:])
    return offsets


@dataclass
class Bucket:
    """One bucket of one version in canonical order: by row id, and where ids are shared
    (duplicates, or a collision) by label hash and then by the bytes, so that the order
    depends only on the multiset of rows. Only what the leaves need is gathered in that
    order; the records stay as read, reached through `order`."""

    records: np.ndarray  # as read from the spill
    order: np.ndarray  # canonical position -> record
    ids: np.ndarray  # the rest in canonical order
    lengths: np.ndarray
    labels: np.ndarray  # (n, 2) uint64 label hashes
    rows: pa.Array  # large_binary, the rows' bytes
    key_field: int | None  # see RowSource.key_field

    @classmethod
    def sorted(
        cls,
        records: np.ndarray,
        data: np.ndarray,
        label_ids: np.ndarray,
        key_field: int | None = None,
    ) -> Bucket:
        rows = _binary(data, _row_offsets(records))
        ids = records["id"]
        order = np.argsort(ids)
        if len(ids) > 1 and np.any(ids[order][1:] == ids[order][:-1]):
            labels = _gather(label_ids, records["label"])
            table = pa.table({"id": ids, "l0": labels[:, 0], "l1": labels[:, 1], "bytes": rows})
            keys = [(name, "ascending") for name in ("id", "l0", "l1", "bytes")]
            order = pc.sort_indices(table, sort_keys=keys).to_numpy()
        return cls(
            records,
            order,
            ids[order],
            records["length"][order],
            _gather(label_ids, records["label"][order]),
            pc.take(rows, pa.array(order)),
            key_field,
        )

    def leaves(self) -> list[bytes]:
        """BLAKE3 of each leaf: its rows' heads (length, label hash: 20 bytes each), then
        their bytes, in canonical order, so equal multisets of rows give equal leaves (the
        lengths delimit the rows). Rows sort by leaf, the id's second byte."""
        bounds = np.searchsorted(_leaf_of(self.ids), np.arange(LEAVES_PER_BUCKET + 1))
        lengths = self.lengths.astype("<u4").view(np.uint8).reshape(-1, 4)
        heads = memoryview(np.hstack([lengths, self.labels.view(np.uint8).reshape(-1, 16)]))
        body = memoryview(_values(self.rows))
        rows, edges = bounds.tolist(), _offsets(self.rows)[bounds].tolist()
        digests = [EMPTY_LEAF] * LEAVES_PER_BUCKET
        for leaf in range(LEAVES_PER_BUCKET):
            if rows[leaf] != rows[leaf + 1]:
                hasher = blake3(heads[rows[leaf] : rows[leaf + 1]])
                hasher.update(body[edges[leaf] : edges[leaf + 1]])
                digests[leaf] = hasher.digest()
        return digests

    def only(self, leaves: list[int]) -> Bucket:
        """The rows of the given leaves."""
        picked = np.flatnonzero(np.isin(_leaf_of(self.ids), leaves))
        return Bucket(
            self.records,
            self.order[picked],
            self.ids[picked],
            self.lengths[picked],
            self.labels[picked],
            pc.take(self.rows, pa.array(picked)),
            self.key_field,
        )

    def entries(self, content: np.ndarray, width: int) -> np.ndarray:
        """(n, width + 16) bytes per row: `content` (id or hash), then the label hash."""
        labels = np.ascontiguousarray(self.labels).view(np.uint8).reshape(-1, 2 * 8)
        return np.hstack([content.reshape(len(self.ids), width), labels])

    def entries_of(self, indices: np.ndarray) -> np.ndarray:
        """(id, label hash) entries of the given rows, for the multiset difference."""
        ids = np.ascontiguousarray(self.ids[indices]).view(np.uint8).reshape(-1, 8)
        labels = np.ascontiguousarray(self.labels[indices]).view(np.uint8).reshape(-1, 16)
        return np.hstack([ids, labels])

    def by_content(self) -> np.ndarray:
        hashes = self.content_hashes(np.arange(len(self.ids)))
        return self.entries(np.frombuffer(hashes, np.uint8), HASH_BYTES)

    def content_hashes(self, indices: np.ndarray) -> bytes:
        """BLAKE3 of the rows' bytes, 16 bytes each."""
        offsets, body = _offsets(self.rows), memoryview(_values(self.rows))
        spans = zip(offsets[indices].tolist(), offsets[indices + 1].tolist(), strict=True)
        return b"".join(blake3(body[a:b]).digest(HASH_BYTES) for a, b in spans)

    def changed(self, indices: np.ndarray) -> np.ndarray:
        """CHANGED rows for `indices`, with BLAKE3 of their bytes as content hash."""
        rows = np.empty(len(indices), dtype=CHANGED)
        rows["c"] = np.frombuffer(self.content_hashes(indices), dtype=f"V{HASH_BYTES}")
        picked = _gather(self.records, self.order[indices])
        for name in ("label", "key", "row"):
            rows[name] = picked[name]
        if self.key_field is not None:
            rows["key"] = self.key_ids(indices)
        return rows

    def key_ids(self, indices: np.ndarray) -> np.ndarray:
        """64-bit ids of the --key values of the given rows, read from their bytes (fields
        are escaped, so splitting at the separator is exact)."""
        offsets, body = _offsets(self.rows), memoryview(_values(self.rows))
        spans = zip(offsets[indices].tolist(), offsets[indices + 1].tolist(), strict=True)
        values = [bytes(body[a:b]).split(FIELD_SEPARATOR)[self.key_field] for a, b in spans]
        return _key_ids(pa.array(values, pa.large_binary()))


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """RFC 9162-style domain separation (0x00 leaves, 0x01 nodes); `leaves` is a power of 2."""
    level = [sha256(b"\0" + leaf).digest() for leaf in leaves]
    levels = [level]
    while len(level) > 1:
        level = [sha256(b"\1" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def _bucket_nodes(leaves: list[bytes]) -> list[bytes]:
    """The tree's bottom level: one node per bucket over its 256 leaf digests (a 256-ary
    level under the binary tree, so the tree costs 256 nodes, not 65536)."""
    return [
        sha256(
            b"\2" + b"".join(leaves[b * LEAVES_PER_BUCKET : (b + 1) * LEAVES_PER_BUCKET])
        ).digest()
        for b in range(BUCKETS)
    ]


def changed_nodes(old: list[list[bytes]], new: list[list[bytes]]) -> list[int]:
    """Bottom nodes whose hashes differ, found by descending only into differing subtrees
    of two trees given as levels (bottom first, root last)."""
    frontier = [0]
    for depth in range(len(old) - 1, 0, -1):
        frontier = [
            child
            for node in frontier
            if old[depth][node] != new[depth][node]
            for child in (2 * node, 2 * node + 1)
        ]
    return [node for node in frontier if old[0][node] != new[0][node]]


def changed_leaves(old: DatasetDigest, new: DatasetDigest) -> list[int]:
    """Changed buckets by tree descent, then the changed leaves inside each."""
    return [
        leaf
        for bucket in changed_nodes(old.tree, new.tree)
        for leaf in range(bucket * LEAVES_PER_BUCKET, (bucket + 1) * LEAVES_PER_BUCKET)
        if old.leaves[leaf] != new.leaves[leaf]
    ]


def _compare_bucket(
    old: Spilled, new: Spilled, bucket: int
) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray]:
    """Both versions' leaf digests of one bucket, and the removed and added rows of the
    leaves that differ. Rows are matched by (id, label) and every match is confirmed by
    comparing the bytes; where an id collision makes a match false, the leaves are compared
    by BLAKE3 of every row instead. Only unmatched rows are hashed."""
    before, after = old.bucket(bucket), new.bucket(bucket)
    old_leaves, new_leaves = before.leaves(), after.leaves()
    differ = [leaf for leaf in range(LEAVES_PER_BUCKET) if old_leaves[leaf] != new_leaves[leaf]]
    if not differ:
        empty = np.empty(0, dtype=CHANGED)
        return old_leaves, new_leaves, empty, empty
    if len(differ) < LEAVES_PER_BUCKET // 2:  # else matching the whole bucket is cheaper
        before, after = before.only(differ), after.only(differ)
    gone, came, pairs = _match_by_id(before, after)
    if not _same_bytes(before, after, pairs):
        gone, came, _ = _multiset_difference(before.by_content(), after.by_content())
    return old_leaves, new_leaves, before.changed(gone), after.changed(came)


def _match_by_id(
    old: Bucket, new: Bucket
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Unmatched old rows, unmatched new rows and matched pairs, by (id, label). Both sides
    are sorted by id, so rows whose id is unique on both sides pair by binary search; rows
    of ids repeated on either side go through the general multiset difference."""
    old_ids, new_ids = old.ids, new.ids
    repeated = np.union1d(_repeated(old_ids), _repeated(new_ids))
    old_general, new_general = (
        np.isin(ids, repeated) if len(repeated) else np.zeros(len(ids), dtype=bool)
        for ids in (old_ids, new_ids)
    )
    old_simple, new_simple = np.flatnonzero(~old_general), np.flatnonzero(~new_general)
    simple_ids = new_ids[new_simple]
    partner = np.zeros(len(old_simple), dtype=np.int64)
    same = np.zeros(len(old_simple), dtype=bool)
    if len(simple_ids):
        at = np.minimum(np.searchsorted(simple_ids, old_ids[old_simple]), len(simple_ids) - 1)
        partner = new_simple[at]
        same = (simple_ids[at] == old_ids[old_simple]) & np.all(
            old.labels[old_simple] == new.labels[partner], axis=1
        )
    paired_new = np.zeros(len(new_ids), dtype=bool)
    paired_new[partner[same]] = True
    gone = [old_simple[~same]]
    came = [new_simple[~paired_new[new_simple]]]
    pairs = ([old_simple[same]], [partner[same]])
    old_rest, new_rest = np.flatnonzero(old_general), np.flatnonzero(new_general)
    if len(old_rest) or len(new_rest):
        rest_gone, rest_came, (rest_old, rest_new) = _multiset_difference(
            old.entries_of(old_rest), new.entries_of(new_rest)
        )
        gone.append(old_rest[rest_gone])
        came.append(new_rest[rest_came])
        pairs[0].append(old_rest[rest_old])
        pairs[1].append(new_rest[rest_new])
    return (
        np.sort(np.concatenate(gone)),
        np.sort(np.concatenate(came)),
        (np.concatenate(pairs[0]), np.concatenate(pairs[1])),
    )


def _repeated(sorted_ids: np.ndarray) -> np.ndarray:
    """The ids that occur more than once in a sorted array."""
    return np.unique(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]])


def _same_bytes(old: Bucket, new: Bucket, pairs: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether every matched pair of rows is byte for byte equal. Both sides are in id
    order, so pairs come in long runs of consecutive rows on both sides: each run is one
    comparison of two byte ranges (after checking that the row lengths agree)."""
    order = np.argsort(pairs[0], kind="stable")
    old_index, new_index = pairs[0][order], pairs[1][order]
    if len(old_index) == 0:
        return True
    if not np.array_equal(old.lengths[old_index], new.lengths[new_index]):
        return False
    breaks = np.flatnonzero((np.diff(old_index) != 1) | (np.diff(new_index) != 1)) + 1
    firsts, lasts = np.r_[0, breaks], np.r_[breaks, len(old_index)] - 1
    old_offsets, new_offsets = _offsets(old.rows), _offsets(new.rows)
    old_spans = np.c_[old_offsets[old_index[firsts]], old_offsets[old_index[lasts] + 1]]
    new_spans = np.c_[new_offsets[new_index[firsts]], new_offsets[new_index[lasts] + 1]]
    old_body, new_body = memoryview(_values(old.rows)), memoryview(_values(new.rows))
    return all(  # copying a run out and comparing bytes beats numpy's per-call overhead
        old_body[a:b].tobytes() == new_body[c:d].tobytes()
        for (a, b), (c, d) in zip(old_spans.tolist(), new_spans.tolist(), strict=True)
    )


def _sort_order(entries: np.ndarray) -> np.ndarray:
    words = np.ascontiguousarray(entries).view(">u8")  # big-endian words: byte order
    return np.lexsort(words.T[::-1])


def _multiset_difference(
    old: np.ndarray, new: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Indices of old entries without a partner in new, of new entries without one in old
    (an entry present k times in old and m times in new leaves |k - m| unmatched), and the
    matched pairs as (old indices, new indices)."""
    both = np.vstack([old, new])
    side = np.concatenate([np.zeros(len(old), np.int8), np.ones(len(new), np.int8)])
    order = _sort_order(both)
    ordered = both[order]
    starts = np.ones(len(both), dtype=bool)
    starts[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    group = np.cumsum(starts) - 1
    sides = side[order]
    in_old = np.bincount(group, weights=sides == 0).astype(np.int64)
    in_new = np.bincount(group, weights=sides == 1).astype(np.int64)
    rank = _rank_within(group, sides)
    from_old, from_new = sides == 0, sides == 1
    unmatched_old = from_old & (rank >= in_new[group])
    unmatched_new = from_new & (rank >= in_old[group])
    matched_old, matched_new = from_old & ~unmatched_old, from_new & ~unmatched_new
    # the k-th old and the k-th new entry of a group are a pair: align both by (group, rank)
    old_pairs = order[matched_old][np.lexsort((rank[matched_old], group[matched_old]))]
    new_pairs = order[matched_new][np.lexsort((rank[matched_new], group[matched_new]))]
    return order[unmatched_old], order[unmatched_new] - len(old), (old_pairs, new_pairs - len(old))


def _rank_within(group: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Position of each element among earlier elements of the same group and side."""
    key = group * 2 + sides
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.searchsorted(sorted_key, sorted_key, side="left")
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(len(key)) - first
    return rank


def _pair(
    removed: np.ndarray,
    added: np.ndarray,
    old: DatasetDigest,
    new: DatasetDigest,
    key: str | None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str | None, str | None]]]:
    by_key = key is not None or old.schema.startswith("images")
    field_name = "key" if by_key else "c"
    waiting: dict[Any, list[int]] = {}
    for index, value in enumerate(removed[field_name].tolist()):
        waiting.setdefault(value, []).append(index)
    modified, paired_old, paired_new = [], set(), set()
    for index, value in enumerate(added[field_name].tolist()):
        candidates = waiting.get(value)
        if not candidates:
            continue
        partner = candidates.pop(0)
        paired_old.add(partner)
        paired_new.add(index)
        modified.append(
            (
                int(removed["row"][partner]),
                int(added["row"][index]),
                _label_text(old, int(removed["label"][partner])),
                _label_text(new, int(added["label"][index])),
            )
        )
    if not by_key:  # without a key only relabelled rows pair up: content must be equal
        modified = [m for m in modified if m[2] != m[3]]
    removed_rows = np.sort(np.delete(removed["row"], sorted(paired_old)))
    added_rows = np.sort(np.delete(added["row"], sorted(paired_new)))
    return removed_rows, added_rows, sorted(modified)


def _label_text(digest: DatasetDigest, code: int) -> str | None:
    return digest.labels[code] if code >= 0 else None


def diff_findings(result: DiffResult, policy: DiffPolicy) -> list[Finding]:
    """Findings for the changes that exceed `policy`."""
    location = Location(result.new.path)
    base = max(result.old.rows, 1)
    findings = []
    if result.old.schema != result.new.schema:
        findings.append(
            SCHEMA_CHANGED.finding(
                "The two versions have different columns or shapes",
                location,
                evidence={"old": result.old.schema, "new": result.new.schema},
            )
        )
    changed = len(result.added) + len(result.removed) + len(result.modified)
    if changed / base > policy.max_changed:
        findings.append(
            ROWS_CHANGED.finding(
                f"{changed} rows changed ({changed / base:.1%} of {result.old.rows}; policy "
                f"allows {policy.max_changed:.1%})",
                location,
                evidence=result.metrics(),
            )
        )
    flips = result.label_changes
    n_flips = sum(flips.values())
    if n_flips and n_flips / base > policy.max_label_changes:
        findings.append(
            LABELS_CHANGED.finding(
                f"{n_flips} existing rows changed label ({n_flips / base:.2%}; policy allows "
                f"{policy.max_label_changes:.2%})",
                location,
                evidence={
                    "label_changes": [
                        {"from": a, "to": b, "rows": n} for (a, b), n in sorted(flips.items())
                    ]
                },
            )
        )
    for name, shift in result.class_shift().items():
        if abs(shift["share_change"]) > policy.max_class_shift:
            findings.append(
                CLASS_SHIFT.finding(
                    f"class {name!r} share changed by {shift['share_change']:+.1%} "
                    f"({shift['old']} -> {shift['new']} rows)",
                    location,
                    evidence={"class": name, **shift},
                )
            )
    return findings
