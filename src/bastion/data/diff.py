"""What changed between two versions of a dataset, row by row, in bounded memory.

Each row is hashed (BLAKE3, first 16 bytes) from its canonical bytes (see `rowstream`); the
label is kept beside the hash as text. Rows go to one of 256 buckets by the first byte of
their hash, spilled to a temporary folder, so memory holds one chunk at a time. A bucket's
digest covers its sorted (content hash, label hash) entries and its size, so a dataset's
digest does not depend on row order; a Merkle tree over the 256 bucket digests gives the
dataset root. Two equal roots mean equal datasets (O(1)); otherwise descending the tree
where hashes differ finds the changed buckets in O(log 256) steps each, and only those are
compared entry by entry (a multiset difference, so duplicated rows count). Bucket digests,
the Merkle tree and the root use SHA-256, so the root is a digest the ledger records as is.

Pairing rule for "modified": a removed and an added row are one modified row when they
share the `--key` value; without a key, when they share the same content (all non-label
values) and differ only in the label. Everything else is added or removed. Image folders
use the file name under its class folder as the key.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from blake3 import blake3

from bastion.data.rowstream import RowChunk, RowSource, open_rows
from bastion.data.rules import CLASS_SHIFT, LABELS_CHANGED, ROWS_CHANGED, SCHEMA_CHANGED
from bastion.findings import Finding, Location

BUCKETS = 256
HASH_BYTES = 16
RECORD = np.dtype([("c", f"V{HASH_BYTES}"), ("label", "<i4"), ("key", "<u8"), ("row", "<i8")])
NO_LABEL = -1
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
    buckets: list[bytes] = field(repr=False, default_factory=list)  # Merkle leaves
    records: Path | None = field(repr=False, default=None)  # folder of bucket files
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
    buckets_compared: int

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
            "buckets_compared": self.buckets_compared,
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
    """Compare two dataset versions; spill space comes from `workdir` (default: system temp)."""
    with tempfile.TemporaryDirectory(prefix="bastion-diff-", dir=workdir) as spill:
        old_digest = digest_dataset(open_rows(old, label=label, key=key), Path(spill) / "old")
        new_digest = digest_dataset(open_rows(new, label=label, key=key), Path(spill) / "new")
        changed = changed_buckets(old_digest.buckets, new_digest.buckets)
        removed, added = _bucket_differences(old_digest, new_digest, changed)
    removed_rows, added_rows, modified = _pair(removed, added, old_digest, new_digest, key)
    return DiffResult(old_digest, new_digest, added_rows, removed_rows, modified, len(changed))


def digest_dataset(rows: RowSource, spill: Path) -> DatasetDigest:
    """Hash every row into bucket files under `spill`; return the dataset's digest."""
    spill.mkdir(parents=True)
    handles = [open(spill / f"{b:03d}", "wb") for b in range(BUCKETS)]  # noqa: SIM115
    labels: dict[str, int] = {}
    counts: Counter[int] = Counter()
    total = 0
    try:
        for chunk in rows.chunks:
            records = _records(chunk, labels, total)
            labelled = records["label"][records["label"] != NO_LABEL]
            counts.update(dict(enumerate(np.bincount(labelled).tolist())))
            _spill(records, handles)
            total += len(records)
    finally:
        for handle in handles:
            handle.close()
    names = list(labels)
    leaves = [_bucket_digest(_read_bucket(spill, b), names) for b in range(BUCKETS)]
    root = sha256(b"bastion-dataset-v1\0" + rows.schema.encode() + b"\0" + merkle_root(leaves))
    return DatasetDigest(
        path=str(rows.path),
        rows=total,
        root="sha256:" + root.hexdigest(),
        schema=rows.schema,
        class_counts={names[code]: int(n) for code, n in sorted(counts.items()) if n},
        buckets=leaves,
        records=spill,
        labels=names,
    )


def hash_rows(chunk: RowChunk) -> np.ndarray:
    """BLAKE3 (16 bytes) of each row's canonical bytes, as an (n, 16) uint8 array."""
    data = chunk.data
    starts = chunk.offsets[:-1].tolist()
    ends = chunk.offsets[1:].tolist()
    joined = b"".join(
        [blake3(data[s:e]).digest(HASH_BYTES) for s, e in zip(starts, ends, strict=True)]
    )
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, HASH_BYTES)


def _records(chunk: RowChunk, labels: dict[str, int], first_row: int) -> np.ndarray:
    hashes = hash_rows(chunk)
    records = np.empty(len(hashes), dtype=RECORD)
    records["c"] = hashes.view(f"V{HASH_BYTES}").reshape(-1)
    records["label"] = NO_LABEL if chunk.labels is None else _label_codes(chunk.labels, labels)
    records["key"] = _key_ids(chunk.keys) if chunk.keys is not None else 0
    records["row"] = np.arange(first_row, first_row + len(hashes))
    return records


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
    (the content hash covers the key column)."""
    import pandas as pd

    values = keys.to_numpy(zero_copy_only=False)
    return pd.util.hash_array(values, categorize=False).astype(np.uint64)


def _content_bytes(records: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(records["c"]).view(np.uint8).reshape(-1, HASH_BYTES)


def _spill(records: np.ndarray, handles: list) -> None:
    buckets = _content_bytes(records)[:, 0]
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
    ordered = records[order]
    for b in np.flatnonzero(np.diff(bounds)):
        handles[b].write(ordered[bounds[b] : bounds[b + 1]].tobytes())


def _read_bucket(spill: Path, bucket: int) -> np.ndarray:
    return np.fromfile(spill / f"{bucket:03d}", dtype=RECORD)


def _entries(records: np.ndarray, names: list[str]) -> np.ndarray:
    """(n, 32) bytes per row: content hash then label hash, so the entry names the label
    by its text, not by a code that depends on the order labels were first seen."""
    label_hashes = np.zeros((len(names) + 1, HASH_BYTES), dtype=np.uint8)  # last: no label
    for code, text in enumerate(names):
        label_hashes[code] = np.frombuffer(blake3(text.encode()).digest(HASH_BYTES), np.uint8)
    return np.hstack([_content_bytes(records), label_hashes[records["label"]]])


def _sort_order(entries: np.ndarray) -> np.ndarray:
    words = entries.view(">u8")  # four big-endian words: lexicographic byte order
    return np.lexsort(words.T[::-1])


def _bucket_digest(records: np.ndarray, names: list[str]) -> bytes:
    entries = _entries(records, names)
    ordered = entries[_sort_order(entries)]
    return sha256(len(records).to_bytes(8, "big") + ordered.tobytes()).digest()


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """RFC 9162-style domain separation (0x00 leaves, 0x01 nodes); `leaves` is a power of 2."""
    level = [sha256(b"\0" + leaf).digest() for leaf in leaves]
    levels = [level]
    while len(level) > 1:
        level = [sha256(b"\1" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def merkle_root(leaves: list[bytes]) -> bytes:
    return merkle_levels(leaves)[-1][0]


def changed_buckets(old: list[bytes], new: list[bytes]) -> list[int]:
    """Leaves whose digests differ, found by descending only into differing subtrees."""
    old_levels, new_levels = merkle_levels(old), merkle_levels(new)
    frontier = [0]
    for depth in range(len(old_levels) - 1, 0, -1):
        frontier = [
            child
            for node in frontier
            if old_levels[depth][node] != new_levels[depth][node]
            for child in (2 * node, 2 * node + 1)
        ]
    return [leaf for leaf in frontier if old_levels[0][leaf] != new_levels[0][leaf]]


def _bucket_differences(
    old: DatasetDigest, new: DatasetDigest, buckets: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    removed, added = [], []
    for bucket in buckets:
        old_records = _read_bucket(old.records, bucket)
        new_records = _read_bucket(new.records, bucket)
        gone, came = _multiset_difference(
            _entries(old_records, old.labels), _entries(new_records, new.labels)
        )
        removed.append(old_records[gone])
        added.append(new_records[came])
    empty = np.empty(0, dtype=RECORD)
    return (
        np.concatenate(removed) if removed else empty,
        np.concatenate(added) if added else empty,
    )


def _multiset_difference(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of old entries without a partner in new, and of new entries without one in
    old; an entry present k times in old and m times in new leaves |k - m| unmatched."""
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
    unmatched_old = (sides == 0) & (rank >= in_new[group])
    unmatched_new = (sides == 1) & (rank >= in_old[group])
    return order[unmatched_old], order[unmatched_new] - len(old)


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
