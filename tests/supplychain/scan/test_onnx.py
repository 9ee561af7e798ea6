"""ONNX: a real skl2onnx model is clean; external-data paths that leave the model's folder
and custom operator domains give findings; corrupt protobufs never raise."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bastion.findings import Location, Severity
from bastion.supplychain.scan import scan_file
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.formats import onnx_file

EXTERNAL, CUSTOM = "BST-SCAN-ONNX-001", "BST-SCAN-ONNX-002"
OPSET = [helper.make_opsetid("", 17)]


@pytest.fixture(scope="module")
def iris_onnx() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500, random_state=0).fit(x, y)
    return to_onnx(classifier, x[:1].astype(np.float32)).SerializeToString()


def external_tensor(name: str, location: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def add_graph(initializers=(), nodes=None, opsets=OPSET, functions=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = nodes or [helper.make_node("Add", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=list(opsets), functions=list(functions))


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def rule_ids(findings) -> set[str]:
    return {f.rule_id for f in findings}


def scan_bytes(data: bytes, loc: Location | None = None):
    loc = loc or Location("model.onnx")
    return onnx_file.scan_onnx(io.BytesIO(data), loc, ScanContext(Limits(), dispatch))


# --- benign -------------------------------------------------------------------------------


def test_skl2onnx_model_is_clean(tmp_path, iris_onnx):
    path = tmp_path / "iris.onnx"
    path.write_bytes(iris_onnx)
    report = scan_file(path)
    assert report.findings == []
    assert report.formats == ["onnx"]


def test_relative_external_data_is_clean(tmp_path):
    folder = tmp_path / "model"
    path = save(add_graph([external_tensor("w", "weights/w.bin")]), folder)
    (folder / "weights").mkdir()
    (folder / "weights" / "w.bin").write_bytes(b"\0" * 16)
    assert scan_file(path).findings == []


def test_onnx_saved_external_data_is_clean(tmp_path):
    raw = np.arange(4, dtype=np.float32).tobytes()
    model = add_graph([helper.make_tensor("w", TensorProto.FLOAT, [4], raw, raw=True)])
    path = tmp_path / "saved.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="saved.onnx.data", size_threshold=0)
    assert (tmp_path / "saved.onnx.data").exists()
    assert scan_file(path).findings == []


def test_link_inside_the_folder_is_clean(tmp_path):
    folder = tmp_path / "model"
    path = save(add_graph([external_tensor("w", "w.bin")]), folder)
    (folder / "real.bin").write_bytes(b"\0" * 16)
    os.symlink("real.bin", folder / "w.bin")
    assert scan_file(path).findings == []


def test_hugging_face_cache_layout_is_clean(tmp_path):
    """Snapshots link every file into a shared blobs folder."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / "aaa").write_bytes(add_graph([external_tensor("w", "model.onnx_data")])
                                .SerializeToString())
    (blobs / "bbb").write_bytes(b"\0" * 16)
    os.symlink("../../blobs/aaa", snapshot / "model.onnx")
    os.symlink("../../blobs/bbb", snapshot / "model.onnx_data")
    assert scan_file(snapshot / "model.onnx").findings == []


def test_standard_domains_are_not_flagged():
    nodes = [
        helper.make_node("Add", ["x", "w"], ["a"]),
        helper.make_node("FusedMatMul", ["a", "w"], ["b"], domain="com.microsoft"),
        helper.make_node("Normalizer", ["b"], ["y"], domain="ai.onnx.ml"),
    ]
    opsets = [*OPSET, helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3)]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    assert scan_bytes(add_graph([weights], nodes, opsets).SerializeToString()) == []


def test_local_function_domain_is_not_flagged():
    function = helper.make_function(
        "my.functions", "AddTwice", ["a", "b"], ["c"],
        [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Add", ["t", "b"], ["c"])],
        OPSET,
    )
    nodes = [helper.make_node("AddTwice", ["x", "w"], ["y"], domain="my.functions")]
    opsets = [*OPSET, helper.make_opsetid("my.functions", 1)]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    model = add_graph([weights], nodes, opsets, [function])
    assert scan_bytes(model.SerializeToString()) == []


# --- external data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("/etc/passwd", "absolute path"),
        ("../../secret", "'..'"),
        ("weights/../../secret", "'..'"),
        ("..\\..\\secret", "'..'"),
        ("C:\\Windows\\win.ini", "absolute path"),
        ("\\\\server\\share\\w.bin", "absolute path"),
    ],
)
def test_external_data_leaving_the_folder_is_critical(tmp_path, location, problem):
    path = save(add_graph([external_tensor("w", location)]), tmp_path)
    findings = scan_file(path).findings
    assert rule_ids(findings) == {EXTERNAL}
    finding = findings[0]
    assert finding.severity is Severity.CRITICAL
    assert problem in finding.evidence["problem"]
    assert finding.evidence["location"] == location
    assert finding.evidence["tensors"] == ["w"]


def test_link_leading_outside_the_folder_is_high(tmp_path):
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("not for the model")
    folder = tmp_path / "model"
    path = save(add_graph([external_tensor("w", "w.bin")]), folder)
    os.symlink(secret, folder / "w.bin")
    findings = scan_file(path).findings
    assert rule_ids(findings) == {EXTERNAL}
    assert findings[0].severity is Severity.HIGH
    assert "symbolic link" in findings[0].evidence["problem"]


def test_linked_folder_leading_outside_is_high(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    path = save(add_graph([external_tensor("w", "sub/w.bin")]), folder)
    os.symlink(tmp_path / "outside", folder / "sub")
    findings = scan_file(path).findings
    assert rule_ids(findings) == {EXTERNAL} and findings[0].severity is Severity.HIGH


def test_nul_byte_in_location():
    findings = scan_bytes(add_graph([external_tensor("w", "w.bin\x00../../etc")])
                          .SerializeToString())
    assert rule_ids(findings) == {EXTERNAL}


def test_links_are_not_followed_inside_archives(tmp_path):
    """A member of an archive has no folder on disk: only the path itself is judged."""
    data = add_graph([external_tensor("w", "w.bin")]).SerializeToString()
    assert scan_bytes(data, Location(str(tmp_path / "a.zip"), "model.onnx")) == []


def test_same_location_is_reported_once_with_every_tensor():
    tensors = [external_tensor(name, "/etc/shadow") for name in ("w", "v", "u")]
    findings = scan_bytes(add_graph(tensors).SerializeToString())
    assert len(findings) == 1
    assert findings[0].evidence["tensor_count"] == 3


def test_external_data_in_a_subgraph():
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["w2"], ["out"])], "then", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        initializer=[external_tensor("w2", "../../../root/.ssh/id_rsa")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out"])], "else", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
    )
    condition = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_branch,
                              else_branch=else_branch)]
    findings = scan_bytes(add_graph([condition], nodes).SerializeToString())
    assert rule_ids(findings) == {EXTERNAL}
    assert findings[0].evidence["tensors"] == ["w2"]


def test_external_data_in_a_constant_node_of_a_function():
    secret = external_tensor("k", "/proc/self/environ")
    constant = helper.make_node("Constant", [], ["k"], value=secret)
    function = helper.make_function(
        "my.functions", "AddConst", ["a"], ["c"],
        [constant, helper.make_node("Add", ["a", "k"], ["c"])], OPSET,
    )
    nodes = [helper.make_node("AddConst", ["x"], ["y"], domain="my.functions")]
    opsets = [*OPSET, helper.make_opsetid("my.functions", 1)]
    findings = scan_bytes(add_graph([], nodes, opsets, [function]).SerializeToString())
    assert rule_ids(findings) == {EXTERNAL}


# --- custom domains -----------------------------------------------------------------------


def test_custom_domain_needs_a_native_library():
    nodes = [helper.make_node("Add", ["x", "w"], ["a"]),
             helper.make_node("Decrypt", ["a"], ["b"], domain="com.evil"),
             helper.make_node("Decrypt", ["b"], ["y"], domain="com.evil")]
    opsets = [*OPSET, helper.make_opsetid("com.evil", 1)]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    findings = scan_bytes(add_graph([weights], nodes, opsets).SerializeToString())
    assert rule_ids(findings) == {CUSTOM}
    finding = findings[0]
    assert finding.severity is Severity.MEDIUM
    assert "native library" in finding.title
    assert finding.evidence == {"domain": "com.evil", "operators": ["Decrypt"], "nodes": 2}


def test_custom_domain_declared_but_unused_is_reported():
    opsets = [*OPSET, helper.make_opsetid("ai.onnx.contrib", 1)]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    findings = scan_bytes(add_graph([weights], None, opsets).SerializeToString())
    assert [f.evidence["domain"] for f in findings] == ["ai.onnx.contrib"]


# --- detection and robustness ---------------------------------------------------------------


def test_detected_by_content_not_name(tmp_path, iris_onnx):
    path = tmp_path / "model.bin"
    path.write_bytes(iris_onnx)
    assert scan_file(path).formats == ["onnx"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08",
        b"\x08\x00\x3a\x00",  # ir_version 0
        b"\x08\x07",  # no graph
        b"\x08\x07\x3a\xff\xff\xff\xff\x0f",  # graph longer than the file
        b"\x08\x07\x3b\x00",  # group wire type
        b"\x08\x07\x38\x01",  # graph as a varint
        b"hello world, not a protobuf",
    ],
)
def test_sniff_rejects_non_models(data):
    assert not onnx_file.looks_like_onnx(data, io.BytesIO(data))


def varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def reordered(model: onnx.ModelProto, padding: int = 0) -> bytes:
    """The same model with an unknown field first and ir_version last: protobuf parsers
    accept any order, so the scanner must too."""
    unknown = field(99, 7) * (padding + 1)
    opsets = b"".join(field(8, opset.SerializeToString()) for opset in model.opset_import)
    return unknown + field(7, model.graph.SerializeToString()) + opsets + field(1, 8)


def test_field_order_does_not_hide_a_model(tmp_path):
    data = reordered(add_graph([external_tensor("w", "/etc/passwd")]))
    assert onnx.load_model_from_string(data).graph.initializer[0].name == "w"
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    report = scan_file(path)
    assert report.formats == ["onnx"]
    assert rule_ids(report.findings) == {EXTERNAL}


def test_padding_with_fields_does_not_hide_a_model(monkeypatch):
    monkeypatch.setattr(onnx_file, "_MAX_TOP_LEVEL_FIELDS", 10)
    data = reordered(add_graph([external_tensor("w", "/etc/passwd")]), padding=50)
    assert onnx_file.looks_like_onnx(data, io.BytesIO(data))
    assert rule_ids(scan_bytes(data)) == {EXTERNAL}


def test_corrupt_graph_is_unreadable(iris_onnx):
    graph_start = iris_onnx.index(b"\x3a")
    corrupt = bytearray(iris_onnx)
    corrupt[graph_start + 3 : graph_start + 40] = b"\xff" * 37
    findings = dispatch(io.BytesIO(bytes(corrupt)), Location("m.onnx"),
                        ScanContext(Limits(), dispatch))
    assert rule_ids(findings) == {"BST-SCAN-READ-001"}


def test_every_truncation_never_raises(iris_onnx):
    for cut in range(0, len(iris_onnx), 7):
        findings = dispatch(io.BytesIO(iris_onnx[:cut]), Location("m.onnx"),
                            ScanContext(Limits(), dispatch))
        assert isinstance(findings, list)


def test_random_mutations_never_raise(iris_onnx):
    rng = np.random.default_rng(0)
    for _ in range(200):
        data = bytearray(iris_onnx)
        for position in rng.integers(0, len(data), size=4):
            data[position] = int(rng.integers(0, 256))
        findings = dispatch(io.BytesIO(bytes(data)), Location("m.onnx"),
                            ScanContext(Limits(), dispatch))
        assert isinstance(findings, list)


def test_oversized_model_is_a_limit_finding(iris_onnx):
    limits = Limits(max_member_bytes=100)
    findings = dispatch(io.BytesIO(iris_onnx), Location("m.onnx"), ScanContext(limits, dispatch))
    assert rule_ids(findings) == {"BST-SCAN-LIMIT-001"}
