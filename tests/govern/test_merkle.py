"""Merkle hashing and proofs against a naive recursive implementation of RFC 9162 section 2.1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bastion.govern.merkle import (
    EMPTY_ROOT,
    CompactRange,
    PackedTree,
    consistency_path,
    inclusion_path,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

ENTRIES = [f"entry {i}".encode() for i in range(70)]


def subtree_source(entries: list[bytes], naive: SimpleNamespace):
    """Perfect-subtree hashes computed naively, as storage would hand them out."""

    def subtree(level: int, index: int) -> bytes:
        width = 1 << level
        return naive.mth(entries[index * width : (index + 1) * width])

    return subtree


def test_leaf_and_node_prefixes_follow_rfc_6962(naive: SimpleNamespace) -> None:
    assert leaf_hash(b"x") == naive.sha(b"\x00x")
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_root_of_the_certificate_transparency_test_tree() -> None:
    """The eight-leaf tree used by the Certificate Transparency reference tests."""
    leaves = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        bytes(range(0x60, 0x70)),
    ]
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf_hash(leaf))
    assert tree.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize("size", range(0, 70))
def test_compact_range_and_packed_tree_roots_match_naive(size: int, naive: SimpleNamespace) -> None:
    tree = CompactRange()
    for entry in ENTRIES[:size]:
        tree.append(leaf_hash(entry))
    packed = PackedTree(b"".join(leaf_hash(e) for e in ENTRIES[:size]))
    assert tree.root() == packed.root() == naive.mth(ENTRIES[:size])


def test_compact_range_reports_each_completed_subtree(naive: SimpleNamespace) -> None:
    tree = CompactRange()
    created = [tree.append(leaf_hash(e)) for e in ENTRIES[:8]]
    assert [[(lv, i) for lv, i, _ in c] for c in created] == [
        [],
        [(1, 0)],
        [],
        [(1, 1), (2, 0)],
        [],
        [(1, 2)],
        [],
        [(1, 3), (2, 1), (3, 0)],
    ]
    assert created[7][-1][2] == naive.mth(ENTRIES[:8])


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 31, 33, 64, 70])
def test_inclusion_paths_match_naive_and_verify(size: int, naive: SimpleNamespace) -> None:
    entries = ENTRIES[:size]
    root = naive.mth(entries)
    for index in range(size):
        path = inclusion_path(index, size, subtree_source(entries, naive))
        assert path == naive.path(index, entries)
        assert verify_inclusion(index, size, leaf_hash(entries[index]), path, root)


@pytest.mark.parametrize("new", [1, 2, 3, 5, 8, 9, 16, 21, 33, 70])
def test_consistency_proofs_match_naive_and_verify(new: int, naive: SimpleNamespace) -> None:
    entries = ENTRIES[:new]
    for old in range(0, new + 1):
        proof = consistency_path(old, new, subtree_source(entries, naive))
        assert proof == naive.proof(old, entries)
        assert verify_consistency(old, new, naive.mth(entries[:old]), naive.mth(entries), proof)


def test_inclusion_verification_rejects_every_wrong_input(naive: SimpleNamespace) -> None:
    entries = ENTRIES[:13]
    root = naive.mth(entries)
    path = naive.path(6, entries)
    leaf = leaf_hash(entries[6])
    assert verify_inclusion(6, 13, leaf, path, root)
    assert not verify_inclusion(7, 13, leaf, path, root)
    assert not verify_inclusion(6, 7, leaf, path, root)
    assert not verify_inclusion(6, 13, leaf_hash(b"other"), path, root)
    assert not verify_inclusion(6, 13, leaf, path[:-1], root)
    assert not verify_inclusion(6, 13, leaf, [*path, root], root)
    assert not verify_inclusion(13, 13, leaf, path, root)
    for i in range(len(path)):
        bent = list(path)
        bent[i] = bytes([bent[i][0] ^ 1]) + bent[i][1:]
        assert not verify_inclusion(6, 13, leaf, bent, root)


def test_consistency_verification_rejects_every_wrong_input(naive: SimpleNamespace) -> None:
    old_root, new_root = naive.mth(ENTRIES[:6]), naive.mth(ENTRIES[:21])
    proof = naive.proof(6, ENTRIES[:21])
    assert verify_consistency(6, 21, old_root, new_root, proof)
    assert not verify_consistency(7, 21, old_root, new_root, proof)
    assert not verify_consistency(6, 16, old_root, new_root, proof)
    assert not verify_consistency(6, 21, new_root, new_root, proof)
    assert not verify_consistency(6, 21, old_root, old_root, proof)
    assert not verify_consistency(6, 21, old_root, new_root, proof[:-1])
    assert not verify_consistency(6, 21, old_root, new_root, [])
    assert not verify_consistency(21, 6, new_root, old_root, proof)
    # A changed early entry makes the old tree no prefix of the new one.
    forked = [b"forged", *ENTRIES[1:21]]
    assert not verify_consistency(6, 21, naive.mth(forked[:6]), new_root, proof)
    assert verify_consistency(0, 21, EMPTY_ROOT, new_root, [])
    assert not verify_consistency(0, 21, old_root, new_root, [])


def test_proof_requests_outside_the_tree_are_refused(naive: SimpleNamespace) -> None:
    source = subtree_source(ENTRIES[:4], naive)
    with pytest.raises(ValueError):
        inclusion_path(4, 4, source)
    with pytest.raises(ValueError):
        consistency_path(5, 4, source)
    with pytest.raises(ValueError):
        CompactRange(3, [b"x"])
