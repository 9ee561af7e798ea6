"""Keras: v3 `.keras` archives (config.json) and legacy `.h5` files (model_config attribute).
Lambda bytecode, module references and custom objects give findings; clean models do not;
broken HDF5 is a finding, never an exception. Keras itself is never needed."""

from __future__ import annotations

import base64
import faulthandler
import io
import json
import marshal
import multiprocessing
import os
import time
import zipfile
from pathlib import Path
from signal import SIGSEGV

import h5py
import numpy as np
import pytest

from bastion.findings import Location, Severity
from bastion.supplychain.scan import scan_file
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.formats import hdf5
from bastion.supplychain.scan.formats.keras_config import scan_config, scan_config_bytes

LAMBDA, MODULE, CUSTOM = "BST-SCAN-KERAS-001", "BST-SCAN-KERAS-002", "BST-SCAN-KERAS-003"
UNREADABLE = "BST-SCAN-READ-001"


def obj(module: str | None, class_name: str, config, registered_name=None) -> dict:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": registered_name}


def dense(name: str = "dense", activation="softmax") -> dict:
    return obj("keras.layers", "Dense", {
        "name": name, "trainable": True,
        "dtype": obj("keras", "DTypePolicy", {"name": "float32"}),
        "units": 3, "activation": activation, "use_bias": True,
        "kernel_initializer": obj("keras.initializers", "GlorotUniform", {"seed": None}),
        "bias_initializer": obj("keras.initializers", "Zeros", {}),
        "kernel_regularizer": None,
    }) | {"build_config": {"input_shape": [None, 4]}}


def sequential(*layers: dict) -> dict:
    inputs = obj("keras.layers", "InputLayer", {"batch_shape": [None, 4], "dtype": "float32",
                                                 "name": "input_layer"})
    model = obj("keras", "Sequential", {"name": "sequential", "layers": [inputs, *layers]})
    model["compile_config"] = {
        "optimizer": obj("keras.optimizers", "Adam", {"learning_rate": 0.001}),
        "loss": obj("keras.losses", "SparseCategoricalCrossentropy", {"from_logits": False}),
        "metrics": ["accuracy"],
    }
    return model


def lambda_code(marker: Path) -> str:
    """Base64 marshalled bytecode of a lambda that would create the marker file. It is
    serialised here and never run."""
    module = compile(f"lambda x: open({str(marker)!r}, 'w')", "<lambda>", "eval")
    code = next(c for c in module.co_consts if hasattr(c, "co_code"))  # compiled, never run
    return base64.b64encode(marshal.dumps(code)).decode()


def weights_h5() -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", data=np.zeros((4, 3), np.float32))
    return buffer.getvalue()


def keras_archive(path: Path, config: dict | bytes) -> Path:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    metadata = {"keras_version": "3.6.0", "date_saved": "2024-01-01@00:00:00"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(metadata))
        zf.writestr("config.json", raw)
        zf.writestr("model.weights.h5", weights_h5())
    return path


def legacy_h5(path: Path, model_config: dict | bytes | None, training_config=None,
              userblock: int = 0) -> Path:
    with h5py.File(path, "w", userblock_size=userblock) as h5:
        if model_config is not None:
            raw = model_config if isinstance(model_config, bytes) else json.dumps(model_config)
            h5.attrs["model_config"] = np.bytes_(raw)
        if training_config is not None:
            h5.attrs["training_config"] = np.bytes_(json.dumps(training_config))
        h5.attrs["keras_version"] = np.bytes_("2.15.0")
        h5.create_dataset("model_weights/dense/kernel", data=np.zeros((4, 3), np.float32))
    return path


def keras2_model(*layers: dict) -> dict:
    dense2 = {"class_name": "Dense", "config": {"name": "dense", "units": 3,
                                                "activation": "relu"}}
    return {"class_name": "Sequential", "config": {"name": "sequential",
                                                   "layers": [dense2, *layers]}}


def rule_ids(findings) -> set[str]:
    return {f.rule_id for f in findings}


def only(findings, rule_id: str):
    assert rule_ids(findings) == {rule_id}, findings
    assert len(findings) == 1, findings
    return findings[0]


# --- .keras archives ----------------------------------------------------------------------


def test_clean_dense_model(tmp_path):
    report = scan_file(keras_archive(tmp_path / "m.keras", sequential(dense())))
    assert report.findings == []
    assert {"zip", "keras", "hdf5"} <= set(report.formats)


def test_lambda_layer_is_critical(tmp_path):
    marker = tmp_path / "marker"
    layer = obj("keras.layers", "Lambda", {
        "name": "lambda",
        "function": {"class_name": "__lambda__",
                     "config": {"code": lambda_code(marker), "defaults": None, "closure": None}},
        "arguments": {},
    })
    report = scan_file(keras_archive(tmp_path / "m.keras", sequential(dense(), layer)))
    finding = only(report.findings, LAMBDA)
    assert finding.severity is Severity.CRITICAL
    assert finding.location.member == "config.json"
    assert "open" in finding.evidence["names_in_bytecode"]
    assert finding.evidence["path"] == "$.config.layers[2].config.function"
    assert not marker.exists()


def test_config_without_metadata_is_still_checked(tmp_path):
    marker = tmp_path / "marker"
    layer = obj("keras.layers", "Lambda", {
        "name": "lambda",
        "function": {"class_name": "__lambda__",
                     "config": {"code": lambda_code(marker), "defaults": None, "closure": None}},
    })
    path = tmp_path / "bare.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(sequential(layer)))
    assert only(scan_file(path).findings, LAMBDA).severity is Severity.CRITICAL
    assert not marker.exists()


def test_serialised_lambda_value_is_critical(tmp_path):
    marker = tmp_path / "marker"
    loss = {"class_name": "__lambda__", "config": {"value": [lambda_code(marker), None, None]}}
    model = sequential(dense())
    model["compile_config"]["loss"] = loss
    finding = only(scan_config(model, Location("config.json")), LAMBDA)
    assert "open" in finding.evidence["names_in_bytecode"]
    assert not marker.exists()


def test_os_system_reference_is_critical(tmp_path):
    model = sequential(dense(activation=obj("os", "function", "system", "system")))
    report = scan_file(keras_archive(tmp_path / "m.keras", model))
    finding = only(report.findings, MODULE)
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence["module"] == "os" and finding.evidence["name"] == "system"


@pytest.mark.parametrize(
    ("reference", "severity"),
    [
        (obj("subprocess", "Popen", {}), Severity.CRITICAL),
        (obj("builtins", "eval", {}), Severity.CRITICAL),
        (obj("keras.config", "function", "enable_unsafe_deserialization"), Severity.CRITICAL),
        (obj("keras.utils", "function", "get_file"), Severity.CRITICAL),
        (obj("keras.src.utils.python_utils", "function", "func_load"), Severity.CRITICAL),
        (obj("my_project.layers", "Attention", {}), Severity.HIGH),
        (obj("__main__", "function", "preprocess"), Severity.HIGH),
    ],
)
def test_module_references(reference, severity):
    finding = only(scan_config(sequential(dense(), reference), Location("c")), MODULE)
    assert finding.severity is severity


@pytest.mark.parametrize(
    "reference",
    [
        obj("keras.layers", "Dense", {}),
        obj("keras_hub.src.models.gemma.gemma_backbone", "GemmaBackbone", {},
            "keras_hub>GemmaBackbone"),
        obj("tf_keras.layers", "Dense", {}),
        obj("tensorflow.keras.layers", "Dense", {}),
        obj("builtins", "function", "relu"),
        obj("keras.activations", "function", "relu", "relu"),
    ],
)
def test_keras_references_are_clean(reference):
    assert scan_config(sequential(dense(), reference), Location("c")) == []


def test_custom_registered_object_is_medium():
    layer = obj("keras.layers", "MyBlock", {"units": 3}, "Custom>MyBlock")
    finding = only(scan_config(sequential(layer), Location("c")), CUSTOM)
    assert finding.severity is Severity.MEDIUM
    assert finding.evidence["registered_name"] == "Custom>MyBlock"


def test_repeated_reference_is_one_finding():
    layers = [dense(f"d{i}", activation=obj("os", "function", "system")) for i in range(5)]
    finding = only(scan_config(sequential(*layers), Location("c")), MODULE)
    assert finding.evidence["occurrences"] == 5


def test_invalid_config_json_is_unreadable(tmp_path):
    report = scan_file(keras_archive(tmp_path / "m.keras", b'{"class_name": "Seq'))
    assert rule_ids(report.findings) == {UNREADABLE}


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b""])
def test_config_bytes_never_raise(data):
    assert rule_ids(scan_config_bytes(data, Location("c"))) == {UNREADABLE}


def test_deeply_nested_config_is_walked_without_recursion():
    config: dict = {"leaf": obj("os", "function", "system")}
    for _ in range(900):
        config = {"config": config}
    assert rule_ids(scan_config(config, Location("c"))) == {MODULE}


# --- legacy .h5 ---------------------------------------------------------------------------


def test_clean_legacy_model(tmp_path):
    report = scan_file(legacy_h5(tmp_path / "m.h5", keras2_model(), {"loss": "mse"}))
    assert report.findings == []
    assert report.formats == ["hdf5", "keras-h5"]


def test_weights_only_h5_is_clean(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(weights_h5())
    report = scan_file(path)
    assert report.findings == [] and report.formats == ["hdf5"]


def test_keras2_lambda_layer_is_critical(tmp_path):
    marker = tmp_path / "marker"
    layer = {"class_name": "Lambda", "config": {
        "name": "lambda", "function": [lambda_code(marker), None, None],
        "function_type": "lambda", "module": "__main__", "output_shape": None,
        "output_shape_type": "raw", "output_shape_module": None, "arguments": {},
    }}
    report = scan_file(legacy_h5(tmp_path / "m.h5", keras2_model(layer)))
    finding = only(report.findings, LAMBDA)
    assert finding.location.member == "@model_config"
    assert "open" in finding.evidence["names_in_bytecode"]
    assert not marker.exists()


def test_keras2_lambda_without_type_is_critical():
    layer = {"class_name": "Lambda", "config": {"function": ["4wEAAAAAAAAA", None, None]}}
    only(scan_config(keras2_model(layer), Location("c")), LAMBDA)


def test_keras2_function_from_os_is_critical(tmp_path):
    layer = {"class_name": "Lambda", "config": {
        "name": "lambda", "function": "system", "function_type": "function", "module": "os",
        "arguments": {},
    }}
    finding = only(scan_file(legacy_h5(tmp_path / "m.h5", keras2_model(layer))).findings, MODULE)
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence["name"] == "system"


def test_training_config_is_checked(tmp_path):
    training = {"loss": obj("subprocess", "function", "getoutput"), "metrics": ["accuracy"]}
    path = legacy_h5(tmp_path / "m.h5", keras2_model(), training)
    finding = only(scan_file(path).findings, MODULE)
    assert finding.location.member == "@training_config"


def test_user_block_before_superblock(tmp_path):
    layer = {"class_name": "Lambda", "config": {"function": ["AAAA", None, None],
                                                "function_type": "lambda"}}
    path = legacy_h5(tmp_path / "m.h5", keras2_model(layer), userblock=1024)
    assert path.read_bytes()[:8] != hdf5.MAGIC
    report = scan_file(path)
    assert "hdf5" in report.formats
    assert rule_ids(report.findings) == {LAMBDA}


def test_model_config_not_json_is_unreadable(tmp_path):
    report = scan_file(legacy_h5(tmp_path / "m.h5", b"not json"))
    assert rule_ids(report.findings) == {UNREADABLE}


def test_model_config_of_wrong_type_is_unreadable(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = np.arange(3)
    assert rule_ids(scan_file(path).findings) == {UNREADABLE}


def test_corrupt_hdf5_is_unreadable(tmp_path):
    path = tmp_path / "broken.h5"
    rng = np.random.default_rng(0)
    path.write_bytes(hdf5.MAGIC + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    report = scan_file(path)
    assert rule_ids(report.findings) == {UNREADABLE}
    assert report.findings[0].severity is Severity.HIGH


def test_truncated_hdf5_never_raises(tmp_path):
    data = legacy_h5(tmp_path / "m.h5", keras2_model()).read_bytes()
    for cut in range(8, len(data), max(1, len(data) // 40)):
        findings = dispatch(io.BytesIO(data[:cut]), Location("m.h5"),
                            ScanContext(Limits(), dispatch))
        assert isinstance(findings, list)


def test_sniff_ignores_magic_at_other_offsets():
    data = b"\0" * 100 + hdf5.MAGIC + b"\0" * 1000
    assert not hdf5.SCANNER.sniff(data, io.BytesIO(data))


# --- the HDF5 library runs in a child process -----------------------------------------------


def test_parser_crash_is_a_finding(tmp_path, monkeypatch):
    """A segmentation fault in the HDF5 library (fuzzing finds them) kills only the child."""

    def crash(file):
        faulthandler.disable()  # no traceback dump from the child into the test output
        os.kill(os.getpid(), SIGSEGV)

    monkeypatch.setattr(hdf5, "_read_attributes", crash)
    report = scan_file(legacy_h5(tmp_path / "m.h5", keras2_model()))
    finding = only(report.findings, UNREADABLE)
    assert "crashed" in finding.title


def test_parser_hang_is_a_finding(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5, "PARSE_SECONDS", 0.5)
    monkeypatch.setattr(hdf5, "_read_attributes", lambda file: time.sleep(30))
    started = time.monotonic()
    finding = only(scan_file(legacy_h5(tmp_path / "m.h5", keras2_model())).findings, UNREADABLE)
    assert "did not finish" in finding.title
    assert time.monotonic() - started < 5


def test_parent_stream_is_left_usable(tmp_path):
    """The child reads through the parent, so the parent's file offsets stay its own."""
    path = legacy_h5(tmp_path / "m.h5", keras2_model())
    with open(path, "rb") as stream:
        head = stream.read(64)
        stream.seek(0)
        status, attributes = hdf5.read_keras_attributes(stream)
        stream.seek(0)
        assert stream.read(64) == head
    assert status == "done" and set(attributes) == {"model_config"}


def test_spawned_parser_where_fork_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5, "CAN_FORK", False)
    layer = {"class_name": "Lambda", "config": {"function": ["AAAA", None, None],
                                                "function_type": "lambda"}}
    report = scan_file(legacy_h5(tmp_path / "m.h5", keras2_model(layer)))
    assert rule_ids(report.findings) == {LAMBDA}


@pytest.mark.parametrize(
    "reply",
    [
        b"cos\nsystem\n(S'touch {marker}'\ntR.",  # a pickle: must never be unpickled
        b'{"op": "read", "at": -5, "n": 10}',
        b'{"op": "read", "at": 0, "n": 999999999}',
        b'{"op": "done", "attributes": {"model_config": "not base64!"}}',
        b'{"op": "done", "attributes": []}',
        b'["op", "done"]',
    ],
)
def test_replies_from_a_compromised_child_are_not_trusted(tmp_path, monkeypatch, reply):
    """A parser exploited by the file it parses controls the child; what the child sends is
    checked JSON, never a pickle, and out-of-range reads are refused."""
    marker = tmp_path / "marker"
    monkeypatch.setattr(hdf5, "_child", lambda conn, size: conn.send_bytes(
        reply.replace(b"{marker}", str(marker).encode())))
    finding = only(scan_file(legacy_h5(tmp_path / "m.h5", keras2_model())).findings, UNREADABLE)
    assert "crashed" in finding.title
    assert not marker.exists()


def test_scans_inside_a_daemonic_pool_worker(tmp_path):
    """multiprocessing.Pool workers may not start multiprocessing children; the parser is
    forked directly, so scanning works there too."""
    layer = {"class_name": "Lambda", "config": {"function": ["AAAA", None, None],
                                                "function_type": "lambda"}}
    path = legacy_h5(tmp_path / "m.h5", keras2_model(layer))
    with multiprocessing.get_context("fork").Pool(1) as pool:
        report = pool.apply(scan_file, (path,))
    assert rule_ids(report.findings) == {LAMBDA}
