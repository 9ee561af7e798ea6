"""GGUF (llama.cpp and friends): magic "GGUF", a version, the tensor and metadata counts,
typed metadata key/value pairs, tensor descriptions, then aligned tensor data.

GGUF cannot run code by itself, but two things in it are attack surface. Its parsers trust
lengths and counts from the file (several memory-safety CVEs in GGUF readers came from
that), so every length, count and offset is checked against the file before it is used.
And the chat template in the metadata is a Jinja program the inference server renders for
every prompt: it is parsed (never rendered) and checked for template injection. Tensor data
is never read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules

if TYPE_CHECKING:
    from bastion.supplychain.scan import chat_template
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, stream_size
from bastion.supplychain.scan.formats.base import FormatScanner

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: loaders index a fixed-size array with n_dims
MAX_KEY_BYTES = 65_535
MAX_ARRAY_DEPTH = 4
MAX_TEMPLATE_BYTES = 4 * 1024**2
# Array items and tensors walked one by one; vocabularies hold a few hundred thousand.
MAX_ITEMS = 10_000_000
_CHAT_TEMPLATE = "chat_template"
_LISTED = 20  # problems quoted in a finding's evidence; the count covers the rest
_QUOTED = 300  # characters of each problem or construct quoted
_CHUNK = 1 << 20

# Metadata value types: struct code of the fixed-size ones; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# ggml tensor types: (elements per block, bytes per block).
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}  # fmt: skip


class _Malformed(ValueError):
    """The structure breaks here; nothing after this point can be located."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class _Reader:
    """Bounds-checked reads over the stream, buffered in large chunks because metadata holds
    hundreds of thousands of small strings (the vocabulary)."""

    def __init__(self, stream: BinaryIO, size: int, order: str) -> None:
        self.stream, self.size, self.order = stream, size, order
        self.pos = 0
        self.items = 0
        self._buffer, self._buffer_start = b"", 0

    def count_items(self, n: int = 1) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise LimitExceeded(f"GGUF lists more than {MAX_ITEMS} metadata items and tensors")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip an array of strings; the hot loop of every model's vocabulary."""
        self.count_items(count)
        unpack = struct.Struct(self.order + "Q").unpack_from
        for _ in range(count):
            start = self.pos - self._buffer_start
            if start < 0 or start + 8 > len(self._buffer):
                self.take(8, what)
                self.pos -= 8
                start = 0
            (n,) = unpack(self._buffer, start)
            if n > self.remaining - 8:
                raise _Malformed(f"string in {what} declares {n} bytes, more than remain",
                                 self.pos)
            self.pos += 8 + n

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _Malformed(f"{what} needs {n} bytes, only {self.remaining} remain", self.pos)
        start = self.pos - self._buffer_start
        if start < 0 or start + n > len(self._buffer):
            self.stream.seek(self.pos)
            self._buffer, self._buffer_start = self.stream.read(max(n, _CHUNK)), self.pos
            start = 0
            if len(self._buffer) < n:  # the file shrank while it was being scanned
                raise _Malformed(f"{what} is cut short by the end of the file", self.pos)
        self.pos += n
        return self._buffer[start : start + n]

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise _Malformed(f"{what} needs {n} bytes, only {self.remaining} remain", self.pos)
        self.pos += n

    def scalar(self, code: str, what: str) -> int | float | bool:
        fmt = self.order + code
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("Q", what))

    def length(self, what: str) -> int:
        n = self.u64(f"length of {what}")
        if n > self.remaining:
            raise _Malformed(
                f"{what} declares {n} bytes, only {self.remaining} remain", self.pos - 8
            )
        return n


@dataclass
class _Tensor:
    name: str
    dims: list[int]
    ggml_type: int
    offset: int


@dataclass
class _Parsed:
    version: int = 0
    alignment: int = DEFAULT_ALIGNMENT
    templates: dict[str, str] = field(default_factory=dict)
    tensors: list[_Tensor] = field(default_factory=list)
    metadata_problems: list[str] = field(default_factory=list)
    tensor_problems: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)
    data_start: int = 0


def _is_template_key(key: str) -> bool:
    return key.endswith(_CHAT_TEMPLATE) or f"{_CHAT_TEMPLATE}." in key


def _header(reader: _Reader, parsed: _Parsed) -> tuple[int, int]:
    reader.take(4, "magic")
    version = reader.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise _Malformed(f"unsupported GGUF version {version}", 4)
    parsed.version = version
    tensor_count, kv_count = reader.u64("tensor count"), reader.u64("metadata count")
    # Every pair needs a key length, a type and a value; every tensor at least 24 bytes.
    if kv_count * 13 > reader.remaining:
        raise _Malformed(f"declares {kv_count} metadata pairs, more than the file holds", 16)
    if tensor_count * 24 > reader.remaining:
        raise _Malformed(f"declares {tensor_count} tensors, more than the file holds", 8)
    return tensor_count, kv_count


def _skip_value(reader: _Reader, value_type: int, what: str, depth: int = 0) -> None:
    if value_type in _SCALARS:
        reader.skip(struct.calcsize(_SCALARS[value_type]), what)
    elif value_type == _STRING:
        reader.skip(reader.length(what), what)
    elif value_type == _ARRAY:
        _skip_array(reader, what, depth)
    else:
        raise _Malformed(f"{what} has unknown value type {value_type}", reader.pos - 4)


def _skip_array(reader: _Reader, what: str, depth: int) -> None:
    if depth >= MAX_ARRAY_DEPTH:
        raise _Malformed(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH}", reader.pos)
    item_type, count = reader.u32(f"item type of {what}"), reader.u64(f"length of {what}")
    if item_type in _SCALARS:
        reader.skip(count * struct.calcsize(_SCALARS[item_type]), what)
        return
    if item_type not in (_STRING, _ARRAY):
        raise _Malformed(f"{what} has unknown item type {item_type}", reader.pos - 12)
    smallest = 8 if item_type == _STRING else 12
    if count * smallest > reader.remaining:
        raise _Malformed(f"{what} declares {count} items, more than the file holds",
                         reader.pos - 8)
    if item_type == _STRING:
        reader.skip_strings(count, what)
        return
    for _ in range(count):
        reader.count_items()
        _skip_array(reader, what, depth + 1)


def _metadata_pair(reader: _Reader, parsed: _Parsed, seen: set[str]) -> None:
    key_len = reader.length("metadata key")
    if key_len > MAX_KEY_BYTES:
        raise _Malformed(f"metadata key of {key_len} bytes", reader.pos - 8)
    key = reader.take(key_len, "metadata key").decode("utf-8", "replace")
    if key in seen:
        parsed.metadata_problems.append(f"key {key!r} appears more than once")
    seen.add(key)
    value_type = reader.u32(f"type of {key!r}")
    if key == "general.alignment":
        _alignment(reader, parsed, value_type)
    elif value_type == _STRING and _is_template_key(key):
        _template(reader, parsed, key)
    else:
        _skip_value(reader, value_type, f"value of {key!r}")


def _alignment(reader: _Reader, parsed: _Parsed, value_type: int) -> None:
    if value_type != _UINT32:
        parsed.metadata_problems.append("general.alignment is not a uint32")
        _skip_value(reader, value_type, "value of 'general.alignment'")
        return
    alignment = reader.u32("general.alignment")
    if alignment == 0 or alignment & (alignment - 1):
        raise _Malformed(f"general.alignment {alignment} is not a power of two", reader.pos - 4)
    parsed.alignment = alignment


def _template(reader: _Reader, parsed: _Parsed, key: str) -> None:
    n = reader.length(key)
    if n > MAX_TEMPLATE_BYTES:
        parsed.metadata_problems.append(f"{key} is larger than {MAX_TEMPLATE_BYTES} bytes")
        reader.skip(n, key)
        return
    parsed.templates[key] = reader.take(n, key).decode("utf-8", "replace")


def _tensor_info(reader: _Reader, parsed: _Parsed) -> None:
    reader.count_items()
    name_len = reader.length("tensor name")
    if name_len > MAX_KEY_BYTES:
        raise _Malformed(f"tensor name of {name_len} bytes", reader.pos - 8)
    name = reader.take(name_len, "tensor name").decode("utf-8", "replace")
    n_dims = reader.u32(f"dimensions of {name!r}")
    if n_dims > MAX_DIMS:
        raise _Malformed(f"tensor {name!r} declares {n_dims} dimensions (at most {MAX_DIMS})",
                         reader.pos - 4)
    dims = [reader.u64(f"dimension of {name!r}") for _ in range(n_dims)]
    ggml_type, offset = reader.u32(f"type of {name!r}"), reader.u64(f"offset of {name!r}")
    parsed.tensors.append(_Tensor(name, dims, ggml_type, offset))


def _tensor_bytes(tensor: _Tensor, parsed: _Parsed) -> int | None:
    block = GGML_BLOCKS.get(tensor.ggml_type)
    if block is None:
        parsed.unknown_types.append(f"tensor {tensor.name!r} has ggml type {tensor.ggml_type}")
        return None
    per_block, block_bytes = block
    row = tensor.dims[0] if tensor.dims else 1
    if row % per_block:
        parsed.tensor_problems.append(
            f"tensor {tensor.name!r}: row of {row} elements is not whole {per_block}-element blocks"
        )
        return None
    rows = 1
    for dim in tensor.dims[1:]:
        rows *= dim
    return row // per_block * block_bytes * rows


def _check_tensors(parsed: _Parsed, file_size: int) -> None:
    problems = parsed.tensor_problems
    data_size = file_size - parsed.data_start
    names: set[str] = set()
    extents = []
    for tensor in parsed.tensors:
        if tensor.name in names:
            problems.append(f"tensor name {tensor.name!r} appears more than once")
        names.add(tensor.name)
        if tensor.offset % parsed.alignment:
            problems.append(f"tensor {tensor.name!r} offset {tensor.offset} is not aligned to "
                            f"{parsed.alignment}")
        nbytes = _tensor_bytes(tensor, parsed)
        end = tensor.offset + (nbytes or 0)
        if end > data_size:
            problems.append(f"tensor {tensor.name!r} data ends at {end}, past the "
                            f"{data_size}-byte data section")
        if nbytes is not None:
            extents.append((tensor.offset, end, tensor.name))
    covered = 0
    for begin, end, name in sorted(extents):
        if begin < covered:
            problems.append(f"tensor {name!r} data [{begin}, {end}) overlaps another tensor")
        covered = max(covered, end)


def _parse(reader: _Reader, parsed: _Parsed) -> None:
    tensor_count, kv_count = _header(reader, parsed)
    seen: set[str] = set()
    for _ in range(kv_count):
        _metadata_pair(reader, parsed, seen)
    for _ in range(tensor_count):
        _tensor_info(reader, parsed)
    align = parsed.alignment
    parsed.data_start = (reader.pos + align - 1) // align * align
    if parsed.tensors and parsed.data_start > reader.size:
        raise _Malformed("tensor data section starts past the end of the file", reader.pos)


def _byte_order(stream: BinaryIO) -> str:
    """GGUF is little-endian except files written for big-endian hosts, recognisable by a
    version that only reads as supported when byte-swapped."""
    stream.seek(4)
    raw = stream.read(4)
    little = int.from_bytes(raw, "little")
    return ">" if little not in SUPPORTED_VERSIONS and int.from_bytes(raw, "big") in (
        SUPPORTED_VERSIONS
    ) else "<"


def _template_findings(templates: dict[str, str], loc: Location) -> list[Finding]:
    from bastion.supplychain.scan import chat_template  # loads jinja2: only when needed

    findings = []
    for key, source in templates.items():
        try:
            constructs = chat_template.check(source)
        except chat_template.TemplateUnparseable as exc:
            findings.append(TEMPLATE_UNPARSEABLE.finding(
                f"Chat template {key!r} does not parse, so it cannot be checked",
                loc, evidence={"key": key, "error": str(exc)},
            ))
            continue
        if constructs:
            findings.append(TEMPLATE_INJECTION.finding(
                f"Chat template {key!r} contains template-injection constructs",
                loc,
                severity=max(c.severity for c in constructs),
                evidence={"key": key, "constructs": _listed(constructs),
                          "count": len(constructs)},
            ))
    return findings


def _listed(constructs: list[chat_template.Construct]) -> list[dict[str, object]]:
    """The most severe constructs first, as evidence."""
    ordered = sorted(constructs, key=lambda c: -c.severity)[:_LISTED]
    return [
        {"line": c.line, "severity": str(c.severity), "what": c.description[:_QUOTED]}
        for c in ordered
    ]


def _problems_finding(rule: rules.Rule, title: str, problems: list[str], loc: Location,
                      severity: Severity | None = None) -> list[Finding]:
    if not problems:
        return []
    quoted = [problem[:_QUOTED] for problem in problems[:_LISTED]]  # names can be long
    evidence = {"problems": quoted, "count": len(problems)}
    return [rule.finding(title, loc, severity=severity, evidence=evidence)]


def scan_gguf(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    size = stream_size(stream)
    reader = _Reader(stream, size, _byte_order(stream))
    parsed = _Parsed()
    findings: list[Finding] = []
    try:
        _parse(reader, parsed)
    except _Malformed as exc:
        findings.append(MALFORMED.finding(
            f"GGUF structure is malformed: {exc}", loc.at(exc.offset),
            evidence={"problem": str(exc), "offset": exc.offset},
        ))
    else:
        _check_tensors(parsed, size)
    findings += _problems_finding(MALFORMED, "GGUF metadata is inconsistent",
                                  parsed.metadata_problems, loc)
    data_loc = loc.at(parsed.data_start or None)
    findings += _problems_finding(TENSORS, "GGUF tensor descriptions are inconsistent",
                                  parsed.tensor_problems, data_loc)
    # ggml gains types over time: an unknown one is noted, its size cannot be checked.
    findings += _problems_finding(TENSORS, "GGUF tensors of unknown type were not size-checked",
                                  parsed.unknown_types, data_loc, Severity.LOW)
    # A template read before the structure broke is still what a tolerant loader renders.
    return findings + _template_findings(parsed.templates, loc)


TEMPLATE_INJECTION = rules.define(
    "BST-SCAN-GGUF-001",
    "gguf-chat-template-injection",
    "The chat template stored in the model reaches Python internals (dunder attributes, "
    "Jinja globals' function objects, runtime objects) or assembles such names at render "
    "time. The inference server renders the template with every prompt, so a template like "
    "this runs code on the server (server-side template injection).",
    "Do not serve the model with this template. Replace the template with a known-good one "
    "(from the model's original publisher) and render templates in a sandboxed Jinja "
    "environment. Re-check with `bastion scan PATH`.",
    Severity.CRITICAL,
)
MALFORMED = rules.define(
    "BST-SCAN-GGUF-002",
    "gguf-malformed-metadata",
    "The GGUF header or metadata is not what the format allows: an unsupported version, "
    "lengths or counts larger than the file, unknown value types, arrays nested too deeply, "
    "duplicate keys or an invalid alignment. GGUF readers trust these fields, and malformed "
    "ones are how memory-safety bugs in them are exploited.",
    "Do not load the file; obtain the model again from its publisher and re-check with "
    "`bastion scan PATH`.",
    Severity.HIGH,
)
TENSORS = rules.define(
    "BST-SCAN-GGUF-003",
    "gguf-inconsistent-tensors",
    "Tensor descriptions disagree with the file: data past its end, overlapping or "
    "misaligned tensors, unknown types or shapes that do not fill whole quantisation "
    "blocks. Loaders index memory with these fields.",
    "Do not load the file; obtain the model again from its publisher and re-check with "
    "`bastion scan PATH`.",
    Severity.HIGH,
)
TEMPLATE_UNPARSEABLE = rules.define(
    "BST-SCAN-GGUF-004",
    "gguf-chat-template-unparseable",
    "The chat template does not parse as Jinja, so it could not be checked for template "
    "injection. Inference servers use different template engines, and a template one engine "
    "rejects may still be rendered by another.",
    "Replace the template with a known-good one from the model's publisher and re-check.",
    Severity.HIGH,
)

SCANNER = FormatScanner(
    name="gguf", sniff=lambda head, stream: head.startswith(MAGIC), scan=scan_gguf
)
