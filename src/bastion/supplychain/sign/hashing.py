"""Hashing byte ranges of files in parallel, in bounded memory.

Every unit of work (a whole file, or one shard of it) is read with `os.preadv` into one
reusable buffer per worker thread, so memory stays at `workers x CHUNK` however large the
files are. hashlib (and blake3) release the GIL while they hash a buffer this size, so threads
use every core without the start-up and pickling cost of processes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bastion.errors import InputError

CHUNK = 1 << 19
HASH_TYPES = ("sha256", "blake2b", "blake3")


def _blake3() -> Any:
    try:
        import blake3
    except ImportError:
        raise InputError("hash type blake3 needs the blake3 package: pip install blake3") from None
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


_FACTORIES: dict[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "blake3": _blake3,
}


def new_hasher(hash_type: str) -> Any:
    """A fresh streaming hasher; InputError for a hash type the format does not define."""
    factory = _FACTORIES.get(hash_type)
    if factory is None:
        expected = ", ".join(HASH_TYPES)
        raise InputError(f"unknown hash type {hash_type!r} (expected one of: {expected})")
    return factory()


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """A few threads more than cores: while one waits for the disk another hashes, which
    keeps every core busy when the files are not in the page cache."""
    return min(32, available_cores() + 4)


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of one file; `end` None means up to the end of the file, whatever
    its length is by the time it is read (a file that grows or shrinks still hashes as is)."""

    key: Hashable
    path: str
    start: int = 0
    end: int | None = None
    size_hint: int = 0


@dataclass
class HashOutcome:
    digests: dict[Hashable, bytes]
    errors: dict[Hashable, OSError]


_buffers = threading.local()


def _buffer() -> memoryview:
    view = getattr(_buffers, "view", None)
    if view is None:
        view = memoryview(bytearray(CHUNK))
        _buffers.view = view
    return view


def hash_span(span: Span, hash_type: str, follow_symlinks: bool) -> bytes:
    """Digest of one span. Opened with O_NOFOLLOW unless symlinks are allowed, so a file
    swapped for a symlink after the folder was listed fails instead of being followed."""
    hasher = new_hasher(hash_type)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(span.path, flags)
    try:
        remaining = None if span.end is None else span.end - span.start
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, span.start, remaining or 0, os.POSIX_FADV_SEQUENTIAL)
        view = _buffer()
        offset = span.start
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            got = os.preadv(fd, [view[:want]], offset)
            if got == 0:
                break
            hasher.update(view[:got])
            offset += got
            if remaining is not None:
                remaining -= got
    finally:
        os.close(fd)
    return hasher.digest()


def hash_spans(
    spans: Iterable[Span],
    hash_type: str,
    *,
    workers: int | None = None,
    follow_symlinks: bool = False,
) -> HashOutcome:
    """Hash every span across `workers` threads (default: `default_workers()`), largest first
    so no core idles at the end.
    I/O errors are collected per span, for the caller to turn into the right message."""
    new_hasher(hash_type)  # fail on an unknown or unavailable hash type before any work
    ordered = sorted(spans, key=lambda s: s.size_hint, reverse=True)
    outcome = HashOutcome({}, {})
    if not ordered:
        return outcome
    count = max(1, min(workers or default_workers(), len(ordered)))
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="bastion-hash") as pool:
        futures = {
            span.key: pool.submit(hash_span, span, hash_type, follow_symlinks) for span in ordered
        }
        for key, future in futures.items():
            try:
                outcome.digests[key] = future.result()
            except OSError as exc:
                outcome.errors[key] = exc
    return outcome
