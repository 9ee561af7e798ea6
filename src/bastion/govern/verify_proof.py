"""Check a Bastion ledger proof without Bastion: a standalone verifier for RFC 9162 Merkle
inclusion and consistency proofs.

This file imports only the Python standard library, so a third party can copy it on its own
and run it:

    python verify_proof.py proof.json [--root HEX_OR_BASE64]

or, with Bastion installed, `python -m bastion.govern.verify_proof proof.json`.

Exit status: 0 the proof holds, 1 it does not, 2 the file cannot be read. A proof only ties a
leaf (or an older tree) to a root hash; compare that root with a checkpoint you trust (pass
it as --root, or check the signed checkpoint the proof carries with the ledger's public key).

Hashing (RFC 6962 / RFC 9162 section 2.1): leaf = SHA-256(0x00 || entry bytes),
node = SHA-256(0x01 || left || right), empty tree = SHA-256("").
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32
# A path longer than this cannot belong to a tree of at most 2**64 leaves.
MAX_PATH = 64


class ProofError(ValueError):
    """The proof document is malformed (as opposed to well-formed but wrong)."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does `path` lead from `leaf` at `index` to `root`?"""
    if index < 0 or index >= size or len(path) > MAX_PATH:
        return False
    fn, sn = index, size - 1
    result = leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            # Skip the levels where this node is the last, unpaired one of its row.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: is the tree of `old_size` a prefix of the one of `new_size`?"""
    if old_size < 0 or old_size > new_size or len(path) > MAX_PATH:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        # Every tree extends the empty one; RFC 9162 defines no proof for it.
        return not path and old_root == hashlib.sha256(b"").digest()
    if not path:
        return False
    nodes = list(path)
    if old_size & (old_size - 1) == 0:
        nodes.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    old_hash = new_hash = nodes[0]
    for node in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            old_hash = node_hash(node, old_hash)
            new_hash = node_hash(node, new_hash)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            new_hash = node_hash(new_hash, node)
        fn >>= 1
        sn >>= 1
    return fn == 0 and sn == 0 and old_hash == old_root and new_hash == new_root


def decode_hash(text: object, what: str) -> bytes:
    """A hash given as 64 hex digits or as base64 (the form checkpoints use)."""
    if not isinstance(text, str):
        raise ProofError(f"{what} must be a string")
    try:
        raw = (
            bytes.fromhex(text)
            if len(text) == 2 * HASH_SIZE
            else base64.b64decode(text, validate=True)
        )
    except ValueError:
        raise ProofError(f"{what} is neither hex nor base64") from None
    if len(raw) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")
    return raw


def _size(document: dict, key: str) -> int:
    value = document.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{key} must be a non-negative integer")
    return value


def _path(document: dict, key: str) -> list[bytes]:
    nodes = document.get(key)
    if not isinstance(nodes, list):
        raise ProofError(f"{key} must be a list of hashes")
    return [decode_hash(node, f"{key}[{i}]") for i, node in enumerate(nodes)]


def checkpoint_claims(note: str) -> tuple[int, bytes]:
    """Tree size and root hash stated by a checkpoint note (its signature is not checked
    here: that needs the ledger's Ed25519 public key)."""
    lines = note.split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        raise ProofError("checkpoint is not a checkpoint note (origin, size, root lines)")
    return int(lines[1]), decode_hash(lines[2], "checkpoint root")


def check_inclusion(document: dict) -> str:
    index, size = _size(document, "leaf_index"), _size(document, "tree_size")
    leaf = decode_hash(document.get("leaf_hash"), "leaf_hash")
    entry = document.get("entry")
    if entry is not None:
        if not isinstance(entry, str):
            raise ProofError("entry must be the entry's canonical JSON text")
        if leaf_hash(entry.encode("utf-8")) != leaf:
            return f"entry does not hash to leaf_hash {leaf.hex()}"
    root = decode_hash(document.get("root_hash"), "root_hash")
    if not verify_inclusion(index, size, leaf, _path(document, "audit_path"), root):
        return f"leaf {index} is not in the tree of size {size} with root {root.hex()}"
    return ""


def check_consistency(document: dict) -> str:
    old_size, new_size = _size(document, "old_size"), _size(document, "new_size")
    old_root = decode_hash(document.get("old_root"), "old_root")
    new_root = decode_hash(document.get("new_root"), "new_root")
    path = _path(document, "consistency_path")
    if not verify_consistency(old_size, new_size, old_root, new_root, path):
        return f"tree of size {old_size} is not a prefix of the tree of size {new_size}"
    return ""


def trusted_root_mismatch(document: dict, root: bytes | None) -> str:
    """Compare the proof's (newest) root with a root the caller trusts, and with the
    checkpoint note the proof carries, if any."""
    proof_root_key = "root_hash" if document.get("type") == "inclusion" else "new_root"
    size_key = "tree_size" if document.get("type") == "inclusion" else "new_size"
    proof_root = decode_hash(document.get(proof_root_key), proof_root_key)
    if root is not None and proof_root != root:
        return f"the proof's root {proof_root.hex()} is not the trusted root {root.hex()}"
    note = document.get("checkpoint")
    if note is not None:
        if not isinstance(note, str):
            raise ProofError("checkpoint must be the checkpoint note text")
        size, note_root = checkpoint_claims(note)
        if size != document.get(size_key) or note_root != proof_root:
            return "the proof's tree size and root differ from its checkpoint"
    return ""


def check(document: object, root: bytes | None = None) -> str:
    """Empty string when the proof holds, else the reason it does not."""
    if not isinstance(document, dict):
        raise ProofError("a proof is a JSON object")
    kind = document.get("type")
    if kind == "inclusion":
        failure = check_inclusion(document)
    elif kind == "consistency":
        failure = check_consistency(document)
    else:
        raise ProofError("type must be 'inclusion' or 'consistency'")
    return failure or trusted_root_mismatch(document, root)


def _arguments(argv: list[str]) -> tuple[str, bytes | None]:
    if len(argv) == 1:
        return argv[0], None
    if len(argv) == 3 and argv[1] == "--root":
        return argv[0], decode_hash(argv[2], "--root")
    raise ProofError("usage: python -m bastion.govern.verify_proof PROOF.json [--root HASH]")


def main(argv: list[str] | None = None) -> int:
    try:
        path, root = _arguments(sys.argv[1:] if argv is None else argv)
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        failure = check(document, root)
    except (OSError, ProofError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if failure:
        print(f"FAIL: {failure}")
        return 1
    print(f"OK: {document['type']} proof holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
