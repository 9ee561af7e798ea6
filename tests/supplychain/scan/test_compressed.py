"""joblib files: compressed (zlib, gzip, bz2, lzma, xz and the old "ZF" files) and plain,
with numpy buffers between the pickle opcodes. Real dumps are clean, payloads are caught
whatever wraps them, and broken or explosive streams are findings, not exceptions."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bastion.findings import Severity
from bastion.supplychain.scan import FileReport, Limits, scan_file

GADGET = "BST-SCAN-PKL-001"
UNREADABLE = "BST-SCAN-READ-001"
LIMIT = "BST-SCAN-LIMIT-001"
BROKEN = "BST-SCAN-CMP-001"
SKIPPED = "BST-SCAN-SKIP-001"
CODECS = ["zlib", "gzip", "bz2", "xz", "lzma"]


def system_call(marker: Path) -> bytes:
    """os.system('touch MARKER') with its result popped: raw opcodes, never loaded."""
    command = f"touch {marker}".encode()
    return b"cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R0"


def system_pickle(marker: Path) -> bytes:
    return b"\x80\x02" + system_call(marker) + b"N."


def zfile(data: bytes, space: bool = False) -> bytes:
    """joblib's pre-0.10 format: 'ZF', the length in hex padded to 19 characters, zlib."""
    return b"ZF" + hex(len(data)).encode().ljust(19) + (b" " if space else b"") + zlib.compress(
        data)


# The compressors joblib writes each format with (joblib.compressor).
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": lambda data: zlib.compress(data, 3),
    "gzip": lambda data: gzip.compress(data, 3),
    "bz2": lambda data: bz2.compress(data, 3),
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=3),
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE, preset=3),
    "joblib-zfile": zfile,
}


def scan_data(tmp_path: Path, data: bytes, name: str = "model.joblib", **kwargs) -> FileReport:
    path = tmp_path / name
    path.write_bytes(data)
    return scan_file(path, **kwargs)


def at_least(report: FileReport, severity: Severity) -> set[str]:
    return {f.rule_id for f in report.findings if f.severity >= severity}


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return {
        "forest": RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y),
        "arrays": {"x": x, "y": y, "labels": np.array(["neg", "pos"], dtype=object)},
    }


# -- compressed joblib -------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_real_compressed_joblib_is_clean(tmp_path: Path, models: dict[str, Any],
                                         codec: str) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(models, path, compress=(codec, 3))
    report = scan_file(path)
    assert at_least(report, Severity.HIGH) == set()
    assert report.formats[:3] == ["compressed", codec, "pickle"]


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_payload_in_each_compressor_is_critical(tmp_path: Path, marker: Path, codec: str) -> None:
    report = scan_data(tmp_path, COMPRESS[codec](system_pickle(marker)))
    gadget = [f for f in report.findings if f.rule_id == GADGET]
    assert len(gadget) == 1 and gadget[0].severity is Severity.CRITICAL
    assert gadget[0].location.member == f"{codec}:decompressed"


def test_zfile_with_the_older_wider_header_is_read(tmp_path: Path, marker: Path) -> None:
    report = scan_data(tmp_path, zfile(system_pickle(marker), space=True))
    assert GADGET in at_least(report, Severity.CRITICAL)


def test_benign_zfile_is_clean(tmp_path: Path) -> None:
    report = scan_data(tmp_path, zfile(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00}\x94."))
    assert report.findings == []
    assert "joblib-zfile" in report.formats


def test_payload_split_across_gzip_members_is_caught(tmp_path: Path, marker: Path) -> None:
    payload = system_pickle(marker)
    half = len(payload) // 2
    data = gzip.compress(payload[:half]) + gzip.compress(payload[half:])
    assert GADGET in at_least(scan_data(tmp_path, data), Severity.CRITICAL)


def test_doubly_compressed_payload_is_caught(tmp_path: Path, marker: Path) -> None:
    data = gzip.compress(zlib.compress(system_pickle(marker)))
    report = scan_data(tmp_path, data)
    assert GADGET in at_least(report, Severity.CRITICAL)
    members = [f.location.member for f in report.findings if f.rule_id == GADGET]
    assert members == ["gzip:decompressed/zlib:decompressed"]


def test_compressed_member_of_a_zip_is_scanned(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.joblib", zlib.compress(system_pickle(marker)))
    report = scan_file(path)
    assert GADGET in at_least(report, Severity.CRITICAL)


def test_nesting_limit_stops_compression_inside_compression(tmp_path: Path, marker: Path) -> None:
    data = system_pickle(marker)
    for _ in range(3):
        data = gzip.compress(data)
    report = scan_data(tmp_path, data, limits=Limits(max_nesting=2))
    assert at_least(report, Severity.HIGH) == {LIMIT}


def test_lz4_is_reported_as_unreadable(tmp_path: Path) -> None:
    report = scan_data(tmp_path, b"\x04\x22\x4d\x18" + bytes(64))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(UNREADABLE, Severity.HIGH)]


# -- decompression bombs -----------------------------------------------------------------


def gzip_of_zeros(megabytes: int) -> bytes:
    """Built a chunk at a time: the test itself never holds the expanded data."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join([compressor.compress(chunk) for _ in range(megabytes)] + [compressor.flush()])


def test_gzip_bomb_is_a_limit_finding(tmp_path: Path) -> None:
    bomb = gzip_of_zeros(64)
    report = scan_data(tmp_path, bomb, limits=Limits(max_member_bytes=8 << 20))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(LIMIT, Severity.HIGH)]
    assert "8388608 bytes" in report.findings[0].title


def test_compression_ratio_limit_stops_a_bomb_early(tmp_path: Path) -> None:
    compressor = bz2.BZ2Compressor(9)
    bomb = b"".join([compressor.compress(bytes(1 << 20)) for _ in range(16)]) + compressor.flush()
    report = scan_data(tmp_path, bomb)  # default limits
    assert [f.rule_id for f in report.findings] == [LIMIT]
    assert "expands more than" in report.findings[0].title


def test_total_decompressed_bytes_are_bounded_per_file(tmp_path: Path) -> None:
    path = tmp_path / "bombs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(3):
            archive.writestr(f"part{index}.gz", gzip_of_zeros(4))
    report = scan_file(path, limits=Limits(max_total_bytes=10 << 20))
    assert LIMIT in {f.rule_id for f in report.findings}
    assert "more than 10485760 bytes decompressed" in " ".join(f.title for f in report.findings)


# -- broken streams ----------------------------------------------------------------------


def test_truncated_stream_still_shows_the_payload_before_the_cut(tmp_path: Path,
                                                                 marker: Path) -> None:
    data = gzip.compress(system_pickle(marker) + bytes(1 << 16))
    report = scan_data(tmp_path, data[:-4])  # the size field of the trailer is missing
    assert GADGET in at_least(report, Severity.CRITICAL)
    broken = [f for f in report.findings if f.rule_id == BROKEN]
    assert len(broken) == 1 and broken[0].severity is Severity.MEDIUM


def test_bad_checksum_does_not_hide_the_payload(tmp_path: Path, marker: Path) -> None:
    # gzip readers hand out the data before they check the CRC
    data = bytearray(gzip.compress(system_pickle(marker)))
    data[-8] ^= 0xFF
    report = scan_data(tmp_path, bytes(data))
    assert GADGET in at_least(report, Severity.CRITICAL)
    assert BROKEN in {f.rule_id for f in report.findings}


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_real_file_is_reported_not_raised(tmp_path: Path, models: dict[str, Any],
                                                    codec: str) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(models["forest"], path, compress=(codec, 3))
    data = path.read_bytes()
    report = scan_data(tmp_path, data[: len(data) // 2], name="cut.joblib")
    assert {f.rule_id for f in report.findings} & {BROKEN, UNREADABLE}
    assert GADGET not in {f.rule_id for f in report.findings}


def noise(size: int) -> bytes:
    return np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_corrupt_stream_is_reported_not_raised(tmp_path: Path) -> None:
    data = bytearray(bz2.compress(noise(1 << 16)))
    data[len(data) // 2] ^= 0xFF  # bz2 hands out the block before it checks the block's CRC
    report = scan_data(tmp_path, bytes(data))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(BROKEN, Severity.MEDIUM)]
    assert report.findings[0].evidence["codec"] == "bz2"


def test_stream_cut_before_any_output_is_unreadable(tmp_path: Path) -> None:
    data = bz2.compress(noise(1 << 16))  # one block: nothing decodes until it is complete
    report = scan_data(tmp_path, data[: len(data) // 2])
    assert [(f.rule_id, f.severity) for f in report.findings] == [(UNREADABLE, Severity.HIGH)]


def test_corruption_after_the_payload_does_not_hide_it(tmp_path: Path, marker: Path) -> None:
    data = bytearray(gzip.compress(system_pickle(marker) + noise(1 << 16)))
    data[len(data) // 2] ^= 0xFF  # far after the payload's bytes
    report = scan_data(tmp_path, bytes(data))
    assert GADGET in at_least(report, Severity.CRITICAL)
    assert BROKEN in {f.rule_id for f in report.findings}


def test_corruption_soon_after_the_payload_does_not_hide_it(tmp_path: Path,
                                                           marker: Path) -> None:
    # A loader reads the payload in its first block and never reaches the corrupt spot,
    # which lies within the first bytes the scanner decodes to recognise the stream.
    data = bytearray(gzip.compress(system_pickle(marker) + bytes(20_000)))
    data[-12] ^= 0xFF  # the end of the deflate data: after about 16 kB of output
    report = scan_data(tmp_path, bytes(data))
    assert GADGET in at_least(report, Severity.CRITICAL)
    assert BROKEN in {f.rule_id for f in report.findings}


def test_corruption_at_the_start_is_no_stream_for_any_reader(tmp_path: Path) -> None:
    # readers decode in blocks; a block that fails hands out nothing, so nothing can run
    data = bytearray(gzip.compress(noise(1 << 12)))
    data[12] ^= 0xFF
    report = scan_data(tmp_path, bytes(data))
    assert [f.rule_id for f in report.findings] == [SKIPPED]


@pytest.mark.parametrize(
    "data",
    [b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 32, b"x^2 + y^2 = r^2\n", b"BZh9 not bzip2",
     b"ZFnot a length at all, no"],
    ids=["gzip magic", "text starting with x", "bz2 magic", "ZF without length"],
)
def test_garbage_behind_a_signature_is_not_taken_for_a_stream(tmp_path: Path,
                                                              data: bytes) -> None:
    report = scan_data(tmp_path, data)
    assert [f.rule_id for f in report.findings] == [SKIPPED]
    assert "compressed" not in report.formats


# -- plain joblib: numpy buffers between the pickle opcodes ------------------------------


def test_plain_joblib_with_arrays_is_clean(tmp_path: Path, models: dict[str, Any]) -> None:
    path = tmp_path / "arrays.joblib"
    arrays = {
        "float": np.linspace(-1, 1, 64).reshape(8, 8),
        "int": np.arange(100, dtype=np.int64),
        "object": np.array([{"a": 1}, ["b", 2], "c", None], dtype=object),
        "bytes": np.frombuffer(b"pickle-looking \x80\x04 bytes", dtype=np.uint8),
    }
    joblib.dump({**arrays, "model": models["pipeline"]}, path)
    report = scan_file(path)
    assert at_least(report, Severity.HIGH) == set()
    assert report.formats == ["pickle", "joblib"]


def test_reduce_after_an_array_buffer_is_caught(tmp_path: Path, marker: Path) -> None:
    weights = np.arange(8, dtype=np.float64)
    buffer = io.BytesIO()
    joblib.dump({"weights": weights, "bias": np.zeros(2)}, buffer)
    data = buffer.getvalue()
    end_of_buffer = data.index(weights.tobytes()) + weights.nbytes
    crafted = data[:end_of_buffer] + system_call(marker) + data[end_of_buffer:]
    report = scan_data(tmp_path, crafted)
    gadget = [f for f in report.findings if f.rule_id == GADGET]
    assert len(gadget) == 1 and gadget[0].severity is Severity.CRITICAL
    assert gadget[0].location.offset >= end_of_buffer


def test_payload_inside_an_object_array_pickle_is_caught(tmp_path: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    joblib.dump({"labels": np.array([{"a": 1}], dtype=object), "n": 1}, buffer)
    data = buffer.getvalue()
    inline_stop = data.index(b"sat\x94b.") + 5  # the end of the object array's own pickle
    crafted = data[:inline_stop] + system_call(marker) + data[inline_stop:]
    assert GADGET in at_least(scan_data(tmp_path, crafted), Severity.CRITICAL)


def test_compressed_crafted_joblib_is_caught(tmp_path: Path, marker: Path) -> None:
    weights = np.arange(8, dtype=np.float64)
    buffer = io.BytesIO()
    joblib.dump({"weights": weights}, buffer)
    data = buffer.getvalue()
    end_of_buffer = data.index(weights.tobytes()) + weights.nbytes
    crafted = data[:end_of_buffer] + system_call(marker) + data[end_of_buffer:]
    report = scan_data(tmp_path, lzma.compress(crafted))
    assert GADGET in at_least(report, Severity.CRITICAL)
