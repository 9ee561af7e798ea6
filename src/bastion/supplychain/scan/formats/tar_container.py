"""Tar archives, including PyTorch's legacy tar checkpoints, which torch.load still reads
(it tries `tarfile` first for any file that is not a zip).

A legacy checkpoint has the members "sys_info" (a pickle), "storages", "tensors" and
"pickle" (the object, unpickled last). "storages" is a count pickle, then per storage a
(key, location, storage type) pickle followed by an int64 element count and the raw
elements; then a pickle of storage views. "tensors" is a count pickle, then per tensor a
(key, storage id, type) pickle followed by an int32 rank, 4 padding bytes, the sizes and
strides (int64 each) and an int64 offset. The raw parts are skipped by computing their
length, so every pickle torch would unpickle is analysed and no tensor data is read.

Members are listed with `tarfile`, the way torch lists them, but read through bounded
views of the file: nothing is extracted and no link leads outside the archive. Other
members are scanned by content.
"""

from __future__ import annotations

import posixpath
import struct
import tarfile
from collections.abc import Callable
from typing import Any, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, stream_size
from bastion.supplychain.scan.formats.base import FormatScanner
from bastion.supplychain.scan.pickle_machine import (
    Call,
    Container,
    GlobalRef,
    Opaque,
    analyse_pickles,
)
from bastion.supplychain.scan.streams import decompress_to_spool, window

# Bytes per element for each storage class name torch maps to a dtype when it unpickles a
# legacy checkpoint (torch.serialization.StorageType; the module name is ignored there).
ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
    "ByteStorage": 1, "BoolStorage": 1, "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8, "QInt8Storage": 1, "QInt32Storage": 4, "QUInt8Storage": 1,
    "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}
# tarfile reads pax and GNU long-name headers whole into memory; real ones are tiny.
MAX_HEADER_BYTES = 1 << 20
_MAX_LINK_HOPS = 8
_SPARSE_READ = 64 * 1024
_STREAM_BREAKS = frozenset({"BST-SCAN-PKL-004", "BST-SCAN-LIMIT-001"})
# tarfile passes on errors of its own parsing (a bad number in a pax header) unwrapped.
_LISTING_ERRORS = (tarfile.TarError, LimitExceeded, ValueError, OSError, EOFError)


class _Malformed(Exception):
    """torch.load fails at this point of a legacy member; nothing after it runs."""


class _Unfollowable(Exception):
    """A value is computed at load time, so where torch reads next cannot be known."""


class _HeaderReader:
    """The file as tarfile reads it, refusing one read larger than a header can be."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_HEADER_BYTES:
            raise LimitExceeded(f"tar header larger than {MAX_HEADER_BYTES} bytes")
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _open_archive(stream: BinaryIO) -> tarfile.TarFile:
    """Reads the first header; tarfile leaves a file object it was given open."""
    return tarfile.open(fileobj=_HeaderReader(stream), mode="r:", errors="replace")


def list_members(tar: tarfile.TarFile, ctx: ScanContext) -> tuple[
        list[tarfile.TarInfo], Exception | None]:
    """The members as tarfile lists them, and what stopped the listing early."""
    members: list[tarfile.TarInfo] = []
    try:
        while (info := tar.next()) is not None:
            members.append(info)
            if len(members) > ctx.limits.max_members:
                raise LimitExceeded(f"more than {ctx.limits.max_members} tar members")
    except _LISTING_ERRORS as exc:
        return members, exc
    return members, None


def _listing_finding(error: Exception, loc: Location) -> Finding:
    if isinstance(error, LimitExceeded):
        return rules.limit_finding(str(error), loc)
    return rules.unreadable_finding(f"tar archive: {type(error).__name__}: {error}", loc)


def scan_tar(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    try:
        tar = _open_archive(stream)
    except _LISTING_ERRORS as exc:
        return [_listing_finding(exc, loc)]
    with tar:
        return _scan_archive(stream, tar, loc, ctx)


def _scan_archive(stream: BinaryIO, tar: tarfile.TarFile, loc: Location,
                  ctx: ScanContext) -> list[Finding]:
    members, error = list_members(tar, ctx)
    findings = [] if error is None else [_listing_finding(error, loc)]
    size = stream_size(stream)
    if error is None and 0 < size - tar.offset < tarfile.BLOCKSIZE:
        findings.append(rules.unreadable_finding("tar archive ends inside a header", loc))
    # torch reads the last member of each name (tarfile's getmember)
    legacy = {info.name: info for info in members if info.name in _LEGACY_PARSERS}
    if legacy:
        ctx.formats.append("torch-legacy-tar")
    for info in members:
        member_loc = loc.inside(info.name)
        if _has_content(info) and info.offset_data + _stored_size(info) > size:
            findings.append(rules.unreadable_finding(
                f"tar member data is truncated at byte {size - info.offset_data} of "
                f"{_stored_size(info)}", member_loc))
        try:
            parser = _LEGACY_PARSERS[info.name] if legacy.get(info.name) is info else None
            findings.extend(_scan_member(stream, tar, info, parser, members, member_loc, ctx))
        except LimitExceeded as exc:
            findings.append(rules.limit_finding(str(exc), member_loc))
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            findings.append(rules.unreadable_finding(f"{type(exc).__name__}: {exc}", member_loc))
    return findings


def _scan_member(stream: BinaryIO, tar: tarfile.TarFile, info: tarfile.TarInfo,
                 parser: _Parser | None, members: list[tarfile.TarInfo], loc: Location,
                 ctx: ScanContext) -> list[Finding]:
    if parser is not None and (info.islnk() or info.issym()):
        return _scan_legacy_link(stream, tar, info, members, parser, loc, ctx)
    if not _has_content(info):
        return []  # a directory, device or link: links are scanned as their target member
    child = ctx.nested()
    with _open_content(stream, tar, info, ctx) as content:
        if parser is not None:
            return parser(content, loc, child)
        return ctx.dispatch(content, loc, child)


def _has_content(info: tarfile.TarInfo) -> bool:
    """tarfile reads members of unknown types as regular files, and so does torch."""
    return not (info.isdir() or info.issym() or info.islnk() or info.ischr()
                or info.isblk() or info.isfifo())


def _stored_size(info: tarfile.TarInfo) -> int:
    if info.sparse is None:
        return info.size
    return sum(numbytes for _, numbytes in info.sparse)


def _open_content(stream: BinaryIO, tar: tarfile.TarFile, info: tarfile.TarInfo,
                  ctx: ScanContext) -> BinaryIO:
    """A bounded view of the member's data; a sparse member is expanded into a spool, its
    holes counted against the decompression limits."""
    if info.sparse is None:
        return window(stream, info.offset_data, info.size)
    extracted = tar.extractfile(info)
    return decompress_to_spool(lambda n: extracted.read(min(n, _SPARSE_READ)), ctx,
                               f"sparse member {info.name}", _stored_size(info))


def _scan_legacy_link(stream: BinaryIO, tar: tarfile.TarFile, info: tarfile.TarInfo,
                      members: list[tarfile.TarInfo], parser: _Parser, loc: Location,
                      ctx: ScanContext) -> list[Finding]:
    kind = "symbolic" if info.issym() else "hard"
    target = _link_target(info, members)
    findings = [TAR_LINK.finding(
        f"{info.name} is a {kind} link to {info.linkname!r}: torch.load reads that file "
        "instead, from the archive or from the loading machine",
        loc,
        evidence={"link": kind, "target": info.linkname,
                  "target_in_archive": None if target is None else target.name},
    )]
    if target is not None:
        with _open_content(stream, tar, target, ctx) as content:
            findings.extend(parser(content, loc, ctx.nested()))
    return findings


def _link_target(info: tarfile.TarInfo, members: list[tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """The member a link resolves to inside the archive, as tarfile resolves it: a hard link
    names an earlier member, a symbolic link a path relative to its own folder."""
    current = info
    for _ in range(_MAX_LINK_HOPS):
        if current.issym():
            folder = posixpath.dirname(current.name)
            name = "/".join(part for part in (folder, current.linkname) if part)
            candidates = members
        else:
            name = current.linkname
            candidates = members[: members.index(current)]
        name = posixpath.normpath(name)
        found = next((m for m in reversed(candidates) if posixpath.normpath(m.name) == name), None)
        if found is None or not (found.islnk() or found.issym()):
            return found if found is not None and _has_content(found) else None
        current = found
    return None


# -- legacy checkpoint members ---------------------------------------------------------


class _Records:
    """Reads a legacy member: pickles with raw binary records between them."""

    def __init__(self, content: BinaryIO, loc: Location, ctx: ScanContext) -> None:
        self.content, self.loc, self.ctx = content, loc, ctx
        self.size = content.seek(0, 2)
        content.seek(0)
        self.findings: list[Finding] = []
        self.opcodes = 0

    def pickle(self, what: str) -> Any:
        """The value of the next pickle, analysed as torch's unpickler would run it."""
        for machine, value in analyse_pickles(self.content, self.loc, self.ctx, max_pickles=1):
            self.findings.extend(machine.verdicts())
            self.opcodes += machine.opcodes
            if self.opcodes > self.ctx.limits.max_opcodes:
                raise LimitExceeded(f"more than {self.ctx.limits.max_opcodes} opcodes")
            if value is None and machine.findings and (
                machine.findings[-1].rule_id in _STREAM_BREAKS
            ):
                raise _Malformed(f"the {what} pickle breaks")
            if isinstance(value, (Call, Opaque, GlobalRef)):
                raise _Unfollowable(f"the {what} is computed when the file is loaded")
            return value
        raise _Malformed(f"the member ends before the {what}")

    def count(self, what: str) -> int:
        value = self.pickle(what)
        if not isinstance(value, int):
            raise _Malformed(f"the {what} is not an integer")
        return value

    def record(self, what: str) -> list[Any]:
        """torch unpacks each record into three names."""
        value = self.pickle(what)
        if not isinstance(value, Container):
            raise _Malformed(f"the {what} is not a tuple")
        if value.kind not in ("tuple", "list"):
            raise _Unfollowable(f"the {what} is a {value.kind}, unpacked in an order set at load")
        if len(value.items) != 3:
            raise _Malformed(f"the {what} has {len(value.items)} items, not 3")
        return value.items

    def integer(self, fmt: str, what: str) -> int:
        data = self.content.read(struct.calcsize(fmt))
        if len(data) < struct.calcsize(fmt):
            raise _Malformed(f"the member ends in the {what}")
        return struct.unpack(fmt, data)[0]

    def skip(self, nbytes: int, what: str) -> None:
        here = self.content.tell()
        if nbytes < 0 or here + nbytes > self.size:
            raise _Malformed(f"the {what} ({nbytes} bytes at {here}) runs past the member's end")
        self.content.seek(here + nbytes)

    def rest(self) -> None:
        """torch stops reading here; anything after is analysed as pickles all the same."""
        for machine, _ in analyse_pickles(self.content, self.loc, self.ctx):
            self.findings.extend(machine.verdicts())


def _element_size(storage_type: Any) -> int:
    if not isinstance(storage_type, GlobalRef):
        raise _Unfollowable("a storage type is not a class reference")
    size = ELEMENT_SIZES.get(storage_type.qualified.rpartition(".")[2])
    if size is None:
        raise _Unfollowable(f"storage type {storage_type.qualified} has no known element size")
    return size


def _read_storages(records: _Records) -> None:
    for index in range(records.count("storage count")):
        *_, storage_type = records.record(f"storage record {index}")
        element_size = _element_size(storage_type)
        elements = records.integer("<q", f"size of storage {index}")
        records.skip(elements * element_size, f"data of storage {index}")
    records.rest()  # the storage views pickle


def _read_tensors(records: _Records) -> None:
    for index in range(records.count("tensor count")):
        records.record(f"tensor record {index}")
        rank = records.integer("<i", f"rank of tensor {index}")
        if rank < 0:
            raise _Malformed(f"tensor {index} has a negative rank")
        records.skip(4 + 16 * rank + 8, f"sizes, strides and offset of tensor {index}")
    records.rest()


def _parse_with(read: Callable[[_Records], None]) -> _Parser:
    def parse(content: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
        ctx.formats.append("pickle")
        records = _Records(content, loc, ctx)
        try:
            read(records)
        except _Malformed as exc:
            records.findings.append(TAR_MALFORMED.finding(
                f"Legacy checkpoint member is malformed: {exc}; torch.load fails here",
                loc.at(records.content.tell()), evidence={"error": str(exc)}))
        except _Unfollowable as exc:
            records.findings.append(rules.unreadable_finding(
                f"{exc}; the rest of the member could not be checked", loc))
        except LimitExceeded as exc:
            records.findings.append(rules.limit_finding(str(exc), loc))
        return records.findings
    return parse


_Parser = Callable[[BinaryIO, Location, ScanContext], list[Finding]]
_LEGACY_PARSERS: dict[str, _Parser] = {
    "sys_info": _parse_with(_Records.rest),
    "pickle": _parse_with(_Records.rest),
    "storages": _parse_with(_read_storages),
    "tensors": _parse_with(_read_tensors),
}


def _sniff(head: bytes, stream: BinaryIO) -> bool:
    """A first block that tarfile accepts: its checksum is right (the ustar magic is
    optional: old-style archives lack it and torch reads them all the same)."""
    if len(head) < tarfile.BLOCKSIZE:  # what frombuf refuses first, without the exception
        return False
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "replace")
    except (tarfile.HeaderError, ValueError):
        return False
    return True


TAR_LINK = rules.define(
    "BST-SCAN-TAR-001",
    "torch-legacy-member-link",
    "A member that torch.load reads from a legacy tar checkpoint (pickle, storages, "
    "tensors, sys_info) is a link. torch then reads the linked file instead: another member, "
    "or, for an extracted symbolic link, any file on the loading machine. Checkpoints "
    "written by torch never contain links.",
    "Do not load the file; re-save the model with torch.save (zip format) or safetensors.",
    Severity.HIGH,
)
TAR_MALFORMED = rules.define(
    "BST-SCAN-TAR-002",
    "torch-legacy-member-malformed",
    "A storages or tensors record of a legacy PyTorch tar checkpoint is malformed, so "
    "torch.load fails at that point. What came before was analysed; a malformed member is "
    "also a way to make scanners give up early.",
    "Obtain an intact copy of the checkpoint and re-check it with `bastion scan PATH`.",
    Severity.MEDIUM,
)

# Not exclusive: a tar header's name field can hold a pickle, which pickle.load and
# joblib.load read from byte 0, and a zip can follow the archive; those are scanned too.
SCANNER = FormatScanner(name="tar", sniff=_sniff, scan=scan_tar)
