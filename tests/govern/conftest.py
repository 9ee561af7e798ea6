"""Shared pieces of the ledger tests, including a naive RFC 9162 Merkle tree written straight
from the RFC's recursive definitions, to check the real code against independent hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.govern.events import Event, Subject
from bastion.govern.ledger import Ledger


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(entries: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1, recursively over the raw entries."""
    if not entries:
        return sha(b"")
    if len(entries) == 1:
        return sha(b"\x00" + entries[0])
    k = largest_power_below(len(entries))
    return sha(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:]))


def naive_path(m: int, entries: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    if len(entries) == 1:
        return []
    k = largest_power_below(len(entries))
    if m < k:
        return [*naive_path(m, entries[:k]), naive_mth(entries[k:])]
    return [*naive_path(m - k, entries[k:]), naive_mth(entries[:k])]


def naive_subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 section 2.1.4.1."""
    if m == len(entries):
        return [] if complete else [naive_mth(entries)]
    k = largest_power_below(len(entries))
    if m <= k:
        return [*naive_subproof(m, entries[:k], complete), naive_mth(entries[k:])]
    return [*naive_subproof(m - k, entries[k:], False), naive_mth(entries[:k])]


def naive_proof(m: int, entries: list[bytes]) -> list[bytes]:
    return naive_subproof(m, entries, True) if 0 < m < len(entries) else []


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_event(i: int, kind: str = "scan") -> Event:
    return Event(
        kind=kind,
        actor=f"tester-{i % 3}",
        time="2024-05-01T12:00:00Z",
        subjects=(Subject(f"file-{i}", digest_of(f"file-{i}")),),
        details={"n": i},
    )


@pytest.fixture(scope="session")
def naive() -> SimpleNamespace:
    """The naive RFC 9162 functions: mth, path, proof, sha."""
    return SimpleNamespace(mth=naive_mth, path=naive_path, proof=naive_proof, sha=sha)


@pytest.fixture(scope="session")
def h() -> SimpleNamespace:
    """Helpers for building events: make_event(i, kind), digest_of(text)."""
    return SimpleNamespace(make_event=make_event, digest_of=digest_of)


@pytest.fixture(scope="session")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def new_ledger(tmp_path: Path, key: Ed25519PrivateKey) -> Callable[..., Ledger]:
    """A ledger of `n` scan events with a signed checkpoint at the end."""

    def build(n: int, name: str = "ledger.db") -> Ledger:
        ledger = Ledger.create(tmp_path / name, key.public_key(), origin="test.example/log")
        ledger.append_many([make_event(i) for i in range(n)])
        ledger.checkpoint(key)
        return ledger

    return build
