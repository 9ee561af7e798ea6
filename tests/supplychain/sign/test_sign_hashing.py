"""Parallel span hashing: digests equal hashlib's, memory stays bounded, errors are per span."""

from __future__ import annotations

import errno
import hashlib
import sys
import tracemalloc

import blake3
import pytest

from bastion.errors import InputError
from bastion.supplychain.sign.hashing import CHUNK, Span, hash_span, hash_spans


@pytest.fixture
def data_file(tmp_path):
    data = bytes(range(251)) * ((2 * CHUNK + 3) // 251 + 1)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("hash_type", ["sha256", "blake2b", "blake3"])
def test_whole_file_digest_matches_hashlib(data_file, hash_type):
    path, data = data_file
    expected = {
        "sha256": hashlib.sha256,
        "blake2b": hashlib.blake2b,
        "blake3": blake3.blake3,
    }[hash_type](data).digest()
    assert hash_span(Span("f", str(path)), hash_type, False) == expected


def test_shard_ranges_across_chunk_boundaries(data_file):
    path, data = data_file
    bounds = [(0, 1), (CHUNK - 1, CHUNK + 1), (5, 2 * CHUNK + 2), (2 * CHUNK, len(data))]
    spans = [Span((s, e), str(path), s, e, e - s) for s, e in bounds]
    outcome = hash_spans(spans, "sha256", workers=3)
    assert outcome.errors == {}
    for start, end in bounds:
        assert outcome.digests[(start, end)] == hashlib.sha256(data[start:end]).digest()


def test_memory_is_bounded_by_workers_times_chunk(tmp_path):
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as handle:
        handle.truncate(256 << 20)
    tracemalloc.start()
    try:
        outcome = hash_spans([Span("big", str(big), 0, None, 256 << 20)], "sha256", workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.digests["big"] == hashlib.sha256(bytes(256 << 20)).digest()
    assert peak < 8 << 20


def test_errors_are_collected_per_span(tmp_path, data_file):
    path, _ = data_file
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    spans = [
        Span("ok", str(path)),
        Span("gone", str(tmp_path / "absent")),
        Span("link", str(link)),
    ]
    outcome = hash_spans(spans, "sha256", workers=2)
    assert set(outcome.digests) == {"ok"}
    assert outcome.errors["gone"].errno == errno.ENOENT
    assert outcome.errors["link"].errno == errno.ELOOP
    followed = hash_spans(spans[2:], "sha256", follow_symlinks=True)
    assert followed.digests["link"] == outcome.digests["ok"]


def test_unknown_or_unavailable_hash_types(data_file, monkeypatch):
    path, _ = data_file
    with pytest.raises(InputError, match="unknown hash type 'md5'"):
        hash_spans([Span("f", str(path))], "md5")
    monkeypatch.setitem(sys.modules, "blake3", None)
    with pytest.raises(InputError, match="pip install blake3"):
        hash_spans([Span("f", str(path))], "blake3")
