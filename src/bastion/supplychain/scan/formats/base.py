"""The interface every format module implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from bastion.findings import Finding, Location
from bastion.supplychain.scan.context import ScanContext

HEAD_BYTES = 4096


@dataclass(frozen=True)
class FormatScanner:
    name: str
    # (first HEAD_BYTES bytes, the seekable stream) -> does this format apply?
    sniff: Callable[[bytes, BinaryIO], bool]
    # (stream at offset 0, location, context) -> findings
    scan: Callable[[BinaryIO, Location, ScanContext], list[Finding]]
    # an exclusive match ends detection: its magic number rules out any other reading
    exclusive: bool = False
