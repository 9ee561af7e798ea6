"""The ledger: an append-only RFC 9162 Merkle log of events in SQLite (WAL mode).

Tables:
  meta         origin (the log id), format version, the checkpoint key's id
  entries      idx, leaf hash, canonical JSON body: what the tree commits to
  nodes        hash of every perfect subtree, by (level, idx), leaves included: each append
               adds O(1) amortised rows, and any root or proof needs O(log n) lookups; the
               copy of the leaf hashes here lets verify tell which entry a rewrite changed
  refs         (idx, role, digest) for each subject/parent: lineage queries use its index
  checkpoints  signed notes (tree size, root, time), newest last

Writers take `BEGIN IMMEDIATE`, so concurrent processes queue on SQLite's lock (with a busy
timeout) instead of interleaving; `synchronous=FULL` makes an acknowledged append durable.
Only signed checkpoints are trusted: `verify` recomputes the tree from the entry bodies and
checks it against every checkpoint, then uses the stored subtree hashes that the signed
roots still vouch for to name the first entry that changed.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import InputError
from bastion.fsutil import atomic_write
from bastion.govern import checkpoint as checkpoints
from bastion.govern.checkpoint import Checkpoint, CheckpointError
from bastion.govern.events import Event, utc_now
from bastion.govern.merkle import (
    HASH_SIZE,
    CompactRange,
    PackedTree,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    split_point,
    subtree_root,
)

FORMAT_VERSION = "1"
BUSY_TIMEOUT_S = 60.0
SUBJECT, PARENT = 0, 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, body TEXT NOT NULL);
CREATE TABLE nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE refs (
    idx INTEGER NOT NULL, role INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (idx, role, digest)
) WITHOUT ROWID;
CREATE INDEX refs_by_digest ON refs (digest, role);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY, tree_size INTEGER NOT NULL, root_hash BLOB NOT NULL,
    timestamp TEXT NOT NULL, note TEXT NOT NULL
);
CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
"""


class LedgerTampered(Exception):
    """Verification failed: the ledger no longer matches what was signed."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


@dataclass(frozen=True)
class Entry:
    index: int
    leaf_hash: bytes
    body: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "leaf_hash": self.leaf_hash.hex(), "event": self.event}


@dataclass(frozen=True)
class VerifyResult:
    size: int
    checkpoint: Checkpoint
    checkpoints: int

    @property
    def unsigned(self) -> int:
        """Entries appended after the last signed checkpoint."""
        return self.size - self.checkpoint.size


def key_paths(ledger: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where `init` puts a generated key pair: next to the ledger, as LEDGER.key and .pub."""
    return Path(f"{ledger}.key"), Path(f"{ledger}.pub")


def _refs(event: Event, index: int) -> list[tuple[int, int, str]]:
    refs = {(index, SUBJECT, s.digest) for s in event.subjects}
    refs.update((index, PARENT, digest) for digest in event.parents)
    return sorted(refs)


def _refs_of_body(body: str) -> list[tuple[int, str]]:
    value = json.loads(body)
    refs = {(SUBJECT, s["digest"]) for s in value["subjects"]}
    refs.update((PARENT, digest) for digest in value["parents"])
    return sorted(refs)


class Ledger:
    """One open ledger file. Use as a context manager or call close()."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._tree: CompactRange | None = None
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT_VERSION or "origin" not in meta:
            raise InputError(f"{path} is not a Bastion ledger (format {FORMAT_VERSION})")
        self.origin: str = meta["origin"]
        self.key_id: str = meta.get("key_id", "")

    # ----------------------------------------------------------------- opening

    @staticmethod
    def _connect(path: Path, mode: str) -> sqlite3.Connection:
        db = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the upper tree levels stay cached
        return db

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], public_key: Ed25519PublicKey, origin: str | None = None
    ) -> Ledger:
        """A new, empty ledger whose checkpoints `public_key` will verify."""
        target = Path(path)
        if target.exists():
            raise InputError(f"{target} already exists")
        log_id = origin or f"bastion.ledger/{secrets.token_hex(8)}"
        if not log_id.strip() or any(c.isspace() for c in log_id):
            raise InputError(f"ledger origin {log_id!r} must be one word without spaces")
        target.parent.mkdir(parents=True, exist_ok=True)
        db = cls._connect(target, "rwc")
        key = checkpoints.key_id(log_id, public_key).hex()
        # One transaction: a crash leaves either no schema or the whole of it.
        db.executescript("BEGIN IMMEDIATE;\n" + SCHEMA)
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", FORMAT_VERSION), ("origin", log_id), ("key_id", key)],
        )
        db.execute("COMMIT")
        return cls(target, db)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        target = Path(path)
        if not target.is_file():
            raise InputError(f"no ledger at {target} (create one with `bastion ledger init`)")
        try:
            db = cls._connect(target, "rw")
            return cls(target, db)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{target} is not a Bastion ledger: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    @property
    def size(self) -> int:
        (last,) = self._db.execute("SELECT max(idx) FROM entries").fetchone()
        return 0 if last is None else last + 1

    def _subtree(self, level: int, index: int) -> bytes:
        found = self._db.execute(
            "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if found is None:
            raise InputError(
                f"{self.path} is damaged: tree hash ({level}, {index}) is missing "
                "(run `bastion ledger verify`)"
            )
        return found[0]

    def _checked_size(self, size: int | None) -> int:
        current = self.size
        if size is None:
            return current
        if not 0 <= size <= current:
            raise InputError(f"tree size {size} is outside 0..{current}")
        return size

    def root(self, size: int | None = None) -> bytes:
        return subtree_root(0, self._checked_size(size), self._subtree)

    def entry(self, index: int) -> Entry:
        row = self._db.execute(
            "SELECT idx, leaf_hash, body FROM entries WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise InputError(f"{self.path} has no entry {index} (size {self.size})")
        return Entry(*row)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[Entry]:
        end = self.size if stop is None else stop
        rows = self._db.execute(
            "SELECT idx, leaf_hash, body FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )
        return (Entry(*row) for row in rows)

    def _indices(self, digests: Iterable[str], role: int) -> set[int]:
        found: set[int] = set()
        for digest in digests:
            rows = self._db.execute(
                "SELECT idx FROM refs WHERE digest = ? AND role = ?", (digest, role)
            )
            found.update(idx for (idx,) in rows)
        return found

    def _event_digests(self, indices: Iterable[int], field: str) -> set[str]:
        digests: set[str] = set()
        for index in indices:
            for item in self.entry(index).event[field]:
                digests.add(item["digest"] if isinstance(item, dict) else item)
        return digests

    def lineage(self, digest: str) -> list[Entry]:
        """Every event in the history of `digest`, in log order. Upwards: the events naming
        it as a subject and, through their parents, the history of its inputs (dataset ->
        training run -> model). Downwards: the events using it as a parent, what they made,
        and the events about those (model -> deployment)."""
        chosen: set[int] = set()
        seen, frontier = set(), {digest}
        while frontier:
            seen |= frontier
            producers = self._indices(frontier, SUBJECT)
            chosen |= producers
            frontier = self._event_digests(producers, "parents") - seen
        seen, frontier = {digest}, {digest}
        while frontier:
            users = self._indices(frontier, PARENT)
            chosen |= users | self._indices(frontier - {digest}, SUBJECT)
            frontier = self._event_digests(users, "subjects") - seen
            seen |= frontier
        return [self.entry(index) for index in sorted(chosen)]

    def find(self, kind: str | None = None, limit: int | None = None) -> list[Entry]:
        """Entries in log order, optionally of one kind; with `limit`, the last ones."""
        where = "WHERE json_extract(body, '$.kind') = ?" if kind else ""
        tail = "LIMIT ?" if limit is not None else ""
        params = [p for p in (kind, limit) if p is not None]
        rows = self._db.execute(
            f"SELECT idx, leaf_hash, body FROM entries {where} ORDER BY idx DESC {tail}", params
        ).fetchall()
        return [Entry(*row) for row in reversed(rows)]

    # ----------------------------------------------------------------- writing

    def _right_edge(self, size: int) -> CompactRange:
        """The peaks of the tree of `size`: from this process's last append when nobody has
        appended since, else O(log n) lookups."""
        if self._tree is not None and self._tree.size == size:
            return CompactRange(size, self._tree.peaks)
        positions = CompactRange.peak_positions(size)
        return CompactRange(size, [self._subtree(level, index) for level, index in positions])

    def append(self, event: Event) -> int:
        """Append one event; return its index once it is committed."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event]) -> list[int]:
        """Append events in one transaction (all or none); return their indices."""
        bodies = [event.canonical() for event in events]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            tree = self._right_edge(self.size)
            first = tree.size
            rows, nodes, refs = [], [], []
            for offset, (event, body) in enumerate(zip(events, bodies, strict=True)):
                leaf = leaf_hash(body)
                rows.append((first + offset, leaf, body.decode("utf-8")))
                nodes.append((0, first + offset, leaf))
                nodes.extend(tree.append(leaf))
                refs.extend(_refs(event, first + offset))
            self._db.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows)
            self._db.executemany("INSERT INTO nodes VALUES (?, ?, ?)", nodes)
            self._db.executemany("INSERT INTO refs VALUES (?, ?, ?)", refs)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._tree = tree
        return list(range(first, first + len(events)))

    def check_signing_key(self, key: Ed25519PrivateKey) -> None:
        if checkpoints.key_id(self.origin, key.public_key()).hex() != self.key_id:
            raise InputError(f"this key is not the checkpoint key of ledger {self.path}")

    def checkpoint(self, key: Ed25519PrivateKey) -> str:
        """Sign the current tree size and root; return the signed note."""
        self.check_signing_key(key)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            size = self.size
            state = Checkpoint(self.origin, size, self.root(size), utc_now())
            note = state.sign(key)
            self._db.execute(
                "INSERT INTO checkpoints (tree_size, root_hash, timestamp, note) "
                "VALUES (?, ?, ?, ?)",
                (state.size, state.root, state.timestamp, note),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return note

    def latest_checkpoint(self) -> str | None:
        row = self._db.execute("SELECT note FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def checkpoint_at(self, size: int) -> str | None:
        row = self._db.execute(
            "SELECT note FROM checkpoints WHERE tree_size = ? ORDER BY id DESC LIMIT 1", (size,)
        ).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ proofs

    def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        """RFC 9162 audit path for entry `index` in the tree of `size` (default: current),
        as the JSON document `verify_proof` checks."""
        tree_size = self._checked_size(size)
        if not 0 <= index < tree_size:
            raise InputError(f"entry {index} is not in a tree of size {tree_size}")
        entry = self.entry(index)
        proof: dict[str, Any] = {
            "type": "inclusion",
            "hash_algorithm": "sha256",
            "origin": self.origin,
            "leaf_index": index,
            "tree_size": tree_size,
            "leaf_hash": entry.leaf_hash.hex(),
            "audit_path": [h.hex() for h in inclusion_path(index, tree_size, self._subtree)],
            "root_hash": self.root(tree_size).hex(),
            "entry": entry.body,
        }
        return self._with_checkpoint(proof, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> dict[str, Any]:
        """RFC 9162 proof that the tree of `old_size` is a prefix of the one of `new_size`."""
        new = self._checked_size(new_size)
        if not 0 <= old_size <= new:
            raise InputError(f"old size {old_size} must be between 0 and the new size {new}")
        proof: dict[str, Any] = {
            "type": "consistency",
            "hash_algorithm": "sha256",
            "origin": self.origin,
            "old_size": old_size,
            "new_size": new,
            "old_root": self.root(old_size).hex(),
            "new_root": self.root(new).hex(),
            "consistency_path": [h.hex() for h in consistency_path(old_size, new, self._subtree)],
        }
        return self._with_checkpoint(proof, new)

    def _with_checkpoint(self, proof: dict[str, Any], size: int) -> dict[str, Any]:
        note = self.checkpoint_at(size)
        if note is not None:
            proof["checkpoint"] = note
        return proof

    # ------------------------------------------------------------------ verify

    def verify(self, key: Ed25519PublicKey, trusted: Sequence[str] = ()) -> VerifyResult:
        """Recompute the whole tree from the entry bodies and check it against every signed
        checkpoint (plus `trusted` notes kept elsewhere). Raises LedgerTampered naming the
        first bad index; InputError when `key` is not this ledger's key."""
        if checkpoints.key_id(self.origin, key).hex() != self.key_id:
            raise InputError(
                f"the given key is not the checkpoint key of {self.path} (key id {self.key_id})"
            )
        try:
            signed = self._signed_checkpoints(key, trusted)
            scan = _EntryScan(self._db)
            tree = PackedTree(bytes(scan.leaves))
            stored = _StoredTree(self._db, tree)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} is damaged and cannot be read: {exc}") from None
        problems = scan.problems + _checkpoint_problems(signed, tree, stored)
        if not problems:
            problems = stored.problems
        if problems:
            index, message = min(problems)
            raise LedgerTampered(message, index)
        return VerifyResult(tree.size, signed[-1], len(signed))

    def _signed_checkpoints(
        self, key: Ed25519PublicKey, trusted: Sequence[str]
    ) -> list[Checkpoint]:
        notes = [
            (f"checkpoint {i}", note)
            for i, note in self._db.execute("SELECT id, note FROM checkpoints ORDER BY id")
        ]
        notes += [(f"trusted checkpoint {n + 1}", note) for n, note in enumerate(trusted)]
        if not notes:
            raise LedgerTampered("the ledger holds no signed checkpoint (they were deleted)")
        signed = []
        for name, note in notes:
            try:
                state = checkpoints.verify(note, key)
            except CheckpointError as exc:
                raise LedgerTampered(f"{name} is forged or damaged: {exc}") from None
            if state.origin != self.origin:
                raise LedgerTampered(f"{name} belongs to log {state.origin!r}, not {self.origin!r}")
            signed.append(state)
        return signed

    # ------------------------------------------------------------------ export

    def export(self, out: str | os.PathLike[str]) -> Path:
        """Write the log as JSON Lines: a header, one line per entry, then the latest signed
        checkpoint; atomically (a crash leaves the old file or the whole new one)."""
        header = {"ledger": self.origin, "format": FORMAT_VERSION, "key_id": self.key_id}
        lines = [json.dumps(header, sort_keys=True)]
        for entry in self.entries():
            body = {"index": entry.index, "leaf_hash": entry.leaf_hash.hex(), "entry": entry.body}
            lines.append(json.dumps(body, sort_keys=True, ensure_ascii=False))
        lines.append(json.dumps({"checkpoint": self.latest_checkpoint()}, ensure_ascii=False))
        return atomic_write(out, "\n".join(lines) + "\n")


class _EntryScan:
    """One pass over the entries: recomputed leaf hashes (packed) and the first entry whose
    number, stored leaf hash or lineage references disagree with its body."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.leaves = bytearray()
        self.problems: list[tuple[int, str]] = []
        refs = groupby(
            db.execute("SELECT idx, role, digest FROM refs ORDER BY idx, role, digest"),
            key=lambda row: row[0],
        )
        pending = next(refs, None)
        position = 0
        for position, (index, stored, body) in enumerate(
            db.execute("SELECT idx, leaf_hash, body FROM entries ORDER BY idx")
        ):
            if index != position and not self.problems:
                self._problem(position, f"entry {position} is missing (deleted or renumbered)")
            # A rewritten row may hold a blob where text belongs; hash what is there.
            leaf = leaf_hash(body.encode("utf-8") if isinstance(body, str) else bytes(body))
            self.leaves += leaf
            if stored != leaf:
                self._problem(index, f"entry {index} was changed: it no longer hashes to its leaf")
            while pending is not None and pending[0] < index:
                self._problem(pending[0], f"lineage references of entry {pending[0]} were changed")
                pending = next(refs, None)
            actual: list[tuple[int, str]] = []
            if pending is not None and pending[0] == index:
                actual = [(role, digest) for _, role, digest in pending[1]]
                pending = next(refs, None)
            if actual != _expected_refs(body):
                self._problem(index, f"lineage references of entry {index} were changed")
        if pending is not None:
            self._problem(pending[0], f"lineage references of entry {pending[0]} were changed")

    def _problem(self, index: int, message: str) -> None:
        if not self.problems or index < self.problems[0][0]:
            self.problems[:] = [(index, message)]


def _expected_refs(body: str) -> list[tuple[int, str]] | None:
    try:
        return _refs_of_body(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class _StoredTree:
    """The subtree hashes stored in `nodes`, compared level by level with the recomputed
    tree; where they differ, the stored ones are kept so checkpoint roots can vouch for them."""

    def __init__(self, db: sqlite3.Connection, tree: PackedTree) -> None:
        self.tree = tree
        self.differing: dict[int, dict[int, bytes]] = {}
        self.problems: list[tuple[int, str]] = []
        top = max(
            len(tree.rows), 1 + (db.execute("SELECT max(level) FROM nodes").fetchone()[0] or 0)
        )
        for level in range(top):
            self._compare_level(db, level)

    def _compare_level(self, db: sqlite3.Connection, level: int) -> None:
        rows = db.execute(
            "SELECT idx, hash FROM nodes WHERE level = ? ORDER BY idx", (level,)
        ).fetchall()
        expected = self.tree.rows[level] if level < len(self.tree.rows) else b""
        count = len(expected) // HASH_SIZE
        if [r[0] for r in rows] == list(range(count)) and b"".join(r[1] for r in rows) == expected:
            return
        stored = dict(rows)
        self.differing[level] = stored
        for index in sorted(set(stored) | set(range(count))):
            if stored.get(index) != (expected[index * HASH_SIZE : (index + 1) * HASH_SIZE] or None):
                first = min(index << level, self.tree.size)
                self.problems.append(
                    (
                        first,
                        f"the stored tree hash at level {level}, index {index} is wrong "
                        f"(entries from {first} on cannot be proven)",
                    )
                )
                return

    def subtree(self, level: int, index: int) -> bytes | None:
        if level in self.differing:
            return self.differing[level].get(index)
        return self.tree.subtree(level, index) if self.tree.has(level, index) else None

    def range_hash(self, lo: int, hi: int) -> bytes | None:
        """MTH of leaves [lo, hi) from stored hashes only; None when one is missing."""
        try:
            return subtree_root(lo, hi, self._required)
        except LookupError:
            return None

    def _required(self, level: int, index: int) -> bytes:
        found = self.subtree(level, index)
        if found is None:
            raise LookupError((level, index))
        return found


def _checkpoint_problems(
    signed: list[Checkpoint], tree: PackedTree, stored: _StoredTree
) -> list[tuple[int, str]]:
    """Truncation, or the first entry that differs from what the checkpoints signed."""
    problems = []
    authentic_prefix = 0
    for state in sorted(signed, key=lambda c: c.size):
        if state.size > tree.size:
            problems.append(
                (
                    tree.size,
                    (
                        f"the ledger was truncated: it holds {tree.size} entries but a "
                        f"checkpoint signed {state.size} (first missing entry: {tree.size})"
                    ),
                )
            )
            break
        if tree.root(state.size) == state.root:
            authentic_prefix = state.size
            continue
        lo, hi = _locate(0, state.size, state.root, tree, stored)
        lo = max(lo, authentic_prefix)
        if hi - lo == 1:
            message = f"entry {lo} differs from what checkpoint (size {state.size}) signed"
        else:
            message = (
                f"entries {lo}..{hi - 1} differ from what checkpoint (size {state.size}) signed, "
                f"and their stored hashes were rewritten to match: entry {lo} is the first "
                "that may have been changed"
            )
        problems.append((lo, message))
        break
    return problems


def _locate(
    lo: int, hi: int, authentic: bytes, tree: PackedTree, stored: _StoredTree
) -> tuple[int, int]:
    """Narrow [lo, hi), whose recomputed hash differs from `authentic`, to the first changed
    leaf, walking down through stored hashes as long as the authentic hash vouches for them."""
    while hi - lo > 1:
        k = split_point(hi - lo)
        left, right = stored.range_hash(lo, lo + k), stored.range_hash(lo + k, hi)
        if left is None or right is None or node_hash(left, right) != authentic:
            break
        if subtree_root(lo, lo + k, tree.subtree) != left:
            hi, authentic = lo + k, left
        else:
            lo, authentic = lo + k, right
    return lo, hi


def init_ledger(
    path: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    origin: str | None = None,
) -> tuple[Ledger, Path | None, Path]:
    """Create a ledger and sign its first (empty) checkpoint. Without `key`, generate an
    Ed25519 pair next to it (LEDGER.key, LEDGER.pub); with one, write only LEDGER.pub.
    Returns the ledger, the generated private key's path (or None) and the public key's."""
    target = Path(path)
    if target.exists():
        raise InputError(f"{target} already exists")
    private_path, public_path = key_paths(target)
    if key is None:
        private = checkpoints.generate_key_pair(private_path, public_path)
        generated: Path | None = private_path
    else:
        private = checkpoints.load_private_key(key)
        if public_path.exists():
            raise InputError(f"{public_path} already exists")
        checkpoints.write_public_key(public_path, private.public_key())
        generated = None
    ledger = Ledger.create(target, private.public_key(), origin)
    ledger.checkpoint(private)
    return ledger, generated, public_path


def record(
    path: str | os.PathLike[str],
    events: Sequence[Event],
    key: str | os.PathLike[str] | None = None,
    sign: bool = True,
) -> tuple[list[int], str | None]:
    """Append `events` to the ledger at `path` and, when a key is at hand (`key`, else the
    LEDGER.key made by init), sign a checkpoint covering them. Returns the indices and the
    signed note (None when nothing was signed)."""
    private_path = Path(key) if key is not None else key_paths(path)[0]
    private = (
        checkpoints.load_private_key(private_path)
        if sign and (key is not None or private_path.exists())
        else None
    )
    with Ledger.open(path) as ledger:
        if private is not None:
            ledger.check_signing_key(private)
        indices = ledger.append_many(events)
        note = ledger.checkpoint(private) if private is not None else None
    return indices, note
