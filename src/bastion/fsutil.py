"""Writing files so that a crash never leaves one half-written: temporary file in the same
folder, fsync, rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bastion.errors import InputError


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def read_limited(
    path: str | os.PathLike[str], what: str, limit: int, *, missing: str | None = None
) -> bytes:
    """A small file given by the user (a key, a signature), read in one go: at most
    `limit` + 1 bytes, so the caller can refuse an oversized one in its own terms. A missing
    or unreadable file is an InputError naming `what` (or the `missing` message)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(missing or f"no such {what} file: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
