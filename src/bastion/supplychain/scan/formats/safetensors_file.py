"""safetensors: an 8-byte little-endian header length N, N bytes of UTF-8 JSON that give each
tensor's dtype, shape and byte range in the data section, then the data section itself.

The format cannot run code, but loaders index the data section with whatever the header
says. A malformed header is how parsers are crashed or confused; ranges that overlap, leave
holes or run past the end let two readers see different weights; bytes no tensor claims are
room for a hidden payload (a polyglot). The specification requires the data section to be
indexed entirely, without holes, and the reference loader refuses files that are not. Only
the header is read here: tensor data never is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import ScanContext, stream_size
from bastion.supplychain.scan.formats.base import FormatScanner

# The reference implementation refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000
# Bits per element of every dtype the reference implementation knows; the sub-byte float
# types pack several elements per byte.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
_METADATA_KEY = "__metadata__"
_JSON_SPACE = b" \t\r\n"
# A length whose top three bytes are set is not a header length but other content.
_IMPLAUSIBLE_LENGTH = 1 << 40
_LISTED = 20  # problems quoted in a finding's evidence; the count covers the rest
_QUOTED = 300  # characters of each problem quoted


@dataclass(frozen=True)
class _Tensor:
    name: str
    begin: int
    end: int
    expected_bytes: int


class _DuplicateKey(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON parsers disagree on which of two equal keys wins, so a header with duplicates
    describes different tensors to different loaders."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"key {key!r} appears more than once")
        result[key] = value
    return result


def _parse_header(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The header object, or why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as exc:
        return None, f"header JSON is ambiguous: {exc}"
    except (ValueError, RecursionError) as exc:
        return None, f"header is not valid JSON ({str(exc)[:200]})"
    if not isinstance(header, dict):
        return None, f"header is a JSON {type(header).__name__}, not an object"
    return header, None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expected_bytes(dtype: str, shape: list[int]) -> int | None:
    """Bytes the tensor occupies, or None when its elements do not fill whole bytes."""
    elements = 1
    for dim in shape:
        elements *= dim
    bits = elements * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


def _read_entry(name: str, entry: Any) -> tuple[_Tensor | None, list[str]]:
    """A tensor entry checked field by field: the tensor, or the reasons it is malformed."""
    if not isinstance(entry, dict):
        return None, [f"tensor {name!r}: entry is not an object"]
    problems = []
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        problems.append(f"tensor {name!r}: unknown dtype {str(dtype)[:40]!r}")
    if not (isinstance(shape, list) and all(_is_count(dim) for dim in shape)):
        problems.append(f"tensor {name!r}: shape is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        problems.append(f"tensor {name!r}: data_offsets is not [begin, end] in bytes")
    elif offsets[1] < offsets[0]:
        problems.append(f"tensor {name!r}: data_offsets end before they begin")
    if problems:
        return None, problems
    expected = _expected_bytes(dtype, shape)
    if expected is None:
        return None, [f"tensor {name!r}: {dtype} elements of shape {shape} do not fill whole bytes"]
    return _Tensor(name, offsets[0], offsets[1], expected), []


def _metadata_problems(metadata: Any) -> list[str]:
    if not isinstance(metadata, dict):
        return [f"{_METADATA_KEY} is not an object"]
    return [
        f"{_METADATA_KEY} entry {key!r} is not a string"
        for key, value in metadata.items()
        if not isinstance(value, str)
    ]


def _read_tensors(header: dict[str, Any]) -> tuple[list[_Tensor], list[str]]:
    tensors, problems = [], []
    for name, entry in header.items():
        if name == _METADATA_KEY:
            problems.extend(_metadata_problems(entry))
            continue
        tensor, entry_problems = _read_entry(name, entry)
        problems.extend(entry_problems)
        if tensor is not None:
            tensors.append(tensor)
    return tensors, problems


def _offset_problems(tensors: list[_Tensor], data_size: int) -> tuple[list[str], int]:
    """Ranges that disagree with their tensor, leave the data section, overlap or leave a
    hole; and how far the ranges cover the data section from its start."""
    problems = []
    for t in tensors:
        if t.end - t.begin != t.expected_bytes:
            problems.append(
                f"tensor {t.name!r}: range holds {t.end - t.begin} bytes, dtype and shape "
                f"need {t.expected_bytes}"
            )
        if t.end > data_size:
            problems.append(
                f"tensor {t.name!r}: range ends at {t.end}, past the {data_size}-byte data section"
            )
    covered = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin < covered:
            problems.append(f"tensor {t.name!r}: range [{t.begin}, {t.end}) overlaps another")
        elif t.begin > covered:
            problems.append(f"bytes [{covered}, {t.begin}) before tensor {t.name!r} are a hole")
        covered = max(covered, t.end)
    return problems, covered


def _finding(rule: rules.Rule, title: str, problems: list[str], loc: Location) -> Finding:
    quoted = [problem[:_QUOTED] for problem in problems[:_LISTED]]  # names can be huge
    return rule.finding(title, loc, evidence={"problems": quoted, "count": len(problems)})


def scan_safetensors(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    size = stream_size(stream)
    stream.seek(0)
    prefix = stream.read(8)
    if len(prefix) < 8:
        return [_finding(MALFORMED, "safetensors file ends inside its length prefix",
                         ["file shorter than 8 bytes"], loc)]
    header_len = int.from_bytes(prefix, "little")
    if header_len > MAX_HEADER_BYTES:
        problem = f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        return [_finding(MALFORMED, "safetensors header is too large", [problem], loc)]
    if 8 + header_len > size:
        problem = f"header of {header_len} bytes runs past the end of the {size}-byte file"
        return [_finding(MALFORMED, "safetensors header is truncated", [problem], loc)]
    header, problem = _parse_header(stream.read(header_len))
    if header is None:
        return [_finding(MALFORMED, "safetensors header is malformed", [str(problem)], loc.at(8))]
    tensors, problems = _read_tensors(header)
    findings = []
    if problems:
        findings.append(
            _finding(MALFORMED, "safetensors header has malformed entries", problems, loc.at(8))
        )
    data_start, data_size = 8 + header_len, size - 8 - header_len
    offset_problems, covered = _offset_problems(tensors, data_size)
    if offset_problems:
        findings.append(
            _finding(INCONSISTENT, "safetensors tensor ranges are inconsistent", offset_problems,
                     loc.at(data_start))
        )
    if covered < data_size:
        trailing = data_size - covered
        findings.append(
            TRAILING.finding(
                f"safetensors file has {trailing} bytes after its last tensor",
                loc.at(data_start + covered),
                evidence={"trailing_bytes": trailing, "offset": data_start + covered},
            )
        )
    return findings


def _sniff(head: bytes, stream: BinaryIO) -> bool:
    """A plausible header length followed by the start of a JSON object."""
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    if not 2 <= header_len < _IMPLAUSIBLE_LENGTH:
        return False
    body = head[8 : 8 + header_len].lstrip(_JSON_SPACE)
    return body[:1] == b"{" and body[1:].lstrip(_JSON_SPACE)[:1] in (b'"', b"}", b"")


MALFORMED = rules.define(
    "BST-SCAN-ST-001",
    "safetensors-malformed-header",
    "The safetensors header is not what the format requires: a length within bounds, UTF-8 "
    "JSON forming one object without duplicate keys, every tensor with a known dtype, a shape "
    "of non-negative integers and [begin, end] data offsets, and string-to-string "
    "__metadata__. Malformed headers are used to crash or confuse parsers, and loaders differ "
    "in what they accept.",
    "Do not load the file; re-export the weights with the safetensors library from a trusted "
    "copy and re-check with `bastion scan PATH`.",
    Severity.HIGH,
)
INCONSISTENT = rules.define(
    "BST-SCAN-ST-002",
    "safetensors-inconsistent-offsets",
    "Tensor byte ranges disagree with their dtype and shape, leave the data section, overlap "
    "or leave holes. The specification requires the data section to be indexed entirely "
    "without holes; inconsistent ranges make different readers see different weights and "
    "can hide data between tensors.",
    "Do not load the file; re-export the weights with the safetensors library from a trusted "
    "copy and re-check with `bastion scan PATH`.",
    Severity.HIGH,
)
TRAILING = rules.define(
    "BST-SCAN-ST-003",
    "safetensors-trailing-data",
    "Bytes follow the last tensor's range: no tensor claims them, so they are ignored by "
    "tolerant loaders and refused by the reference one. Appended data is how polyglot files "
    "carry a second payload (a pickle or archive) inside a file that looks like weights.",
    "Check where the extra bytes come from (the file was also scanned as every other format "
    "it parses as); re-export the weights with the safetensors library to drop them.",
    Severity.MEDIUM,
)

SCANNER = FormatScanner(name="safetensors", sniff=_sniff, scan=scan_safetensors)
