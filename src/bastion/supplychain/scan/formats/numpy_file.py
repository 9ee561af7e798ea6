"""NumPy .npy files: a magic number, a format version, a header that is a Python literal
dict (descr, fortran_order, shape), then the array data.

An object dtype (or a structured dtype with an object field) means the data is a pickle,
which `numpy.load(allow_pickle=True)` unpickles. The header is parsed the way numpy parses
it, with `ast.literal_eval` and numpy's own descriptor parser, so nothing in it is run.
.npz files are zips of .npy members and are read by the zip scanner.
"""

from __future__ import annotations

import ast
import io
import math
import struct
import tokenize
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, stream_size
from bastion.supplychain.scan.formats import tar_container, zip_container
from bastion.supplychain.scan.formats.base import HEAD_BYTES, FormatScanner
from bastion.supplychain.scan.pickle_machine import analyse_pickles

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"\x93NUMPY"
# Format version -> (header length field, header encoding), as numpy defines them.
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
_KEYS = {"descr", "fortran_order", "shape"}
# numpy itself refuses headers over 10,000 characters unless allow_pickle=True, which an
# object array needs anyway. Parsing a literal costs time and memory, so stop far above
# any real header instead.
MAX_HEADER_BYTES = 1 << 20
_DTYPE_ERRORS = (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError)


class HeaderError(ValueError):
    """The header is one numpy.load would refuse."""


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int


def read_header(stream: BinaryIO) -> Header:
    """Parse and validate the header at the stream's start, as numpy.load would."""
    prefix = stream.read(len(MAGIC) + 2)
    if len(prefix) < len(MAGIC) + 2 or not prefix.startswith(MAGIC):
        raise HeaderError("truncated before the format version")
    version = (prefix[-2], prefix[-1])
    if version not in _VERSIONS:
        raise HeaderError(f"unsupported format version {version[0]}.{version[1]}")
    length_format, encoding = _VERSIONS[version]
    field = stream.read(struct.calcsize(length_format))
    if len(field) < struct.calcsize(length_format):
        raise HeaderError("truncated in the header length")
    (length,) = struct.unpack(length_format, field)
    data_offset = len(prefix) + len(field) + length
    if data_offset > stream_size(stream):
        raise HeaderError(f"header of {length} bytes runs past the end of the file")
    if length > MAX_HEADER_BYTES:
        raise LimitExceeded(f"NumPy header larger than {MAX_HEADER_BYTES} bytes")
    try:
        text = stream.read(length).decode(encoding)
    except UnicodeDecodeError as exc:
        raise HeaderError(f"header is not {encoding} text: {exc}") from None
    shape, dtype = _validate(_parse_literal(text, version))
    return Header(shape, dtype, data_offset)


def _parse_literal(text: str, version: tuple[int, int]) -> Any:
    """literal_eval evaluates literals only; like numpy, retry headers written by Python 2
    (integers with an 'L' suffix) for format versions 1.0 and 2.0."""
    try:
        return ast.literal_eval(text)
    except SyntaxError as exc:
        if version > (2, 0):
            raise HeaderError(f"header is not a Python literal: {exc.msg}") from None
    except (ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise HeaderError(f"header is not a Python literal: {exc}") from None
    try:
        return ast.literal_eval(_drop_long_suffixes(text))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError,
            tokenize.TokenError) as exc:
        raise HeaderError(f"header is not a Python literal: {exc}") from None


def _drop_long_suffixes(text: str) -> str:
    tokens, after_number = [], False
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if not (after_number and token.type == tokenize.NAME and token.string == "L"):
            tokens.append(token)
        after_number = token.type == tokenize.NUMBER
    return tokenize.untokenize(tokens)


def _validate(fields: Any) -> tuple[tuple[int, ...], np.dtype]:
    if not isinstance(fields, dict):
        raise HeaderError(f"header is a {type(fields).__name__}, not a dict")
    if fields.keys() != _KEYS:
        raise HeaderError(f"header keys are {sorted(map(repr, fields))}")
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(dim, int) for dim in shape):
        raise HeaderError(f"shape is not a tuple of integers: {shape!r}"[:200])
    if not isinstance(fields["fortran_order"], bool):
        raise HeaderError("fortran_order is not a bool")
    try:
        from numpy.lib import format as npy_format  # loaded on first use, not at start-up

        dtype = npy_format.descr_to_dtype(fields["descr"])
    except _DTYPE_ERRORS as exc:
        raise HeaderError(f"descr is not a valid dtype: {exc}"[:200]) from None
    return shape, dtype


def scan_npy(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    findings = _scan_array(stream, loc, ctx)
    return findings + _scan_other_readings(stream, loc, ctx)


def _scan_array(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    try:
        header = read_header(stream)
    except HeaderError as exc:
        return [rules.unreadable_finding(f"NumPy header: {exc}", loc)]
    size = stream_size(stream)
    if header.dtype.hasobject:
        return _scan_object_data(stream, header, size, loc, ctx)
    return _check_data_size(header, size, loc)


def _scan_other_readings(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    """Readers that do not start from the magic number: torch.load tries tarfile first (a
    header and data can be crafted to pass as a tar block), and zip readers look for an
    archive from the file's end. The scanner is exclusive because the magic number, an
    opcode, would make any .npy look like a pickle; these readings are checked here."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    findings: list[Finding] = []
    for reading in (tar_container.SCANNER, zip_container.SCANNER):
        stream.seek(0)
        if reading.sniff(head, stream):
            ctx.formats.append(reading.name)
            stream.seek(0)
            findings.extend(reading.scan(stream, loc, ctx))
    return findings


def _scan_object_data(stream: BinaryIO, header: Header, size: int, loc: Location,
                      ctx: ScanContext) -> list[Finding]:
    """numpy.load hands the data to pickle.load, so it is analysed as plain pickles (not
    joblib's reading, which would skip bytes that pickle.load executes)."""
    if header.data_offset == size:
        return [rules.unreadable_finding("object array without its pickled data", loc)]
    ctx.formats.append("pickle")
    stream.seek(header.data_offset)
    findings: list[Finding] = []
    for machine, _ in analyse_pickles(stream, loc, ctx):
        findings.extend(machine.verdicts())
    return findings


def _check_data_size(header: Header, size: int, loc: Location) -> list[Finding]:
    if any(dim < 0 for dim in header.shape):
        return [rules.unreadable_finding(f"NumPy shape {header.shape} is negative", loc)]
    expected = math.prod(header.shape) * header.dtype.itemsize
    actual = size - header.data_offset
    evidence = {"expected_bytes": expected, "actual_bytes": actual, "shape": list(header.shape),
                "dtype": str(header.dtype)}
    if actual < expected:
        return [rules.unreadable_finding(
            f"NumPy array data is truncated: {actual} of {expected} bytes", loc)]
    if actual > expected:
        return [NPY_TRAILING.finding(
            f"{actual - expected} bytes follow the array data, which numpy.load never reads",
            loc.at(header.data_offset + expected), evidence=evidence)]
    return []


NPY_TRAILING = rules.define(
    "BST-SCAN-NPY-001",
    "numpy-trailing-data",
    "Bytes follow the array data that the header describes. numpy.load never reads them "
    "and numpy never writes them; they are a place to hide a second payload for another "
    "reader (a zip appended to the file is found by zip readers from its end).",
    "Re-save the array with numpy.save and re-check it with `bastion scan PATH`.",
    Severity.MEDIUM,
)

SCANNER = FormatScanner(
    name="numpy",
    sniff=lambda head, stream: head.startswith(MAGIC),
    scan=scan_npy,
    exclusive=True,
)
