"""safetensors: real files are clean; crafted headers give findings, never exceptions, and
tensor data is never read."""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from bastion.findings import Location, Severity
from bastion.supplychain.scan import scan_file
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.formats import safetensors_file
from bastion.supplychain.scan.formats.safetensors_file import scan_safetensors

MALFORMED, INCONSISTENT, TRAILING = "BST-SCAN-ST-001", "BST-SCAN-ST-002", "BST-SCAN-ST-003"


def build(header: dict | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared is None else declared
    return struct.pack("<Q", length) + raw + data


def tensor(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def scan_bytes(data: bytes, stream_type: type[io.BytesIO] = io.BytesIO):
    ctx = ScanContext(Limits(), dispatch)
    return scan_safetensors(stream_type(data), Location("model.safetensors"), ctx)


def rule_ids(findings) -> set[str]:
    return {f.rule_id for f in findings}


def write(tmp_path: Path, data: bytes, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- real files -------------------------------------------------------------------------


def test_numpy_file_with_metadata_is_clean(tmp_path):
    path = tmp_path / "np.safetensors"
    tensors = {
        "weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bias": np.ones(4, dtype=np.float16),
        "index": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "complex": np.ones(2, dtype=np.complex64),
    }
    save_numpy(tensors, str(path), metadata={"format": "np", "note": "benign"})
    report = scan_file(path)
    assert report.findings == []
    assert report.formats == ["safetensors"]


def test_torch_file_with_low_precision_dtypes_is_clean(tmp_path):
    path = tmp_path / "pt.safetensors"
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(8, 8, generator=generator),
        "w_bf16": torch.randn(4, 4, generator=generator).to(torch.bfloat16),
        "w_f8": torch.randn(16, generator=generator).to(torch.float8_e4m3fn),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int32),
    }
    save_torch(tensors, str(path), metadata={"format": "pt"})
    assert scan_file(path).findings == []


def test_file_without_tensors_is_clean(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_numpy({}, str(path))
    report = scan_file(path)
    assert report.findings == [] and report.formats == ["safetensors"]


def test_sub_byte_dtype_packs_elements():
    header = {"q": tensor("F4", [2, 4], 0, 4)}
    assert scan_bytes(build(header, b"\0" * 4)) == []


def test_tensor_data_is_never_read():
    """Only the 8-byte prefix and the header are read, however large the data section."""

    class CountingReader(io.BytesIO):
        bytes_read = 0

        def read(self, n=-1):
            chunk = super().read(n)
            CountingReader.bytes_read += len(chunk)
            return chunk

    header = {"big": tensor("F32", [1024, 1024], 0, 4 * 1024 * 1024)}
    data = build(header, b"\0" * (4 * 1024 * 1024))
    assert scan_bytes(data, CountingReader) == []
    assert CountingReader.bytes_read == len(data) - 4 * 1024 * 1024


def test_large_sparse_file_scans_quickly(tmp_path):
    size = 512 * 1024 * 1024
    head = build({"big": tensor("U8", [size], 0, size)})
    path = write(tmp_path, head)
    with open(path, "r+b") as handle:
        handle.truncate(len(head) + size)  # sparse: nothing is written to disk
    started = time.perf_counter()
    report = scan_file(path)
    assert report.findings == []
    assert time.perf_counter() - started < 1.0


# --- detection ----------------------------------------------------------------------------


def test_detected_by_content_not_name(tmp_path):
    data = build({"a": tensor("U8", [2], 0, 2)}, b"\1\2")
    assert scan_file(write(tmp_path, data, "weights.bin")).formats == ["safetensors"]


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"short",
        struct.pack("<Q", 1) + b"{}",  # a one-byte header cannot hold an object
        struct.pack("<Q", 10) + b"[1, 2, 3]",
        struct.pack("<Q", 1 << 50) + b'{"a": 1}',
        b"plain text that happens to be longer than ten bytes",
    ],
)
def test_sniff_rejects_other_content(head):
    assert not safetensors_file.SCANNER.sniff(head, io.BytesIO(head))


def test_sniff_accepts_padded_header():
    head = build(b'  {"a": {}}  ')
    assert safetensors_file.SCANNER.sniff(head, io.BytesIO(head))


# --- malformed headers ----------------------------------------------------------------------


def test_declared_header_over_limit(tmp_path):
    data = build(b'{"a": 1}', declared=safetensors_file.MAX_HEADER_BYTES + 1)
    findings = scan_file(write(tmp_path, data)).findings
    assert rule_ids(findings) == {MALFORMED}
    assert findings[0].severity is Severity.HIGH
    assert "limit" in findings[0].evidence["problems"][0]


def test_header_past_end_of_file(tmp_path):
    data = build(b'{"a": {"dtype": "F32"}}', declared=10_000)
    assert rule_ids(scan_file(write(tmp_path, data)).findings) == {MALFORMED}


def test_file_shorter_than_prefix():
    assert rule_ids(scan_bytes(b"\x05\0\0")) == {MALFORMED}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": \xff\xfe}', "UTF-8"),
        (b'{"a": {"dtype": "F32",', "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"a": {}, "a": {}}', "more than once"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
        (b'{"a": {"shape": [' + b"9" * 5000 + b"]}}", "not valid JSON"),
    ],
)
def test_unparseable_header(raw, expected):
    findings = scan_bytes(build(raw))
    assert rule_ids(findings) == {MALFORMED}
    assert expected in findings[0].evidence["problems"][0]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (tensor("F33", [1], 0, 4), "unknown dtype"),
        ({"shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        (tensor("F32", [-1], 0, 4), "shape"),
        (tensor("F32", [True], 0, 4), "shape"),
        (tensor("F32", [1.0], 0, 4), "shape"),
        (tensor("F32", "1", 0, 4), "shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}, "data_offsets"),
        (tensor("F32", [1], 4, 0), "end before"),
        (tensor("F4", [3], 0, 2), "whole bytes"),
        ([1, 2], "not an object"),
    ],
)
def test_malformed_tensor_entry(entry, expected):
    findings = scan_bytes(build({"t": entry}, b"\0" * 4))
    assert MALFORMED in rule_ids(findings)
    problems = next(f for f in findings if f.rule_id == MALFORMED).evidence["problems"]
    assert expected in problems[0]


@pytest.mark.parametrize("metadata", [{"framework": 1}, {"nested": {"a": "b"}}, ["pt"], "pt"])
def test_metadata_must_map_strings_to_strings(metadata):
    header = {"__metadata__": metadata, "a": tensor("U8", [1], 0, 1)}
    assert rule_ids(scan_bytes(build(header, b"\0"))) == {MALFORMED}


# --- offsets ------------------------------------------------------------------------------


def offset_problems(header: dict, data: bytes) -> list[str]:
    findings = scan_bytes(build(header, data))
    assert INCONSISTENT in rule_ids(findings)
    finding = next(f for f in findings if f.rule_id == INCONSISTENT)
    assert finding.severity is Severity.HIGH
    return finding.evidence["problems"]


def test_range_disagrees_with_dtype_and_shape():
    problems = offset_problems({"a": tensor("F32", [2, 2], 0, 12)}, b"\0" * 12)
    assert "need 16" in problems[0]


def test_range_past_data_section():
    problems = offset_problems({"a": tensor("U8", [8], 0, 8)}, b"\0" * 4)
    assert "past the 4-byte data section" in problems[0]


def test_overlapping_ranges():
    header = {"a": tensor("U8", [4], 0, 4), "b": tensor("U8", [4], 2, 6)}
    problems = offset_problems(header, b"\0" * 6)
    assert any("overlaps" in p for p in problems)


def test_hole_between_tensors():
    header = {"a": tensor("U8", [2], 0, 2), "b": tensor("U8", [2], 4, 6)}
    problems = offset_problems(header, b"\0" * 6)
    assert problems == ["bytes [2, 4) before tensor 'b' are a hole"]


def test_hole_before_first_tensor():
    problems = offset_problems({"a": tensor("U8", [2], 3, 5)}, b"\0" * 5)
    assert "bytes [0, 3)" in problems[0]


def test_ranges_may_be_listed_in_any_order():
    header = {"b": tensor("U8", [2], 2, 4), "a": tensor("U8", [2], 0, 2)}
    assert scan_bytes(build(header, b"\0" * 4)) == []


# --- trailing data ------------------------------------------------------------------------


def test_trailing_data_after_last_tensor(tmp_path):
    header = {"a": tensor("U8", [4], 0, 4)}
    data = build(header, b"\0" * 4 + b"hidden payload")
    findings = scan_file(write(tmp_path, data)).findings
    assert rule_ids(findings) == {TRAILING}
    finding = findings[0]
    assert finding.severity is Severity.MEDIUM
    assert finding.evidence["trailing_bytes"] == len(b"hidden payload")
    assert finding.location.offset == len(data) - len(b"hidden payload")


def test_data_without_any_tensor_is_trailing():
    findings = scan_bytes(build({"__metadata__": {"a": "b"}}, b"\0" * 16))
    assert rule_ids(findings) == {TRAILING}


def test_appended_archive_is_also_scanned(tmp_path):
    """A zip appended after the tensors is reported as trailing data, and content detection
    still reads the file as the zip it also is (a polyglot), finding the pickle inside."""
    marker = tmp_path / "marker"
    payload = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    head = build({"a": tensor("U8", [1], 0, 1)}, b"\0")
    report = scan_file(write(tmp_path, head + archive.getvalue()))
    assert {TRAILING, "BST-SCAN-PKL-001"} <= rule_ids(report.findings)
    assert {"safetensors", "zip"} <= set(report.formats)
    assert not marker.exists()


# --- robustness ---------------------------------------------------------------------------


def test_every_truncation_of_a_real_file_gives_a_finding(tmp_path):
    path = tmp_path / "real.safetensors"
    save_numpy({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.int8)}, str(path))
    data = path.read_bytes()
    for cut in range(len(data)):
        findings = scan_bytes(data[:cut])
        assert findings, cut
        assert all(f.severity >= Severity.MEDIUM for f in findings)


def test_random_mutations_never_raise():
    rng = np.random.default_rng(0)
    base = build({"a": tensor("F32", [2, 2], 0, 16), "b": tensor("I8", [4], 16, 20)}, b"\0" * 20)
    for _ in range(300):
        data = bytearray(base)
        for position in rng.integers(0, len(data), size=3):
            data[position] = int(rng.integers(0, 256))
        assert isinstance(scan_bytes(bytes(data)), list)
