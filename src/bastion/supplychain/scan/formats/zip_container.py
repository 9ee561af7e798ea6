"""Zip archives: PyTorch checkpoints (any top folder, any member that is a pickle), NumPy
.npz and Keras v3 .keras files, and zips in general.

The central directory is parsed here rather than with `zipfile`, because loaders differ
from `zipfile`: PyTorch's reader ignores CRCs and odd flag bits and trusts the central
directory's names even when the local headers disagree, which `zipfile` rejects. A scanner
that refuses such a file (or reads it differently) is one an attacker can walk around.
Tensor storage is never read: only the first bytes of each member are sniffed.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, read_bounded
from bastion.supplychain.scan.formats import keras_config
from bastion.supplychain.scan.formats.base import HEAD_BYTES, FormatScanner
from bastion.supplychain.scan.formats.pickle_file import looks_like_pickle, scan_pickle_stream
from bastion.supplychain.scan.streams import Inflater, decompress_to_spool, window

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_MAX_COMMENT = 0xFFFF
_PICKLE_NAMES = (".pkl", ".pickle")


class ZipError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    method: int
    flags: int
    compressed_size: int
    size: int
    header_offset: int


def _find_eocd(stream: BinaryIO, size: int) -> int | None:
    tail_len = min(size, 22 + _MAX_COMMENT)
    stream.seek(size - tail_len)
    tail = stream.read(tail_len)
    at = tail.rfind(_EOCD)
    return None if at < 0 else size - tail_len + at


def read_directory(stream: BinaryIO) -> list[Member]:
    """Members as listed by the central directory (ZIP64 aware, prepended data allowed).

    With data before the archive, zipfile (numpy, keras) shifts every offset by its length
    while PyTorch's reader (miniz) takes the offsets as written: one file can point each
    at a different directory, so the members of both readings are returned."""
    size = stream.seek(0, 2)
    eocd = _find_eocd(stream, size)
    if eocd is None:
        raise ZipError("no end-of-central-directory record")
    stream.seek(eocd)
    record = stream.read(22)
    if len(record) < 22:
        raise ZipError("truncated end-of-central-directory record")
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", record)
    directory_end = eocd
    stream.seek(max(0, eocd - 20))
    if stream.read(4) == _ZIP64_LOCATOR:
        entries, cd_size, cd_offset = _zip64_directory(stream, eocd)
        directory_end = eocd - 20 - 56
    elif 0xFFFFFFFF in (cd_size, cd_offset):
        raise ZipError("ZIP64 sizes without a ZIP64 locator")
    # Data prepended to the archive shifts every offset (as zipfile and self-extractors do).
    shift = max(0, directory_end - cd_size - cd_offset)
    readings, errors = [], []
    for offset_shift in dict.fromkeys((shift, 0)):
        try:
            readings.append(_read_entries(stream, cd_offset, cd_size, entries, offset_shift))
        except ZipError as exc:
            errors.append(exc)
    if not readings:
        raise errors[0]
    return list(dict.fromkeys(member for reading in readings for member in reading))


def _read_entries(
    stream: BinaryIO, cd_offset: int, cd_size: int, entries: int, shift: int
) -> list[Member]:
    stream.seek(cd_offset + shift)
    directory = stream.read(cd_size)
    members, pos = [], 0
    while pos + 46 <= len(directory) and directory[pos : pos + 4] == _CENTRAL:
        fields = struct.unpack("<4s6H3L5H2L", directory[pos : pos + 46])
        flags, method, csize, usize = fields[3], fields[4], fields[8], fields[9]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        name = directory[pos + 46 : pos + 46 + name_len].decode("utf-8", "replace")
        extra = directory[pos + 46 + name_len : pos + 46 + name_len + extra_len]
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        members.append(Member(name, method, flags, csize, usize, offset + shift))
        pos += 46 + name_len + extra_len + comment_len
    if len(members) != entries:
        raise ZipError(f"central directory lists {len(members)} of {entries} members")
    return members


def _zip64_directory(stream: BinaryIO, eocd: int) -> tuple[int, int, int]:
    stream.seek(max(0, eocd - 20))
    locator = stream.read(20)
    (record_offset,) = struct.unpack("<Q", locator[8:16])
    stream.seek(record_offset)
    record = stream.read(56)
    if record[:4] != _ZIP64_EOCD:
        raise ZipError("ZIP64 end-of-central-directory record missing")
    entries, cd_size, cd_offset = struct.unpack("<3Q", record[32:56])
    return entries, cd_size, cd_offset


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack("<2H", extra[pos : pos + 4])
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            values = [v[0] for v in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
        pos += 4 + length
    return usize, csize, offset


def _data_offset(stream: BinaryIO, member: Member) -> tuple[int, str]:
    """Where the member's data starts (sized by the *local* header, as loaders do) and the
    local header's own name."""
    stream.seek(member.header_offset)
    header = stream.read(30)
    if len(header) < 30 or header[:4] != _LOCAL:
        raise ZipError(f"member {member.name!r} has no local header")
    name_len, extra_len = struct.unpack("<2H", header[26:30])
    local_name = stream.read(name_len).decode("utf-8", "replace")
    return member.header_offset + 30 + name_len + extra_len, local_name


def _decompressor(method: int, raw: BinaryIO) -> Any:
    if method == 8:
        return zlib.decompressobj(-15)
    if method == 12:
        return bz2.BZ2Decompressor()
    if method == 14:  # zip's LZMA: 2 version bytes, properties size, raw LZMA1 properties
        header = raw.read(4)
        props = raw.read(header[2] if len(header) == 4 else 0)
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
    return None


def open_member(stream: BinaryIO, member: Member, ctx: ScanContext) -> tuple[BinaryIO, str]:
    """A seekable stream of the member's content (a view if stored, a bounded spool if
    compressed) and the local header's name."""
    start, local_name = _data_offset(stream, member)
    if member.method == 0:
        return window(stream, start, member.size), local_name
    raw = window(stream, start, member.compressed_size)
    decompressor = _decompressor(member.method, raw)
    if decompressor is None:
        raise ZipError(f"member {member.name!r} uses unsupported compression {member.method}")
    inflater = Inflater(raw, decompressor)
    spool = decompress_to_spool(inflater.read, ctx, f"member {member.name}", member.compressed_size)
    return spool, local_name


def _is_keras_archive(names: set[str]) -> bool:
    """Keras reads the model from a top-level config.json; metadata and weights files are
    not needed for the config's code to run, so their absence proves nothing."""
    return "config.json" in names


def scan_zip(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    try:
        members = read_directory(stream)
    except (ZipError, struct.error) as exc:
        return [rules.unreadable_finding(f"zip archive: {exc}", loc)]
    if len(members) > ctx.limits.max_members:
        return [rules.limit_finding(f"more than {ctx.limits.max_members} zip members", loc)]
    keras = _is_keras_archive({m.name for m in members})
    if keras:
        ctx.formats.append("keras")
    findings: list[Finding] = []
    for member in members:
        if member.name.endswith("/"):
            continue
        member_loc = loc.inside(member.name)
        try:
            findings.extend(_scan_member(stream, member, member_loc, ctx, keras))
        except LimitExceeded as exc:
            findings.append(rules.limit_finding(str(exc), member_loc))
        except (ZipError, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
            findings.append(rules.unreadable_finding(f"{type(exc).__name__}: {exc}", member_loc))
    return findings


def _scan_member(
    stream: BinaryIO, member: Member, loc: Location, ctx: ScanContext, keras: bool
) -> list[Finding]:
    content, local_name = open_member(stream, member, ctx)
    findings: list[Finding] = []
    if local_name != member.name:
        findings.append(
            ZIP_NAME_MISMATCH.finding(
                f"Local header names {local_name!r} but the directory names {member.name!r}",
                loc,
                evidence={"central": member.name, "local": local_name},
            )
        )
    if keras and member.name == "config.json":
        data = read_bounded(content, ctx.limits.max_member_bytes, "config.json")
        return findings + keras_config.scan_config_bytes(data, loc)
    head = content.read(HEAD_BYTES)
    content.seek(0)
    if member.name.lower().endswith(_PICKLE_NAMES):  # torch's lookup ignores case
        # PyTorch unpickles data.pkl by name, so it is a pickle whatever it looks like,
        # read by torch's unpickler (never joblib's).
        ctx.formats.append("pickle")
        return findings + scan_pickle_stream(content, loc, ctx.nested(), joblib=False)
    if looks_like_pickle(head, strict=True) or _other_format(head, content):
        findings.extend(ctx.dispatch(content, loc, ctx.nested()))
    return findings


def _other_format(head: bytes, content: BinaryIO) -> bool:
    from bastion.supplychain.scan.detect import detect  # detection covers nested formats

    return any(fmt.name != "pickle" for fmt in detect(head, content))


def _sniff(head: bytes, stream: BinaryIO) -> bool:
    """A zip starts with a local header, or ends with a central directory that parses (a
    zip appended to another file; a stray signature in tensor bytes does not count)."""
    if head.startswith((_LOCAL, _EOCD)):
        return True
    try:
        return bool(read_directory(stream))
    except (ZipError, struct.error, OSError, ValueError):
        return False


ZIP_NAME_MISMATCH = rules.define(
    "BST-SCAN-ZIP-001",
    "zip-inconsistent-headers",
    "A zip member's local header and the central directory disagree on its name. Loaders "
    "read the central directory while some scanners read local headers (or reject the "
    "file), a gap used to hide payloads from scanners.",
    "Re-create the archive with a standard tool and re-check it with `bastion scan PATH`.",
    Severity.MEDIUM,
)

SCANNER = FormatScanner(name="zip", sniff=_sniff, scan=scan_zip)
