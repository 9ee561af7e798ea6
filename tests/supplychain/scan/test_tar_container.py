"""Tar archives and PyTorch's legacy tar checkpoints: every pickle torch would unpickle is
found by following the storages and tensors layout, raw tensor bytes are never taken for
opcodes, links and hostile headers are findings, and nothing raises."""

from __future__ import annotations

import collections
import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.serialization import StorageType

from bastion.findings import Severity
from bastion.supplychain.scan import FileReport, Limits, scan_file
from bastion.supplychain.scan.formats.tar_container import ELEMENT_SIZES, MAX_HEADER_BYTES

GADGET = "BST-SCAN-PKL-001"
UNREADABLE = "BST-SCAN-READ-001"
LIMIT = "BST-SCAN-LIMIT-001"
LINK = "BST-SCAN-TAR-001"
MALFORMED = "BST-SCAN-TAR-002"
SKIPPED = "BST-SCAN-SKIP-001"


def system_pickle(command: str) -> bytes:
    """os.system(command) in raw protocol-2 opcodes; never loaded."""
    encoded = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(encoded)) + encoded + b"\x85R."


@pytest.fixture
def payload(marker: Path) -> bytes:
    return system_pickle(f"touch {marker}")


# -- a legacy checkpoint, built the way torch's tar reader expects it --------------------

WEIGHT = np.arange(6, dtype=np.float32)
BIAS = np.array([0.5, -0.5], dtype=np.float64)


def dump(value: object) -> bytes:
    return pickle.dumps(value, protocol=2)


def storage_entry(key: str, storage_type: type, data: np.ndarray) -> bytes:
    """(key, location, storage type), the element count as int64, the raw elements."""
    return dump((key, "cpu", storage_type)) + struct.pack("<q", data.size) + data.tobytes()


def tensor_entry(key: str, storage_key: str, shape: tuple[int, ...]) -> bytes:
    """(key, storage id, type), int32 rank, 4 padding bytes, sizes, strides, offset."""
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    rank = len(shape)
    return (dump((key, storage_key, torch.FloatTensor)) + struct.pack("<ii", rank, 0)
            + struct.pack(f"<{rank}q", *shape) + struct.pack(f"<{rank}q", *strides)
            + struct.pack("<q", 0))


STORAGES = (dump(2) + storage_entry("0", torch.FloatStorage, WEIGHT)
            + storage_entry("1", torch.DoubleStorage, BIAS) + dump([]))
TENSORS = dump(2) + tensor_entry("2", "0", (2, 3)) + tensor_entry("3", "1", (2,))


class _TensorRef:
    def __init__(self, key: str) -> None:
        self.key = key


class _StateDictPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> str | None:
        return obj.key if isinstance(obj, _TensorRef) else None


def state_dict_pickle() -> bytes:
    buffer = io.BytesIO()
    state = collections.OrderedDict(weight=_TensorRef("2"), bias=_TensorRef("3"))
    _StateDictPickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


SYS_INFO = dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 8}})


def add(tar: tarfile.TarFile, name: str, data: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for field, value in fields.items():
        setattr(info, field, value)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(members: list[tuple[str, bytes]], **open_args: object) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", **open_args) as tar:
        for name, data in members:
            add(tar, name, data)
    return buffer.getvalue()


def checkpoint(**replace: bytes) -> bytes:
    members = {"sys_info": SYS_INFO, "pickle": state_dict_pickle(), "storages": STORAGES,
               "tensors": TENSORS}
    members.update(replace)
    return tar_bytes(list(members.items()), format=tarfile.PAX_FORMAT)


def scan_data(tmp_path: Path, data: bytes, name: str = "model.pt", **kwargs) -> FileReport:
    path = tmp_path / name
    path.write_bytes(data)
    return scan_file(path, **kwargs)


def at_least(report: FileReport, severity: Severity) -> set[str]:
    return {f.rule_id for f in report.findings if f.severity >= severity}


def gadget_members(report: FileReport) -> set[str | None]:
    return {f.location.member for f in report.findings
            if f.rule_id == GADGET and f.severity is Severity.CRITICAL}


def test_element_sizes_match_torch() -> None:
    from torch.storage import _dtype_to_storage_type_map

    assert set(ELEMENT_SIZES) == set(_dtype_to_storage_type_map().values())
    for name, size in ELEMENT_SIZES.items():
        assert torch._utils._element_size(StorageType(name).dtype) == size, name


def test_legacy_checkpoint_is_clean(tmp_path: Path) -> None:
    report = scan_data(tmp_path, checkpoint())
    assert at_least(report, Severity.MEDIUM) == set()
    assert {"tar", "torch-legacy-tar", "pickle"} <= set(report.formats)


def test_payload_in_the_pickle_member_is_critical(tmp_path: Path, payload: bytes) -> None:
    report = scan_data(tmp_path, checkpoint(pickle=payload))
    assert gadget_members(report) == {"pickle"}


def test_payload_after_storage_data_is_critical(tmp_path: Path, payload: bytes) -> None:
    storages = (dump(2) + storage_entry("0", torch.FloatStorage, WEIGHT)) + payload
    report = scan_data(tmp_path, checkpoint(storages=storages))
    assert gadget_members(report) == {"storages"}
    (finding,) = [f for f in report.findings if f.rule_id == GADGET]
    assert finding.location.offset > len(dump(2) + storage_entry("0", torch.FloatStorage, WEIGHT))


def test_payload_in_the_storage_views_pickle_is_critical(tmp_path: Path, payload: bytes) -> None:
    storages = dump(1) + storage_entry("0", torch.FloatStorage, WEIGHT) + payload
    assert gadget_members(scan_data(tmp_path, checkpoint(storages=storages))) == {"storages"}


def test_payload_after_tensor_records_is_critical(tmp_path: Path, payload: bytes) -> None:
    tensors = dump(2) + tensor_entry("2", "0", (2, 3)) + payload
    assert gadget_members(scan_data(tmp_path, checkpoint(tensors=tensors))) == {"tensors"}


def test_raw_storage_bytes_are_data_not_opcodes(tmp_path: Path, payload: bytes) -> None:
    # torch copies these bytes into a storage; reading them as a pickle would be wrong
    raw = np.frombuffer(payload + bytes(-len(payload) % 4), dtype=np.float32)
    storages = dump(1) + storage_entry("0", torch.FloatStorage, raw) + dump([])
    report = scan_data(tmp_path, checkpoint(storages=storages))
    assert at_least(report, Severity.MEDIUM) == set()


def test_storage_count_computed_at_load_is_unreadable(tmp_path: Path) -> None:
    computed = b"\x80\x02c__builtin__\nint\nX\x01\x00\x00\x002\x85R."  # int("2")
    storages = computed + storage_entry("0", torch.FloatStorage, WEIGHT) + dump([])
    report = scan_data(tmp_path, checkpoint(storages=storages))
    assert [(f.rule_id, f.location.member) for f in report.findings
            if f.severity >= Severity.HIGH] == [(UNREADABLE, "storages")]


def test_unknown_storage_type_is_unreadable(tmp_path: Path) -> None:
    record = b"\x80\x02(X\x01\x00\x00\x000X\x03\x00\x00\x00cpuctorch\nMysteryStorage\nt."
    storages = dump(1) + record + struct.pack("<q", 2) + bytes(8) + dump([])
    report = scan_data(tmp_path, checkpoint(storages=storages))
    assert UNREADABLE in at_least(report, Severity.HIGH)


MALFORMED_MEMBERS = {
    "count is text": ("storages", dump("two")),
    "record of two items": ("storages", dump(1) + dump(("0", "cpu"))),
    "record is a number": ("storages", dump(1) + dump(7)),
    "data past the end": ("storages", dump(1) + dump(("0", "cpu", torch.FloatStorage))
                          + struct.pack("<q", 1000) + bytes(8)),
    "negative size": ("storages", dump(1) + dump(("0", "cpu", torch.FloatStorage))
                      + struct.pack("<q", -4)),
    "ends in a size": ("storages", dump(1) + dump(("0", "cpu", torch.FloatStorage)) + b"\x01"),
    "ends before a record": ("tensors", dump(3)),
    "negative rank": ("tensors", dump(1) + dump(("2", "0", torch.FloatTensor))
                      + struct.pack("<ii", -1, 0)),
    "rank past the end": ("tensors", dump(1) + dump(("2", "0", torch.FloatTensor))
                          + struct.pack("<ii", 1_000_000, 0)),
    "broken pickle": ("tensors", dump(1) + b"\x80\x02(X\x01\x00"),
}


@pytest.mark.parametrize("payload_first", [True, False])
def test_every_member_of_a_repeated_name_is_scanned(tmp_path: Path, payload: bytes,
                                                    payload_first: bool) -> None:
    # torch reads the last "pickle"; an earlier one is still scanned, by its content
    pickles = [("pickle", payload), ("pickle", state_dict_pickle())]
    members = [*(pickles if payload_first else pickles[::-1]), ("storages", STORAGES),
               ("tensors", TENSORS)]
    report = scan_data(tmp_path, tar_bytes(members))
    assert gadget_members(report) == {"pickle"}


def test_opcode_budget_spans_all_records_of_a_member(tmp_path: Path) -> None:
    entries = b"".join(storage_entry(str(i), torch.FloatStorage, WEIGHT) for i in range(40))
    storages = dump(40) + entries + dump([])
    report = scan_data(tmp_path, checkpoint(storages=storages), limits=Limits(max_opcodes=100))
    assert [(f.rule_id, f.location.member) for f in report.findings
            if f.severity >= Severity.HIGH] == [(LIMIT, "storages")]


@pytest.mark.parametrize("problem", sorted(MALFORMED_MEMBERS))
def test_malformed_legacy_member_is_reported(tmp_path: Path, problem: str) -> None:
    name, data = MALFORMED_MEMBERS[problem]
    report = scan_data(tmp_path, checkpoint(**{name: data}))
    malformed = [f for f in report.findings if f.rule_id == MALFORMED]
    assert [(f.severity, f.location.member) for f in malformed] == [(Severity.MEDIUM, name)]
    assert at_least(report, Severity.HIGH) == set()


# -- links: torch reads the linked file instead --------------------------------------------


def link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def test_hard_link_to_a_crafted_storages_member_is_followed(tmp_path: Path,
                                                          payload: bytes) -> None:
    # Read by content, the blob is a count, a record and then raw bytes; only the
    # storages layout reaches the payload after the raw data.
    blob = dump(1) + storage_entry("0", torch.FloatStorage, WEIGHT) + payload
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add(tar, "pickle", state_dict_pickle())
        add(tar, "blob", blob)
        link(tar, "storages", "blob", tarfile.LNKTYPE)
        add(tar, "tensors", dump(0))
    report = scan_data(tmp_path, buffer.getvalue())
    links = [f for f in report.findings if f.rule_id == LINK]
    assert [(f.severity, f.evidence["target_in_archive"]) for f in links] == [
        (Severity.HIGH, "blob")]
    assert "storages" in gadget_members(report)


def test_symbolic_link_for_the_pickle_is_followed_in_the_archive(tmp_path: Path,
                                                               payload: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link(tar, "pickle", "data/object.bin", tarfile.SYMTYPE)
        add(tar, "data/object.bin", payload)
        add(tar, "storages", dump(0) + dump([]))
        add(tar, "tensors", dump(0))
    report = scan_data(tmp_path, buffer.getvalue())
    assert LINK in at_least(report, Severity.HIGH)
    assert gadget_members(report) == {"pickle", "data/object.bin"}


def test_link_leading_out_of_the_archive_is_high(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link(tar, "storages", "/etc/hostname", tarfile.SYMTYPE)
        link(tar, "tensors", "storages", tarfile.SYMTYPE)  # a loop through the archive
        add(tar, "pickle", state_dict_pickle())
    report = scan_data(tmp_path, buffer.getvalue())
    links = [f for f in report.findings if f.rule_id == LINK]
    assert [f.location.member for f in links] == ["storages", "tensors"]
    assert all(f.evidence["target_in_archive"] is None for f in links)


# -- tars in general ---------------------------------------------------------------------


def torch_zip(data_pkl: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def test_generic_tar_of_benign_files_is_clean(tmp_path: Path) -> None:
    npy = io.BytesIO()
    np.save(npy, np.arange(10.0))
    data = tar_bytes([("README.md", b"# model\n"), ("weights.npy", npy.getvalue()),
                      ("config.json", b'{"layers": 2}')])
    report = scan_data(tmp_path, data, name="bundle.tar")
    assert report.findings == []
    assert "numpy" in report.formats


@pytest.mark.parametrize("last", [True, False], ids=["zip last", "zip first"])
def test_torch_zip_inside_a_tar_is_scanned(tmp_path: Path, payload: bytes, last: bool) -> None:
    members = [("notes.txt", b"nothing to see"), ("model.pt", torch_zip(payload))]
    report = scan_data(tmp_path, tar_bytes(members if last else members[::-1]), name="b.tar")
    assert "model.pt/archive/data.pkl" in gadget_members(report)


def test_compressed_pickle_inside_a_tar_is_scanned(tmp_path: Path, payload: bytes) -> None:
    report = scan_data(tmp_path, tar_bytes([("model.joblib", gzip.compress(payload))]))
    assert gadget_members(report) == {"model.joblib/gzip:decompressed"}


def test_tar_header_that_is_also_a_pickle_is_read_both_ways(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           marker: Path) -> None:
    # pickle.load and joblib.load read from byte 0, where the first member's name lies
    monkeypatch.chdir(tmp_path)
    name = system_pickle(f"touch {marker.name}").decode("latin-1")
    data = tar_bytes([(name, b"data")], format=tarfile.GNU_FORMAT, encoding="latin-1")
    report = scan_data(tmp_path, data, name="model.pkl")
    assert GADGET in at_least(report, Severity.CRITICAL)
    assert {"tar", "pickle"} <= set(report.formats)


def test_old_style_tar_without_ustar_magic_is_read(tmp_path: Path, payload: bytes) -> None:
    data = tar_bytes([("pickle", payload)], format=tarfile.USTAR_FORMAT)
    header = bytearray(data[:512])
    header[257:265] = bytes(8)  # v7 archives carry no magic; torch's tarfile reads them
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    report = scan_data(tmp_path, bytes(header) + data[512:])
    assert gadget_members(report) == {"pickle"}


def test_member_limit_is_a_finding(tmp_path: Path) -> None:
    data = tar_bytes([(f"file{index}", b"x") for index in range(5)])
    report = scan_data(tmp_path, data, limits=Limits(max_members=3))
    assert [(f.rule_id, f.severity) for f in report.findings] == [(LIMIT, Severity.HIGH)]


def test_oversized_pax_header_is_a_limit_finding(tmp_path: Path, payload: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "first.pkl", payload)
        info = tarfile.TarInfo("second")
        info.pax_headers = {"comment": "x" * (MAX_HEADER_BYTES + 1)}
        tar.addfile(info, io.BytesIO(b""))
    report = scan_data(tmp_path, buffer.getvalue())
    assert LIMIT in at_least(report, Severity.HIGH)
    assert gadget_members(report) == {"first.pkl"}  # members before it are still scanned


def sparse_tar(stored: bytes, size: int) -> bytes:
    """A pax (GNU 0.1) sparse member: `stored` at offset 0, then a hole up to `size`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sparse.bin")
        info.size = len(stored)
        info.pax_headers = {"GNU.sparse.map": f"0,{len(stored)}", "GNU.sparse.size": str(size)}
        tar.addfile(info, io.BytesIO(stored))
    return buffer.getvalue()


def test_sparse_member_is_read_as_tarfile_expands_it(tmp_path: Path, payload: bytes) -> None:
    report = scan_data(tmp_path, sparse_tar(payload, len(payload) + 4096))
    assert gadget_members(report) == {"sparse.bin"}


def test_sparse_hole_bomb_is_a_limit_finding(tmp_path: Path) -> None:
    report = scan_data(tmp_path, sparse_tar(b"\x80", 10**12))
    assert [(f.rule_id, f.location.member) for f in report.findings] == [(LIMIT, "sparse.bin")]


# -- broken archives ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [600, 1500, 2500])
def test_truncated_tar_is_reported_not_raised(tmp_path: Path, cut: int) -> None:
    data = checkpoint()
    report = scan_data(tmp_path, data[:cut])
    assert UNREADABLE in at_least(report, Severity.HIGH)


def test_bad_checksum_is_not_taken_for_a_tar(tmp_path: Path) -> None:
    data = bytearray(tar_bytes([("pickle", b"not a pickle")]))
    data[150] ^= 0x01  # a digit of the checksum
    report = scan_data(tmp_path, bytes(data))
    assert [f.rule_id for f in report.findings] == [SKIPPED]
    assert "tar" not in report.formats


def test_bad_number_in_a_pax_header_is_unreadable(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "first", b"x")
        info = tarfile.TarInfo("second")
        info.pax_headers = {"GNU.sparse.map": "zero,one"}
        tar.addfile(info, io.BytesIO(b""))
    report = scan_data(tmp_path, buffer.getvalue())
    assert [(f.rule_id, f.location.member) for f in report.findings] == [(UNREADABLE, None)]
