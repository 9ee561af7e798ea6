"""The scanner never raises, never hangs and bounds its memory: fuzzed and mutated files
give a report, and bombs (zip, nesting, expansion, depth, huge length fields) give findings
instead of an out-of-memory or a stack overflow."""

from __future__ import annotations

import io
import pickle
import struct
import time
import zipfile
import zlib
from pathlib import Path
from pickle import APPENDS, BINGET, BINPERSID, BINPUT, DUP, EMPTY_LIST, LIST, MARK, POP

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

import bastion
from bastion.demo.malicious import call, global_ref, literal, os_system_pickle, pickle_of
from bastion.findings import Finding, Severity, rule
from bastion.supplychain.scan import FileReport, Limits, scan_file

FUZZ = settings(
    max_examples=150,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _real_pickle() -> bytes:
    x = np.random.default_rng(3).normal(size=(30, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    return pickle.dumps({"model": model, "classes": ["a", "b"]}, protocol=4)


def _real_torch_zip() -> bytes:
    torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2).state_dict(), buffer)
    return buffer.getvalue()


def _real_joblib() -> bytes:
    buffer = io.BytesIO()
    joblib.dump({"w": np.arange(6, dtype=np.float32), "names": ["x", "y"]}, buffer)
    return buffer.getvalue()


SEEDS = {"pickle": _real_pickle(), "torch_zip": _real_torch_zip(), "joblib": _real_joblib()}


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    """A real file with a few byte flips, truncations, insertions and deletions."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[at : at + draw(st.integers(1, 12))]
    return bytes(data)


def scan_bytes(path: Path, data: bytes, limits: Limits | None = None) -> FileReport:
    path.write_bytes(data)
    report = scan_file(path, limits=limits)
    for finding in report.findings:
        assert isinstance(finding, Finding)
        assert rule(finding.rule_id).rule_id == finding.rule_id
        assert isinstance(finding.severity, Severity)
    return report


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_raise(data: bytes, tmp_path: Path) -> None:
    scan_bytes(tmp_path / "random.bin", data)


@FUZZ
@given(data=st.binary(max_size=512).map(lambda tail: b"\x80\x04" + tail))
def test_random_bytes_after_a_pickle_header_never_raise(data: bytes, tmp_path: Path) -> None:
    scan_bytes(tmp_path / "random.pkl", data)


@FUZZ
@given(data=mutations(SEEDS["pickle"]))
def test_mutated_pickle_never_raises(data: bytes, tmp_path: Path) -> None:
    scan_bytes(tmp_path / "model.pkl", data)


@FUZZ
@given(data=mutations(SEEDS["torch_zip"]))
def test_mutated_torch_zip_never_raises(data: bytes, tmp_path: Path) -> None:
    scan_bytes(tmp_path / "model.pt", data)


@FUZZ
@given(data=mutations(SEEDS["joblib"]))
def test_mutated_joblib_never_raises(data: bytes, tmp_path: Path) -> None:
    scan_bytes(tmp_path / "model.joblib", data)


def test_seeds_are_clean_before_mutation(tmp_path: Path) -> None:
    for name, seed in SEEDS.items():
        report = scan_bytes(tmp_path / name, seed)
        assert not [f for f in report.findings if f.severity >= Severity.HIGH], name


# -- bombs ------------------------------------------------------------------------------------


def rule_ids(report: FileReport) -> list[str]:
    return [f.rule_id for f in report.findings]


def _deflated_zeros(megabytes: int) -> bytes:
    """Raw deflate of `megabytes` MiB of zeros, built from one repeated block: after a full
    flush the compressor restarts, so each MiB compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + compressor.flush()


def _zip_of_raw(entries: list[tuple[str, int]], data: bytes, size: int) -> bytes:
    """A zip whose central directory lists `entries` (name, local header offset), all of
    deflated `data` that inflates to `size` bytes; one local header per distinct offset.
    Entries sharing an offset overlap, as in the overlapping-member zip bomb."""
    out, headers = b"", {}
    for name, offset in entries:
        if offset not in headers:
            headers[offset] = len(out)
            raw_name = name.encode()
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(data), size,
                               len(raw_name), 0) + raw_name + data
    central = b""
    for name, offset in entries:
        raw_name = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, len(data),
                               size, len(raw_name), 0, 0, 0, 0, 0, headers[offset]) + raw_name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
                      len(out), 0)
    return out + central + end


def test_zip_bomb_stops_at_the_compression_ratio(tmp_path: Path) -> None:
    data = _deflated_zeros(64)  # 64 MiB from 66 KB
    archive = _zip_of_raw([("archive/data/0", 0)], data, 64 << 20)
    assert len(archive) < 100_000
    report = scan_bytes(tmp_path / "bomb.pt", archive)
    assert rule_ids(report) == ["BST-SCAN-LIMIT-001"]
    assert "decompression bomb" in report.findings[0].title


def test_zip_bomb_stops_at_the_member_size(tmp_path: Path) -> None:
    archive = _zip_of_raw([("archive/data/0", 0)], _deflated_zeros(32), 32 << 20)
    limits = Limits(max_member_bytes=4 << 20, max_compression_ratio=10**6)
    report = scan_bytes(tmp_path / "bomb.pt", archive, limits)
    assert rule_ids(report) == ["BST-SCAN-LIMIT-001"]
    assert str(4 << 20) in report.findings[0].title


def test_overlapping_members_stop_at_the_total_budget(tmp_path: Path) -> None:
    entries = [(f"archive/data/{i}", 0) for i in range(40)]
    archive = _zip_of_raw(entries, _deflated_zeros(2), 2 << 20)
    limits = Limits(max_total_bytes=16 << 20, max_compression_ratio=10**6)
    started = time.perf_counter()
    report = scan_bytes(tmp_path / "overlap.pt", archive, limits)
    assert time.perf_counter() - started < 5
    limited = [f for f in report.findings if f.rule_id == "BST-SCAN-LIMIT-001"]
    assert len(limited) >= 40 - 8  # every member after the budget is spent
    assert all("decompressed in one file" in f.title for f in limited)


def _nested_zip(levels: int, payload: bytes) -> bytes:
    """A pickle in a zip in a zip ... `levels` archives deep."""
    data, name = payload, "data.pkl"
    for level in range(levels):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, data)
        data, name = buffer.getvalue(), f"level{level}.zip"
    return data


def test_zips_nested_beyond_the_limit_give_a_finding(tmp_path: Path, marker: Path) -> None:
    archive = _nested_zip(10, os_system_pickle(marker))
    report = scan_bytes(tmp_path / "nested.zip", archive)
    limited = [f for f in report.findings if f.rule_id == "BST-SCAN-LIMIT-001"]
    assert limited and "nesting" in limited[0].title
    assert max(f.severity for f in report.findings) >= Severity.HIGH
    shallow = scan_bytes(tmp_path / "shallow.zip", _nested_zip(3, os_system_pickle(marker)))
    assert "BST-SCAN-PKL-001" in rule_ids(shallow)


def test_billion_laughs_with_memo_and_dup(tmp_path: Path) -> None:
    body = literal([1] * 10) + BINPUT + b"\x00" + POP
    for level in range(1, 10):  # each level: ten references (one BINGET, nine DUPs)
        body += MARK + BINGET + bytes([level - 1]) + DUP * 9 + LIST + BINPUT + bytes([level]) + POP
    data = pickle_of(body + BINGET + b"\x09")
    assert len(data) < 300
    started = time.perf_counter()
    report = scan_bytes(tmp_path / "laughs.pkl", data)
    assert time.perf_counter() - started < 2
    assert rule_ids(report) == ["BST-SCAN-PKL-007"]


def test_billion_laughs_filled_after_it_is_shared(tmp_path: Path) -> None:
    """The leaf list is referenced a million times while empty and filled last."""
    body = EMPTY_LIST + BINPUT + b"\x00" + POP
    for level in range(1, 7):
        body += MARK + BINGET + bytes([level - 1]) + DUP * 9 + LIST + BINPUT + bytes([level]) + POP
    body += BINGET + b"\x00" + MARK + literal(1) * 1000 + APPENDS + POP + BINGET + b"\x06"
    report = scan_bytes(tmp_path / "late.pkl", pickle_of(body))
    assert rule_ids(report) == ["BST-SCAN-PKL-007"]


def test_billion_laughs_of_constructed_lists(tmp_path: Path) -> None:
    """list() objects built by REDUCE and grown by APPENDS, not list opcodes."""
    new_list = call(global_ref("builtins", "list"))
    body = new_list + MARK + literal(1) * 10 + APPENDS + BINPUT + b"\x00" + POP
    for level in range(1, 10):
        body += new_list + MARK + BINGET + bytes([level - 1]) + DUP * 9 + APPENDS
        body += BINPUT + bytes([level]) + POP
    report = scan_bytes(tmp_path / "calls.pkl", pickle_of(body + BINGET + b"\x09"))
    assert rule_ids(report) == ["BST-SCAN-PKL-007"]


def test_cycles_are_not_expansion(tmp_path: Path) -> None:
    """A list that contains itself loads fine: shared is not the same as exploding."""
    body = EMPTY_LIST + BINPUT + b"\x00" + MARK + BINGET + b"\x00" + DUP * 20 + APPENDS
    assert rule_ids(scan_bytes(tmp_path / "cycle.pkl", pickle_of(body))) == []


def test_hundred_thousand_nested_lists(tmp_path: Path) -> None:
    depth = 100_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    report = scan_bytes(tmp_path / "deep.pkl", data)
    assert rule_ids(report) == ["BST-SCAN-PKL-008"]


@pytest.mark.parametrize("length", [2**62, 2**40, 2**33])
def test_huge_length_field_is_a_truncated_pickle_not_an_allocation(
    length: int, tmp_path: Path, marker: Path
) -> None:
    payload = call(global_ref("os", "system"), literal(f"touch {marker}"))
    data = b"\x80\x04" + payload + b"\x8e" + struct.pack("<Q", length) + b"abc"
    report = scan_bytes(tmp_path / "huge.pkl", data)
    assert sorted(rule_ids(report)) == ["BST-SCAN-PKL-001", "BST-SCAN-PKL-004"]


def test_persistent_ids_of_a_huge_shared_list_are_not_rendered(tmp_path: Path) -> None:
    big = b"]" + BINPUT + b"\x00" + MARK + b"K\x01" * 100_000 + b"e"
    data = pickle_of(big + (BINGET + b"\x00" + BINPERSID + POP) * 2_000)
    started = time.perf_counter()
    report = scan_bytes(tmp_path / "persid.pkl", data)
    assert time.perf_counter() - started < 3
    assert rule_ids(report) == []


def test_a_memoised_nested_payload_is_scanned_once(tmp_path: Path) -> None:
    inner = pickle_of(b"N0" * 50_000 + b"N")  # slow to analyse, harmless
    loads = global_ref("pickle", "loads") + BINPUT + b"\x01"
    body = loads + literal(inner) + BINPUT + b"\x00" + POP
    body += (BINGET + b"\x01" + MARK + BINGET + b"\x00" + b"tR" + POP) * 200
    started = time.perf_counter()
    report = scan_bytes(tmp_path / "reloads.pkl", pickle_of(body + b"N"))
    assert time.perf_counter() - started < 3
    assert rule_ids(report) == ["BST-SCAN-PKL-005"]


def test_directory_scan_of_bombs_reports_every_file(tmp_path: Path, marker: Path) -> None:
    (tmp_path / "deep.pkl").write_bytes(b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".")
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "evil.pkl").write_bytes(os_system_pickle(marker))
    result = bastion.scan(tmp_path)
    assert len(result.files) == 3
    assert result.max_severity is Severity.CRITICAL
