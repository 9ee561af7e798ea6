"""Signed checkpoints: a ledger's tree size and root hash at a moment, signed with Ed25519.

The text follows the layout of a C2SP signed note carrying a transparency-log checkpoint:

    <origin>                 the log's identity, e.g. bastion.ledger/3f1c...
    <tree size>              decimal
    <root hash>              base64 of the 32-byte RFC 9162 root
    timestamp <UTC time>     extension line: when the checkpoint was signed
    (empty line)
    — <origin> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>

The signature covers the note body: every line above the empty line, each ending in "\\n".
The key id is the first four bytes of SHA-256(origin || "\\n" || 0x01 || raw public key),
as signed notes name Ed25519 keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import InputError
from bastion.fsutil import atomic_write, read_limited

SIGNATURE_DASH = "\u2014"
ED25519_ALGORITHM = b"\x01"
KEY_ID_SIZE = 4
MAX_KEY_FILE = 1 << 16


class CheckpointError(Exception):
    """A checkpoint does not verify or does not parse; the message says which."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    timestamp: str

    def body(self) -> str:
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\ntimestamp {self.timestamp}\n"

    def sign(self, key: Ed25519PrivateKey) -> str:
        """The signed note text."""
        signature = key.sign(self.body().encode("utf-8"))
        return self.note(key_id(self.origin, key.public_key()), signature)

    def note(self, signer: bytes, signature: bytes) -> str:
        blob = base64.b64encode(signer + signature).decode("ascii")
        return f"{self.body()}\n{SIGNATURE_DASH} {self.origin} {blob}\n"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(origin: str, key: Ed25519PublicKey) -> bytes:
    digest = hashlib.sha256(origin.encode("utf-8") + b"\n" + ED25519_ALGORITHM + raw_public(key))
    return digest.digest()[:KEY_ID_SIZE]


def parse(note: str) -> tuple[Checkpoint, bytes, bytes]:
    """Split a signed note into its checkpoint, the signing key id and the signature."""
    body, separator, signatures = note.partition("\n\n")
    lines = body.split("\n")
    if not separator or len(lines) != 4 or not lines[3].startswith("timestamp "):
        raise CheckpointError("not a checkpoint note (origin, size, root, timestamp, signature)")
    origin, size_text, root_text, time_line = lines
    if not size_text.isdigit():
        raise CheckpointError(f"checkpoint size {size_text!r} is not a number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointError("checkpoint root is not base64") from None
    if len(root) != hashlib.sha256().digest_size:
        raise CheckpointError("checkpoint root is not a SHA-256 hash")
    checkpoint = Checkpoint(origin, int(size_text), root, time_line.removeprefix("timestamp "))
    signature_line = signatures.rstrip("\n")
    parts = signature_line.split(" ")
    if len(parts) != 3 or parts[0] != SIGNATURE_DASH or "\n" in signature_line:
        raise CheckpointError("checkpoint must carry exactly one signature line")
    if parts[1] != origin:
        raise CheckpointError(f"checkpoint is signed by {parts[1]!r}, not by {origin!r}")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise CheckpointError("checkpoint signature is not base64") from None
    if len(blob) != KEY_ID_SIZE + 64:
        raise CheckpointError("checkpoint signature has the wrong length for Ed25519")
    return checkpoint, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:]


def verify(note: str, key: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint a note states, once its signature is checked against `key`."""
    checkpoint, signer, signature = parse(note)
    if signer != key_id(checkpoint.origin, key):
        raise CheckpointError("checkpoint was signed by a different key")
    try:
        key.verify(signature, checkpoint.body().encode("utf-8"))
    except InvalidSignature:
        raise CheckpointError("checkpoint signature does not verify") from None
    if note != checkpoint.note(signer, signature):
        raise CheckpointError("checkpoint text is not in canonical form")
    return checkpoint


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    data = read_limited(path, what, MAX_KEY_FILE)
    if len(data) > MAX_KEY_FILE:
        raise InputError(f"{what} {path} is too large to be a key")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:
        raise InputError(f"private key {path} is encrypted; ledger keys are not") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 key (ledger checkpoints use Ed25519)")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM public key, or derived from a PEM private key."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 key (ledger checkpoints use Ed25519)")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(path: str | os.PathLike[str], key: Ed25519PublicKey) -> Path:
    target = atomic_write(path, public_pem(key))
    os.chmod(target, 0o644)
    return target


def generate_key_pair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Write a new Ed25519 private key (mode 0600) and its public key; refuse to overwrite."""
    for target in (private_path, public_path):
        if target.exists():
            raise InputError(f"{target} already exists; pass --key to use an existing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(private_path, pem)
    os.chmod(private_path, 0o600)
    write_public_key(public_path, key.public_key())
    return key
