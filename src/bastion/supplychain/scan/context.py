"""What every format scanner shares: resource limits, the nesting depth, and the way back to
content detection for members and embedded payloads."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from bastion.findings import Finding, Location
from bastion.supplychain.scan import rules


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile file from exhausting memory, time or the stack.

    Exceeding one is reported as a finding (an unscannable file is not a clean file)."""

    max_member_bytes: int = 512 * 1024**2  # a decompressed pickle or archive member
    max_total_bytes: int = 2 * 1024**3  # everything decompressed for one top-level file
    max_opcodes: int = 20_000_000
    max_nesting: int = 6  # archives in archives, pickles in pickles
    max_members: int = 100_000
    max_expansion: int = 10_000_000  # elements a pickle materialises through shared refs
    # How deeply a loaded object may nest. pickle.dumps recurses under the interpreter's
    # recursion limit, so what it writes nests a few hundred levels at most (Python 3.11:
    # lists 500, objects with state about 670); deeper is crafted.
    max_depth: int = 1_000
    max_compression_ratio: int = 1_000


class LimitExceeded(Exception):
    """A resource limit was hit; the message names which one."""


@dataclass
class ScanContext:
    """Passed down through nested scans; `dispatch` is content detection (set by scan.detect)."""

    limits: Limits
    dispatch: Callable[[BinaryIO, Location, ScanContext], list[Finding]]
    trusted_modules: frozenset[str] = frozenset()
    depth: int = 0
    # Shared by every nested context of one top-level file.
    decompressed: list[int] = field(default_factory=lambda: [0])
    formats: list[str] = field(default_factory=list)

    def nested(self) -> ScanContext:
        if self.depth + 1 > self.limits.max_nesting:
            raise LimitExceeded(f"nesting deeper than {self.limits.max_nesting} levels")
        return ScanContext(
            self.limits,
            self.dispatch,
            self.trusted_modules,
            self.depth + 1,
            self.decompressed,
            self.formats,
        )

    def scan_bytes(self, data: bytes, loc: Location) -> list[Finding]:
        """Scan an embedded payload (a member, a pickle inside a pickle) by its content."""
        try:
            child = self.nested()
        except LimitExceeded as exc:
            return [rules.limit_finding(str(exc), loc)]
        return self.dispatch(io.BytesIO(data), loc, child)

    def account(self, nbytes: int) -> None:
        """Count decompressed bytes against the per-file budget."""
        self.decompressed[0] += nbytes
        if self.decompressed[0] > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"more than {self.limits.max_total_bytes} bytes decompressed in one file"
            )


def read_bounded(stream: BinaryIO, limit: int, what: str) -> bytes:
    """Read a whole stream, refusing (not truncating) one longer than `limit` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded(f"{what} is larger than {limit} bytes")
    return data


def stream_size(stream: BinaryIO) -> int:
    here = stream.tell()
    size = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return size
