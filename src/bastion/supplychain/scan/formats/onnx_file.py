"""ONNX models: a protobuf `ModelProto` (no magic number).

ONNX runs no Python on load, but two things in a model reach outside it. Tensors can keep
their bytes in external files named by a `location`: an absolute path, a `..` climb or a
symbolic link makes the loader read any file the user can read (CVE-2024-27318 and
relatives) into the model's weights, from where outputs can leak it. And operators from a
custom domain only run when the runtime is given a native library implementing them, which
is arbitrary native code shipped with the model. The standard domains (`ai.onnx`,
`ai.onnx.ml`, `com.microsoft`, training) are implemented inside the runtimes and are not
flagged. External data is never loaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # onnx is imported when an ONNX file is scanned, not at start-up
    from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import ScanContext, read_bounded
from bastion.supplychain.scan.formats.base import FormatScanner

# Domains implemented by ONNX runtimes themselves; the three ONNX Runtime-internal ones
# appear in models that ONNX Runtime's optimiser saved.
STANDARD_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training",
    "ai.onnx.training", "com.microsoft.nchwc", "com.microsoft.experimental",
    "com.ms.internal.nhwc",
})  # fmt: skip
_PATH_KEYS = ("location", "basepath")
_LISTED = 20  # tensors or operators quoted in a finding's evidence
_QUOTED = 300  # characters of a path or name quoted

# ModelProto's top-level fields and their protobuf wire types (0 varint, 2 length-delimited).
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_IR_VERSION, _GRAPH = 1, 7
_MAX_TOP_LEVEL_FIELDS = 100_000


def _varint(stream: BinaryIO) -> int | None:
    value = 0
    for shift in range(0, 70, 7):
        byte = stream.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    return None


def _skip_field(stream: BinaryIO, wire_type: int, end: int) -> bool:
    if wire_type == 0:
        return _varint(stream) is not None
    sizes = {1: 8, 5: 4}
    if wire_type in sizes:
        length: int | None = sizes[wire_type]
    elif wire_type == 2:
        length = _varint(stream)
    else:
        return False  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
    if length is None or stream.tell() + length > end:
        return False
    stream.seek(length, os.SEEK_CUR)
    return True


def looks_like_onnx(head: bytes, stream: BinaryIO) -> bool:
    """Walk the top-level protobuf fields without parsing them: every field has a valid wire
    type (its schema's, for the fields ModelProto defines), the fields end exactly at the end
    of the stream, and a positive ir_version and a graph are present. Serialisers write
    ir_version first, but parsers accept any order and unknown fields, so neither is assumed.
    Cheap even for large models: nested messages (the weights) are skipped over."""
    if not head:
        return False
    end = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    seen: set[int] = set()
    ir_version = 0
    for _ in range(_MAX_TOP_LEVEL_FIELDS):
        if stream.tell() == end:
            return ir_version > 0 and _GRAPH in seen
        tag = _varint(stream)
        if tag is None:
            return False
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or _MODEL_FIELDS.get(number, wire_type) != wire_type:
            return False
        if number == _IR_VERSION:
            ir_version = _varint(stream) or 0
        elif not _skip_field(stream, wire_type, end):
            return False
        seen.add(number)
    # Structurally valid so far but padded with fields: parse it rather than skip it.
    return True


@dataclass(frozen=True)
class _Path:
    """An external-data path and what is wrong with it."""

    severity: Severity
    problem: str


def _subgraphs(attribute: AttributeProto) -> list[GraphProto]:
    graphs = list(attribute.graphs)
    if attribute.HasField("g"):
        graphs.append(attribute.g)
    return graphs


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse = list(attribute.sparse_tensors)
    if attribute.HasField("sparse_tensor"):
        sparse.append(attribute.sparse_tensor)
    for tensor in sparse:
        yield tensor.values
        yield tensor.indices


def _nested(nodes: Iterable[NodeProto]) -> list[GraphProto]:
    return [g for node in nodes for attribute in node.attribute for g in _subgraphs(attribute)]


def _graphs(model: ModelProto) -> Iterator[GraphProto]:
    """Every graph: the main one, the training graphs, and every subgraph (If, Loop, Scan
    bodies) nested in them or in local functions."""
    pending = [model.graph]
    for info in model.training_info:
        pending += [info.initialization, info.algorithm]
    for function in model.functions:
        pending += _nested(function.node)
    while pending:
        graph = pending.pop()
        yield graph
        pending += _nested(graph.node)


def _nodes(model: ModelProto) -> Iterator[NodeProto]:
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every tensor that can name external data: initializers of every graph and tensors
    held in node attributes, including function attribute defaults."""
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for function in model.functions:
        for attribute in function.attribute_proto:
            yield from _attribute_tensors(attribute)
    for node in _nodes(model):
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def _within(path: str, roots: list[str]) -> bool:
    return any(os.path.commonpath([path, root]) == root for root in roots)


def _link_problem(location: str, model_path: str) -> _Path | None:
    """A link along the location that leads outside the model's folder. The folder of the
    model file's own target counts as inside (a Hugging Face cache links both files into
    a blobs folder)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    candidate = os.path.normpath(os.path.join(folder, *re.split(r"[\\/]", location)))
    path, linked = candidate, False
    while len(path) > len(folder) and not linked:  # every prefix below the folder
        linked = os.path.islink(path)
        path = os.path.dirname(path)
    if not linked:
        return None
    target = os.path.realpath(candidate)
    roots = [os.path.realpath(folder), os.path.dirname(os.path.realpath(model_path))]
    if _within(target, roots):
        return None
    return _Path(Severity.HIGH, f"is a symbolic link to {target}, outside the model's folder")


def path_problem(location: str, model_path: str | None) -> _Path | None:
    """What is wrong with an external-data location, if anything. `model_path` is the model
    file on disk, when there is one, for following links."""
    if "\x00" in location:
        return _Path(Severity.HIGH, "contains a NUL byte, which C loaders stop at")
    windows = PureWindowsPath(location)
    if PurePosixPath(location).is_absolute() or windows.drive or windows.root:
        return _Path(Severity.CRITICAL, "is an absolute path")
    if ".." in re.split(r"[\\/]", location):
        return _Path(Severity.CRITICAL, "climbs out of the model's folder with '..'")
    if model_path is None:
        return None
    return _link_problem(location, model_path)


def _external_data_findings(model: ModelProto, loc: Location) -> list[Finding]:
    model_path = loc.path if loc.member is None else None
    problems: dict[tuple[str, str], tuple[_Path, list[str]]] = {}
    for tensor in _tensors(model):
        for entry in tensor.external_data:
            if entry.key not in _PATH_KEYS or not entry.value:
                continue
            problem = path_problem(entry.value, model_path)
            if problem is not None:
                problems.setdefault((entry.key, entry.value), (problem, []))[1].append(tensor.name)
    return [
        EXTERNAL_PATH.finding(
            f"ONNX external data {key} {value[:_QUOTED]!r} {problem.problem}",
            loc,
            severity=problem.severity,
            evidence={key: value[:_QUOTED], "problem": problem.problem,
                      "tensors": [name[:_QUOTED] for name in names[:_LISTED]],
                      "tensor_count": len(names)},
        )
        for (key, value), (problem, names) in problems.items()
    ]


def _custom_domain_findings(model: ModelProto, loc: Location) -> list[Finding]:
    local = {(f.domain, f.name) for f in model.functions}
    local_domains = {f.domain for f in model.functions}
    ops: dict[str, dict[str, int]] = {}
    for node in _nodes(model):
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            counts = ops.setdefault(node.domain, {})
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    imports = [*model.opset_import, *(o for f in model.functions for o in f.opset_import)]
    for opset in imports:
        if opset.domain not in STANDARD_DOMAINS and opset.domain not in local_domains:
            ops.setdefault(opset.domain, {})
    return [
        CUSTOM_DOMAIN.finding(
            f"ONNX model uses custom operator domain {domain[:_QUOTED]!r}, which needs a "
            "native library",
            loc,
            evidence={"domain": domain[:_QUOTED],
                      "operators": [op[:_QUOTED] for op in sorted(counts)[:_LISTED]],
                      "nodes": sum(counts.values())},
        )
        for domain, counts in sorted(ops.items())
    ]


def scan_onnx(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    import onnx
    from google.protobuf.message import DecodeError

    data = read_bounded(stream, ctx.limits.max_member_bytes, "ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return [rules.unreadable_finding(f"ONNX protobuf does not parse: {exc}"[:300], loc)]
    if model.ir_version <= 0 or not model.HasField("graph"):
        return [rules.unreadable_finding("ONNX model without ir_version or graph", loc)]
    return _external_data_findings(model, loc) + _custom_domain_findings(model, loc)


EXTERNAL_PATH = rules.define(
    "BST-SCAN-ONNX-001",
    "onnx-external-data-path",
    "A tensor's external data location is an absolute path, climbs out of the model's folder "
    "with '..', or is a symbolic link leading outside it. Loading the model then reads "
    "whatever file the location names (SSH keys, credentials, /etc/passwd) into the weights, "
    "from where model outputs or re-saved copies can leak it.",
    "Do not load the model. External data must be plain relative files next to the model; "
    "re-save it with onnx.save_model(..., save_as_external_data=True) from a trusted copy.",
    Severity.CRITICAL,
)
CUSTOM_DOMAIN = rules.define(
    "BST-SCAN-ONNX-002",
    "onnx-custom-operator-domain",
    "The model uses operators from a custom domain. ONNX runtimes only run them once a native "
    "custom-operator library is registered, and that library is arbitrary native code that "
    "usually ships with the model.",
    "Only register custom-operator libraries built from source you trust; prefer models that "
    "use the standard ONNX operator sets.",
    Severity.MEDIUM,
)

SCANNER = FormatScanner(name="onnx", sniff=looks_like_onnx, scan=scan_onnx)
