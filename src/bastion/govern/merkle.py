"""RFC 6962 / RFC 9162 Merkle tree hashing and proof construction, independent of storage.

A tree of n leaves is built from *perfect subtrees*: the subtree at (level L, index i) covers
leaves [i * 2**L, (i + 1) * 2**L). Storage keeps those hashes; everything here asks for them
through a `SubtreeHash` callback, so proofs and roots of any past size cost O(log n) lookups.
Verification lives in `verify_proof` (a standalone file third parties can copy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from bastion.govern.verify_proof import (
    HASH_SIZE,
    NODE_PREFIX,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "PackedTree",
    "SubtreeHash",
    "consistency_path",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "split_point",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()

# (level, index) -> hash of the perfect subtree at that position.
SubtreeHash = Callable[[int, int], bytes]


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): where RFC 9162 splits."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(lo: int, hi: int, subtree: SubtreeHash) -> bytes:
    """MTH(D[lo:hi]) for a range the RFC recursion produces: lo is aligned to the largest
    power of two not above hi - lo, so the range decomposes into perfect subtrees."""
    size = hi - lo
    if size == 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return subtree(level, lo >> level)
    k = split_point(size)
    return node_hash(subtree_root(lo, lo + k, subtree), subtree_root(lo + k, hi, subtree))


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(subtree_root(lo + k, hi, subtree))
            hi = lo + k
        else:
            path.append(subtree_root(lo, lo + k, subtree))
            lo += k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 section 2.1.4.1, deepest node first."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    lo, hi, m = 0, new_size, old_size
    complete = True  # SUBPROOF's b: the old tree so far is the whole of D[lo:hi]'s prefix
    while m != hi:
        k = split_point(hi - lo)
        if m <= lo + k:
            path.append(subtree_root(lo + k, hi, subtree))
            hi = lo + k
        else:
            path.append(subtree_root(lo, lo + k, subtree))
            lo += k
            complete = False
    if not complete:
        path.append(subtree_root(lo, hi, subtree))
    path.reverse()
    return path


class CompactRange:
    """The right edge of a growing tree: one perfect subtree hash per set bit of its size.
    Appending a leaf merges equal-sized peaks and reports the new perfect subtrees, which is
    what storage needs to keep roots and proofs O(log n)."""

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        if len(peaks) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} peaks, not {len(peaks)}"
            )
        self.size = size
        self.peaks = list(peaks)

    @staticmethod
    def peak_positions(size: int) -> list[tuple[int, int]]:
        """(level, index) of each peak of a tree of `size` leaves, largest (leftmost) first."""
        positions = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                positions.append((level, start >> level))
                start += 1 << level
        return positions

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the (level, index, hash) of each subtree it completes
        above level 0."""
        created = []
        index, level, current = self.size, 0, leaf
        while index >> level & 1:
            current = node_hash(self.peaks.pop(), current)
            level += 1
            created.append((level, index >> level, current))
        self.peaks.append(current)
        self.size += 1
        return created

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        result = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            result = node_hash(peak, result)
        return result


class PackedTree:
    """Every perfect subtree hash of a tree held in memory, one packed bytes row per level
    (level 0 = the leaves). Adjacent pairs are contiguous, so a parent is one hash call over
    a slice; a million leaves take about 64 MB."""

    def __init__(self, leaves: bytes) -> None:
        if len(leaves) % HASH_SIZE:
            raise ValueError("packed leaves must be a multiple of 32 bytes")
        self.rows = [leaves]
        while len(self.rows[-1]) > HASH_SIZE:
            row = self.rows[-1]
            pairs = len(row) // (2 * HASH_SIZE)
            parents = b"".join(
                _sha256(NODE_PREFIX + row[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, pairs * 2 * HASH_SIZE, 2 * HASH_SIZE)
            )
            self.rows.append(parents)

    @property
    def size(self) -> int:
        return len(self.rows[0]) // HASH_SIZE

    def has(self, level: int, index: int) -> bool:
        return level < len(self.rows) and 0 <= index < len(self.rows[level]) // HASH_SIZE

    def subtree(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return self.rows[level][start : start + HASH_SIZE]

    def root(self, size: int | None = None) -> bytes:
        return subtree_root(0, self.size if size is None else size, self.subtree)
