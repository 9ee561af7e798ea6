"""`bastion scan`: is this model file safe to load?

Files are recognised by content, every format that applies is scanned, archives and
embedded payloads are followed, and nothing named in a file is ever imported or run.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bastion.errors import InputError
from bastion.findings import Finding, Location, Severity, max_severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch

# Regular files up to this size are read whole and scanned from memory: a small file's scan
# is mostly short reads, tells and seeks, which cost far less on BytesIO than on a buffered
# file (a quarter of the time on 2,000 small pickles).
READ_WHOLE_BYTES = 1 << 20
_DEFAULT_LIMITS = Limits()


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


def _files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Every file under `paths`, named as pathlib names it (`str(Path(root) / name)`), but
    joined as strings: on a folder of small files pathlib's parsing was a tenth of the scan,
    and a join per file still a third of the listing, which comes before any worker starts."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                names.sort()
                folder = str(Path(root))
                prefix = "" if folder == "." else os.path.join(folder, "")  # ends in one sep
                yield from [prefix + name for name in names]
        elif path.is_file():
            yield str(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file or directory")
        else:
            raise InputError(f"{path}: no such file or directory")


def _read_whole(handle: BinaryIO, size: int) -> bytes:
    """Up to READ_WHOLE_BYTES of the file. A read allocates what it asks for, so ask for the
    size fstat gave (plus one byte, to notice a file that grew since) rather than for the
    limit: a megabyte allocated per file cost more than scanning a small pickle."""
    data = handle.read(min(size + 1, READ_WHOLE_BYTES))
    if len(data) > size:
        data += handle.read(READ_WHOLE_BYTES - len(data))
    return data


def scan_file(path: str | os.PathLike[str], *, trusted: Iterable[str] = (),
              limits: Limits | None = None) -> FileReport:
    """Scan one file; unreadable files become findings, never exceptions."""
    started = time.perf_counter()
    location = Location(str(path))
    ctx = ScanContext(limits or _DEFAULT_LIMITS, dispatch, frozenset(trusted))
    size = 0
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            size = info.st_size
            stream: BinaryIO = handle
            if stat.S_ISREG(info.st_mode) and size <= READ_WHOLE_BYTES:
                stream = io.BytesIO(_read_whole(handle, size))
            findings = dispatch(stream, location, ctx)
    except OSError as exc:
        findings = [rules.unreadable_finding(exc.strerror or str(exc), location)]
    formats = list(dict.fromkeys(ctx.formats))
    return FileReport(str(path), formats, findings, size, time.perf_counter() - started)


# A worker must have this many files to earn its start-up (a fork, then the lazily loaded
# format libraries imported again): below it one process is faster (bench/scan).
FILES_PER_WORKER = 256
# Tasks per worker: enough that a worker which drew the slow files does not finish long after
# the others, few enough that passing tasks and results between processes stays cheap.
TASKS_PER_WORKER = 8


def _workers(jobs: int | None, files: int) -> int:
    wanted = jobs if jobs is not None else (os.cpu_count() or 1)
    return max(1, min(wanted, files // FILES_PER_WORKER))


def scan(*paths: str | os.PathLike[str], trusted: Iterable[str] = (),
         limits: Limits | None = None, jobs: int | None = None) -> ScanResult:
    """Scan files and directories (recursively), in parallel across `jobs` processes (all
    cores by default) when there are many files. Raises InputError for a missing path."""
    if not paths:
        raise InputError("nothing to scan: give at least one file or directory")
    if jobs is not None and jobs < 1:
        raise InputError(f"jobs must be at least 1, not {jobs}")
    files = list(_files(paths))
    workers = _workers(jobs, len(files))
    if workers == 1:
        return ScanResult(_scan_files(files, tuple(trusted), limits))
    return ScanResult(_scan_stripes(files, tuple(trusted), limits, workers))


def _scan_files(paths: list[str], trusted: tuple[str, ...],
                limits: Limits | None) -> list[FileReport]:
    return [scan_file(p, trusted=trusted, limits=limits) for p in paths]


def _scan_stripes(files: list[str], trusted: tuple[str, ...], limits: Limits | None,
                  workers: int) -> list[FileReport]:
    """Reports in the order of `files`, from `workers` processes. Each task takes every n-th
    file rather than a run of neighbours: slow files (archives, joblib, HDF5) sit together in
    a folder, and the worker whose run held them all was still busy long after the others
    had finished (bench/scan's whole corpus: two workers were no faster than one)."""
    tasks = min(len(files), workers * TASKS_PER_WORKER)
    stripes = [files[i::tasks] for i in range(tasks)]
    reports: list[FileReport] = [None] * len(files)  # type: ignore[list-item]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        done = pool.map(_scan_files, stripes, [trusted] * tasks, [limits] * tasks)
        for i, stripe in enumerate(done):
            reports[i::tasks] = stripe
    return reports


__all__ = ["FileReport", "Limits", "ScanResult", "scan", "scan_file"]
