"""`bastion scan`: is this model file safe to load?

Files are recognised by content, every format that applies is scanned, archives and
embedded payloads are followed, and nothing named in a file is ever imported or run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import InputError
from bastion.findings import Finding, Location, Severity, max_severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch


@dataclass
class FileReport:
    path: str
    formats: list[str]
    findings: list[Finding]
    size: int
    seconds: float


@dataclass
class ScanResult:
    files: list[FileReport] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for report in self.files for f in report.findings]

    @property
    def max_severity(self) -> Severity | None:
        return max_severity(self.findings)

    def blocking(self, threshold: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= threshold]


def _files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    yield Path(root) / name
        elif path.is_file():
            yield path
        elif path.exists():
            raise InputError(f"{path}: not a regular file or directory")
        else:
            raise InputError(f"{path}: no such file or directory")


def scan_file(path: str | os.PathLike[str], *, trusted: Iterable[str] = (),
              limits: Limits | None = None) -> FileReport:
    """Scan one file; unreadable files become findings, never exceptions."""
    started = time.perf_counter()
    location = Location(str(path))
    ctx = ScanContext(limits or Limits(), dispatch, frozenset(trusted))
    size = 0
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            findings = dispatch(stream, location, ctx)
    except OSError as exc:
        findings = [rules.unreadable_finding(exc.strerror or str(exc), location)]
    formats = list(dict.fromkeys(ctx.formats))
    return FileReport(str(path), formats, findings, size, time.perf_counter() - started)


def scan(*paths: str | os.PathLike[str], trusted: Iterable[str] = (),
         limits: Limits | None = None) -> ScanResult:
    """Scan files and directories (recursively). Raises InputError for a missing path."""
    if not paths:
        raise InputError("nothing to scan: give at least one file or directory")
    trusted = tuple(trusted)
    files = list(_files(paths))
    return ScanResult([scan_file(p, trusted=trusted, limits=limits) for p in files])


__all__ = ["FileReport", "Limits", "ScanResult", "scan", "scan_file"]
