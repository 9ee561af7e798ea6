"""NumPy .npy and .npz: real arrays are clean, object arrays are analysed as pickles, and a
broken or hostile header is a finding, never an exception (nothing in it is evaluated)."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bastion.findings import Severity
from bastion.supplychain.scan import FileReport, scan_file
from bastion.supplychain.scan.formats.numpy_file import MAX_HEADER_BYTES

GADGET = "BST-SCAN-PKL-001"
UNREADABLE = "BST-SCAN-READ-001"
TRAILING = "BST-SCAN-NPY-001"
LIMIT = "BST-SCAN-LIMIT-001"


def system_pickle(marker: Path) -> bytes:
    """os.system('touch MARKER') in raw protocol-2 opcodes; never loaded."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."


def npy(header: str, body: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    encoded = header.encode("utf8" if version == (3, 0) else "latin1")
    length = struct.pack("<H" if version == (1, 0) else "<I", len(encoded))
    return b"\x93NUMPY" + bytes(version) + length + encoded + body


def object_header(descr: str = "'|O'") -> str:
    return f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}\n"


def saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=True)
    return buffer.getvalue()


def scan_data(tmp_path: Path, data: bytes, name: str = "array.npy", **kwargs) -> FileReport:
    path = tmp_path / name
    path.write_bytes(data)
    return scan_file(path, **kwargs)


def rules_at(report: FileReport, severity: Severity) -> set[str]:
    return {f.rule_id for f in report.findings if f.severity >= severity}


REAL_ARRAYS = {
    "float": np.linspace(0, 1, 12).reshape(3, 4),
    "int": np.arange(10, dtype=np.int16),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 4)),
    "structured": np.zeros(3, dtype=[("x", "<f4"), ("label", "S8"), ("pair", "<i2", (2,))]),
    "datetime": np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[D]"),
}


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("kind", sorted(REAL_ARRAYS))
def test_real_arrays_are_clean(tmp_path: Path, kind: str, version: tuple[int, int]) -> None:
    report = scan_data(tmp_path, saved(REAL_ARRAYS[kind], version))
    assert report.findings == []
    assert report.formats == ["numpy"]


def test_object_array_of_builtins_is_clean(tmp_path: Path) -> None:
    array = np.array([{"a": 1}, [1, 2], "text", None, 2.5], dtype=object)
    report = scan_data(tmp_path, saved(array))
    assert report.findings == []
    assert report.formats == ["numpy", "pickle"]


def test_object_array_payload_is_critical(tmp_path: Path, marker: Path) -> None:
    report = scan_data(tmp_path, npy(object_header(), system_pickle(marker)))
    gadget = [f for f in report.findings if f.rule_id == GADGET]
    assert len(gadget) == 1 and gadget[0].severity is Severity.CRITICAL
    assert gadget[0].evidence["global"] == "os.system"
    assert gadget[0].location.offset > 10  # inside the data, after the header


def test_object_field_of_a_structured_dtype_means_a_pickle(tmp_path: Path, marker: Path) -> None:
    header = object_header("[('n', '<i4'), ('value', '|O')]")
    report = scan_data(tmp_path, npy(header, system_pickle(marker)))
    assert GADGET in rules_at(report, Severity.CRITICAL)


def test_object_data_is_read_as_pickle_load_reads_it(tmp_path: Path, marker: Path) -> None:
    # A joblib array wrapper would make joblib skip the following bytes as array data;
    # numpy.load hands the data to pickle.load, which runs them as opcodes.
    payload = system_pickle(marker)[2:-1] + b"0"  # the call, its result popped
    wrapper = (
        b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}(X\x05\x00\x00\x00shape"
        + b"K" + bytes([len(payload)]) + b"\x85X\x05\x00\x00\x00dtypecnumpy\ndtype\nX\x02\x00"
        + b"\x00\x00u1\x85Rub" + payload + b"."
    )
    report = scan_data(tmp_path, npy(object_header(), wrapper))
    assert GADGET in rules_at(report, Severity.CRITICAL)


def test_npy_payload_is_found_whatever_the_file_is_named(tmp_path: Path, marker: Path) -> None:
    data = npy(object_header(), system_pickle(marker))
    report = scan_data(tmp_path, data, name="weights.safetensors")
    assert GADGET in rules_at(report, Severity.CRITICAL)


def test_object_array_without_data_is_unreadable(tmp_path: Path) -> None:
    report = scan_data(tmp_path, npy(object_header(), b""))
    assert rules_at(report, Severity.HIGH) == {UNREADABLE}


@pytest.mark.parametrize("cut", [7, 9, 40, -1])
def test_truncated_file_is_unreadable(tmp_path: Path, cut: int) -> None:
    data = saved(np.arange(16, dtype=np.float64))
    report = scan_data(tmp_path, data[:cut])
    assert [(f.rule_id, f.severity) for f in report.findings] == [(UNREADABLE, Severity.HIGH)]


def test_truncated_object_pickle_is_reported(tmp_path: Path, marker: Path) -> None:
    data = npy(object_header(), system_pickle(marker)[:-1])  # no STOP: the call still runs
    report = scan_data(tmp_path, data)
    assert GADGET in rules_at(report, Severity.CRITICAL)
    assert "BST-SCAN-PKL-004" in rules_at(report, Severity.MEDIUM)


BAD_HEADERS = {
    "not a dict": "[1, 2, 3]\n",
    "missing key": "{'descr': '<f8', 'shape': (2,)}\n",
    "extra key": "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 1}\n",
    "shape not a tuple": "{'descr': '<f8', 'fortran_order': False, 'shape': [2]}\n",
    "shape of floats": "{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,)}\n",
    "order not a bool": "{'descr': '<f8', 'fortran_order': 0, 'shape': (2,)}\n",
    "unknown dtype": "{'descr': '<z9', 'fortran_order': False, 'shape': (2,)}\n",
    "dtype by dotted name": "{'descr': 'os.system', 'fortran_order': False, 'shape': (2,)}\n",
    "bad field list": "{'descr': [1, 2], 'fortran_order': False, 'shape': (2,)}\n",
    "unhashable key": "{[1]: 2}\n",
    "not a literal": "{'descr': '<f8', 'fortran_order': False, 'shape': (2,)} + 1\n",
    "syntax error": "{'descr': '<f8', 'fortran_order': False, 'shape': (2,\n",
    "nested too deep": "(" * 300 + ")" * 300 + "\n",
}


@pytest.mark.parametrize("problem", sorted(BAD_HEADERS))
def test_garbage_header_is_unreadable(tmp_path: Path, problem: str) -> None:
    report = scan_data(tmp_path, npy(BAD_HEADERS[problem], bytes(16)))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(UNREADABLE, Severity.HIGH)]


def test_code_in_the_header_is_never_evaluated(tmp_path: Path, marker: Path) -> None:
    header = (
        f"{{'descr': __import__('os').system('touch {marker}'), 'fortran_order': False, "
        "'shape': (1,)}\n"
    )
    report = scan_data(tmp_path, npy(header, b"\x00" * 8))
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


@pytest.mark.parametrize("version", [b"\x09\x09", b"\x01\x01", b"\x00\x00"])
def test_unknown_format_version_is_unreadable(tmp_path: Path, version: bytes) -> None:
    data = bytearray(saved(np.arange(4)))
    data[6:8] = version
    report = scan_data(tmp_path, bytes(data))
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


def test_header_that_is_not_utf8_in_version_3_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(saved(np.arange(4), version=(3, 0)))
    data[12] = 0xFF  # inside the header text
    report = scan_data(tmp_path, bytes(data))
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


def test_python2_long_integers_are_read_like_numpy(tmp_path: Path) -> None:
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2L, 3L), }\n"
    body = np.arange(6, dtype="<i8").tobytes()
    assert scan_data(tmp_path, npy(header, body)).findings == []
    # numpy accepts the suffix only in format versions 1.0 and 2.0
    report = scan_data(tmp_path, npy(header, body, version=(3, 0)), name="v3.npy")
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


def test_negative_shape_is_unreadable(tmp_path: Path) -> None:
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }\n"
    report = scan_data(tmp_path, npy(header, bytes(8)))
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


def test_declared_header_longer_than_the_file_is_unreadable(tmp_path: Path) -> None:
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{'descr'"
    report = scan_data(tmp_path, data)
    assert {f.rule_id for f in report.findings} == {UNREADABLE}


def test_oversized_header_is_a_limit_finding(tmp_path: Path) -> None:
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (MAX_HEADER_BYTES - len(header)) + "\n"
    report = scan_data(tmp_path, npy(header, bytes(8), version=(2, 0)))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(LIMIT, Severity.HIGH)]


def test_trailing_data_is_a_medium_finding(tmp_path: Path) -> None:
    data = saved(np.arange(4, dtype=np.int32))
    report = scan_data(tmp_path, data + b"hidden bytes")
    assert [(f.rule_id, f.severity) for f in report.findings] == [(TRAILING, Severity.MEDIUM)]
    finding = report.findings[0]
    assert finding.location.offset == len(data)
    assert finding.evidence["actual_bytes"] - finding.evidence["expected_bytes"] == 12


def torch_zip(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", payload)
        archive.writestr("model/version", "3\n")
    return buffer.getvalue()


def test_zip_appended_to_an_array_is_scanned_too(tmp_path: Path, marker: Path) -> None:
    # numpy reads the array; zip readers find the archive from the file's end
    data = saved(np.arange(4.0)) + torch_zip(system_pickle(marker))
    report = scan_data(tmp_path, data)
    assert TRAILING in {f.rule_id for f in report.findings}
    assert GADGET in rules_at(report, Severity.CRITICAL)
    assert {"numpy", "zip"} <= set(report.formats)


# -- .npz: zips of .npy members, read by the zip scanner ---------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_real_npz_is_clean(tmp_path: Path, save) -> None:
    path = tmp_path / "arrays.npz"
    save(path, x=np.arange(12.0).reshape(3, 4), y=np.arange(3),
         meta=np.array([{"classes": ["a", "b"]}, "note"], dtype=object))
    report = scan_file(path)
    assert report.findings == []
    assert {"zip", "numpy", "pickle"} <= set(report.formats)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_object_member_payload_is_critical(tmp_path: Path, marker: Path,
                                               compression: int) -> None:
    path = tmp_path / "arrays.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("x.npy", saved(np.arange(4.0)))
        archive.writestr("labels.npy", npy(object_header(), system_pickle(marker)))
    report = scan_file(path)
    gadget = [f for f in report.findings if f.rule_id == GADGET]
    assert gadget and all(f.severity is Severity.CRITICAL for f in gadget)
    assert {f.location.member for f in gadget} == {"labels.npy"}


def test_npz_with_broken_member_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy(BAD_HEADERS["not a dict"], b""))
    report = scan_file(path)
    assert [(f.rule_id, f.location.member) for f in report.findings] == [(UNREADABLE, "x.npy")]


def npy_that_is_a_tar(archive: bytes) -> bytes:
    """A valid .npy of uint8 whose first 512 bytes are also a valid tar header (its fields
    sit in a comment after the header dict), with a tar archive as the array data: numpy
    reads bytes, torch.load reads the archive (it tries tarfile before anything else)."""
    block = bytearray(b" " * 512)
    literal = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({len(archive)},), }}"
    block[:10] = b"\x93NUMPY\x01\x00" + struct.pack("<H", 502)
    block[10 : 10 + len(literal)] = literal.encode()
    block[99] = ord("#")  # the tar fields below are a comment to literal_eval
    block[100:108] = b"0000644 "
    block[156] = ord("0")  # a regular, empty member; the archive's members follow it
    block[511] = ord("\n")
    block[148:156] = b"%06o  " % sum(block)
    return bytes(block) + archive


def test_array_that_is_also_a_tar_is_read_as_torch_would(tmp_path: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = len(system_pickle(marker))
        tar.addfile(info, io.BytesIO(system_pickle(marker)))
    data = npy_that_is_a_tar(buffer.getvalue())
    header = io.BytesIO(data)  # numpy's own header reader accepts it (nothing is loaded)
    assert np.lib.format.read_magic(header) == (1, 0)
    assert np.lib.format.read_array_header_1_0(header)[0] == (len(buffer.getvalue()),)
    assert tarfile.TarInfo.frombuf(data[:512], "utf-8", "replace").size == 0
    report = scan_data(tmp_path, data)
    assert {"numpy", "tar"} <= set(report.formats)
    assert [f.location.member for f in report.findings if f.rule_id == GADGET] == ["pickle"]
