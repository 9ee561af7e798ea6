"""Compressed joblib files: zlib, gzip, bz2, lzma (.lzma, "alone") and xz streams, and the
"ZF" zlib files of joblib before 0.10, which joblib.load still reads.

joblib picks the decompressor by the first bytes alone (`_detect_compressor`), so the same
prefixes are recognised here, confirmed by decoding the first bytes so that a text file
starting with "x" is not taken for zlib. Decoding uses the standard library's readers
(joblib's own for bz2 and lzma; gzip's, which hands out data before it checks the CRC),
one block at a time into a spool, so nothing a loader would unpickle before a corrupt spot
is lost; member size, total size and compression ratio are enforced, so a decompression
bomb is a finding, not an out-of-memory. The content is then scanned by content detection.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, stream_size
from bastion.supplychain.scan.formats.base import HEAD_BYTES, FormatScanner
from bastion.supplychain.scan.formats.pickle_file import looks_like_pickle
from bastion.supplychain.scan.streams import decompress_to_spool, window

_INPUT_CHUNK = 64 * 1024
_TRIAL_OUTPUT = 64 * 1024
# The block the standard readers hand to a loader. Decoding in blocks of the same size
# recovers everything before a corrupt spot that a loader would have received.
_READ_SIZE = io.DEFAULT_BUFFER_SIZE
_DECODE_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)
# joblib's "ZF" files: the prefix, the decompressed length in hex padded to 19 characters,
# an optional space (older writers), then one zlib stream.
_ZFILE_PREFIX = b"ZF"
_ZFILE_LENGTH_END = len(_ZFILE_PREFIX) + 19


class _Reader(Protocol):
    def read1(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class _ZlibReader:
    """One zlib stream, as joblib's zlib files and "ZF" files hold (the standard library
    has no file reader for bare zlib streams)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflater = zlib.decompressobj()
        self._tail = b""

    def read1(self, size: int) -> bytes:
        while not self._inflater.eof:
            data = self._tail or self._raw.read(_INPUT_CHUNK)
            out = self._inflater.decompress(data, size)
            self._tail = self._inflater.unconsumed_tail
            if out:
                return out
            if not data:
                raise EOFError("compressed data ends before the end-of-stream marker")
        return b""

    def close(self) -> None:
        self._raw.close()


@dataclass(frozen=True)
class Codec:
    name: str
    signature: bytes  # the prefix joblib detects
    open: Callable[[BinaryIO], _Reader] | None  # None: no decoder in the standard library
    whole_blocks: bool = False  # decodes nothing before a whole block (up to 900 kB) is in


def _gzip_reader(raw: BinaryIO) -> _Reader:
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _bz2_reader(raw: BinaryIO) -> _Reader:
    return bz2.BZ2File(raw, "rb")


def _lzma_reader(raw: BinaryIO) -> _Reader:
    return lzma.LZMAFile(raw, "rb")  # both .xz and .lzma ("alone"), as joblib reads them


ZFILE = Codec("joblib-zfile", _ZFILE_PREFIX, _ZlibReader)
# In joblib's detection order.
CODECS = (
    Codec("zlib", b"\x78", _ZlibReader),
    Codec("gzip", b"\x1f\x8b", _gzip_reader),
    Codec("bz2", b"BZ", _bz2_reader, whole_blocks=True),
    Codec("lzma", b"\x5d\x00", _lzma_reader),
    Codec("xz", b"\xfd7zXZ", _lzma_reader),
    Codec("lz4", b"\x04\x22\x4d\x18", None),
)


def locate(head: bytes) -> tuple[Codec, int]:
    """The codec joblib would pick for these first bytes and where its stream starts."""
    if head.startswith(_ZFILE_PREFIX):
        try:
            int(head[len(_ZFILE_PREFIX) : _ZFILE_LENGTH_END], 16)
        except ValueError:
            raise ValueError("joblib ZF file without a valid length") from None
        start = _ZFILE_LENGTH_END + (head[_ZFILE_LENGTH_END : _ZFILE_LENGTH_END + 1] == b" ")
        return ZFILE, start
    for codec in CODECS:
        if head.startswith(codec.signature):
            return codec, 0
    raise ValueError("no compression signature")


def _sniff(head: bytes, stream: BinaryIO) -> bool:
    """joblib's prefix, and the first bytes decode: without error, or into a pickle before
    the error (a loader would already have unpickled that much)."""
    try:
        codec, start = locate(head)
    except ValueError:
        return False
    if codec.open is None:
        return True
    decoded, failed = _trial(codec.open, head[start:])
    if failed:
        return looks_like_pickle(decoded)
    # a file that ends before its first output is no stream (a text file reading "x"),
    # unless the codec needs a whole block first
    return bool(decoded) or len(head) == HEAD_BYTES or codec.whole_blocks


def _trial(open_reader: Callable[[BinaryIO], _Reader], data: bytes) -> tuple[bytes, bool]:
    """What the first bytes decode to, and whether decoding failed (the data running out
    is no failure: it is only the head of the file)."""
    reader = open_reader(io.BytesIO(data))
    decoded = b""
    try:
        while len(decoded) < _TRIAL_OUTPUT:
            out = reader.read1(_READ_SIZE)
            if not out:
                break
            decoded += out
    except EOFError:
        pass
    except _DECODE_ERRORS:
        return decoded, True
    return decoded, False


class _Pull:
    """Feeds decompress_to_spool one bounded read at a time. A corrupt or truncated stream
    ends the content and is kept in `problem`: loaders decompress while they unpickle, so
    what came before the break still reaches them."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self._done = False
        self.problem: str | None = None
        self.decoded = 0

    def __call__(self, size: int) -> bytes:
        if self._done:
            return b""
        try:
            out = self._reader.read1(min(size, _READ_SIZE))
        except _DECODE_ERRORS as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
            out = b""
        self._done = not out
        self.decoded += len(out)
        return out


def scan_compressed(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    codec, start = locate(stream.read(HEAD_BYTES))
    if codec.open is None:
        return [rules.unreadable_finding(
            f"{codec.name}-compressed joblib file; joblib loads it where the {codec.name} "
            "package is installed, but the scanner has no decoder for it", loc)]
    ctx.formats.append(codec.name)
    compressed_size = stream_size(stream) - start
    reader = codec.open(window(stream, start, compressed_size))
    pull = _Pull(reader)
    try:
        child = ctx.nested()
        content = decompress_to_spool(pull, ctx, f"{codec.name} stream", compressed_size)
    except LimitExceeded as exc:
        return [rules.limit_finding(str(exc), loc)]
    finally:
        reader.close()
    with content:
        if pull.problem and not pull.decoded:
            return [rules.unreadable_finding(f"{codec.name} stream: {pull.problem}", loc)]
        findings = []
        if pull.problem:
            findings.append(CMP_BROKEN.finding(
                f"{codec.name} stream breaks after {pull.decoded} decompressed bytes: "
                f"{pull.problem}",
                loc,
                evidence={"codec": codec.name, "decompressed_bytes": pull.decoded,
                          "error": pull.problem},
            ))
        findings.extend(ctx.dispatch(content, loc.inside(f"{codec.name}:decompressed"), child))
    return findings


CMP_BROKEN = rules.define(
    "BST-SCAN-CMP-001",
    "compressed-stream-broken",
    "The compressed stream is truncated or corrupt partway. Loaders decompress while they "
    "unpickle, so the content before the break still runs: it was scanned, but a broken "
    "stream is also a way to make scanners give up early.",
    "Do not load the file; obtain an intact copy and re-check it with `bastion scan PATH`.",
    Severity.MEDIUM,
)

# Not exclusive: a zip appended to the compressed bytes is read by zip readers from the end.
SCANNER = FormatScanner(name="compressed", sniff=_sniff, scan=scan_compressed)
