"""Seekable views over parts of files, and bounded decompression into spooled files, so a
member of an archive is scanned without reading what the scan does not need."""

from __future__ import annotations

import abc
import io
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from bastion.supplychain.scan.context import LimitExceeded, ScanContext

_CHUNK = 1 << 20
_BLOCK = 64 * 1024
_SPOOL_IN_MEMORY = 64 << 20


class RangeReader(io.RawIOBase):
    """A read-only, seekable file of `length` bytes whose reads `read_at(offset, n)` serves:
    a slice of another file, or bytes sent over a pipe."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length, self._pos = length, 0

    @abc.abstractmethod
    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset`: each kind of range says where its bytes come from."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, origin + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        data = self.read_at(self._pos, want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class Window(RangeReader):
    """A view of `length` bytes of `base` starting at `start`."""

    def __init__(self, base: BinaryIO, start: int, length: int) -> None:
        super().__init__(length)
        self._base, self._start = base, start

    def read_at(self, offset: int, n: int) -> bytes:
        self._base.seek(self._start + offset)
        return self._base.read(n)


def window(base: BinaryIO, start: int, length: int) -> BinaryIO:
    return io.BufferedReader(Window(base, start, length), buffer_size=64 * 1024)


def decompress_to_spool(
    read_chunk: Callable[[int], bytes], ctx: ScanContext, what: str, compressed_size: int
) -> BinaryIO:
    """Pull decompressed chunks into a spooled temporary file, enforcing the member-size,
    total-size and compression-ratio limits as it goes (zip and decompression bombs)."""
    limits = ctx.limits
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - returned
    total = 0
    while True:
        chunk = read_chunk(_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        ctx.account(len(chunk))
        if total > limits.max_member_bytes:
            spool.close()
            raise LimitExceeded(f"{what} decompresses to more than {limits.max_member_bytes} bytes")
        ratio_floor = max(compressed_size, 1) * limits.max_compression_ratio
        if total > ratio_floor and total > _CHUNK:
            spool.close()
            raise LimitExceeded(
                f"{what} expands more than {limits.max_compression_ratio}x (decompression bomb)"
            )
        spool.write(chunk)
    spool.seek(0)
    return spool


class Inflater:
    """Reads a compressed stream `max_length` bytes at a time, so one small compressed block
    never expands to gigabytes in a single call (zlib, bz2 and lzma decompressors)."""

    def __init__(self, raw: BinaryIO, decompressor: Any) -> None:
        self._raw, self._d = raw, decompressor
        self._zlib = hasattr(decompressor, "unconsumed_tail")

    def read(self, max_length: int) -> bytes:
        while True:
            if self._zlib:
                pending = self._d.unconsumed_tail or self._raw.read(_BLOCK)
                out = self._d.decompress(pending, max_length)
            else:
                if self._d.eof:
                    return b""
                pending = self._raw.read(_BLOCK) if self._d.needs_input else b""
                out = self._d.decompress(pending, max_length=max_length)
            if out:
                return out
            if not pending:
                return b""
