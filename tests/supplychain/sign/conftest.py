"""Fixtures for signing tests: key pairs written once per session, a small model folder, and a
helper that signs an arbitrary in-toto statement with the right key (to reach the checks that
come after authenticity: versions, escaping paths, malformed manifests)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.supplychain.sign import generate_key_pair, keys
from bastion.supplychain.sign.bundle import PAYLOAD_TYPE, new_bundle, pae, write_bundle


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def load(self) -> keys.PrivateKey:
        return keys.load_private_key(self.private)


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_key_pair(folder / "signer.pem")
    return KeyPair(private, public)


@pytest.fixture(scope="session")
def other_key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    folder = tmp_path_factory.mktemp("other-keys")
    private, public = generate_key_pair(folder / "other.pem", curve="p384")
    return KeyPair(private, public)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


MODEL_FILES = {
    "config.json": b'{"layers": 2}',
    "weights/model-00001.safetensors": bytes(range(256)) * 40,
    "weights/model-00002.safetensors": b"\x01\x02" * 3000,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "README.md": b"# model\n",
}


@pytest.fixture
def model_files() -> dict[str, bytes]:
    return dict(MODEL_FILES)


@pytest.fixture(name="write_tree")
def write_tree_fixture() -> Callable[[Path, dict[str, bytes]], Path]:
    return write_tree


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A small model folder with nested files and git metadata that must be ignored."""
    root = write_tree(tmp_path / "model", MODEL_FILES)
    write_tree(root, {".git/HEAD": b"ref: refs/heads/main\n", ".gitattributes": b"* -text\n"})
    return root


@pytest.fixture
def sign_statement(key_pair: KeyPair) -> Callable[[dict[str, Any], Path], Path]:
    """Write a bundle for `statement`, correctly signed with `key_pair`; the subject digest is
    recomputed from the resources unless `keep_subject`, so only the intended flaw remains."""

    def write(statement: dict[str, Any], out: Path, keep_subject: bool = False) -> Path:
        if not keep_subject:
            digests = [bytes.fromhex(r["digest"]) for r in statement["predicate"]["resources"]]
            root = hashlib.sha256(b"".join(digests)).hexdigest()
            statement["subject"][0]["digest"]["sha256"] = root
        payload = json.dumps(statement).encode("utf-8")
        private = key_pair.load()
        signature = keys.sign_bytes(private, pae(PAYLOAD_TYPE, payload))
        bundle = new_bundle(payload, signature, key_hint=keys.key_hint(private.public_key()))
        return write_bundle(out, bundle)

    return write


def read_statement(bundle_path: Path) -> dict[str, Any]:
    bundle = json.loads(bundle_path.read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


@pytest.fixture
def statement_of() -> Callable[[Path], dict[str, Any]]:
    return read_statement


@pytest.fixture
def sparse_file() -> Callable[[Path, int], Path]:
    """A file of `size` bytes that takes no disk space, with a few bytes written into it."""

    def make(path: Path, size: int) -> Path:
        with open(path, "wb") as handle:
            handle.truncate(size)
            for offset in (0, size // 3, size - 5):
                handle.seek(offset)
                handle.write(b"BSTN!")
        assert os.stat(path).st_size == size
        return path

    return make


@dataclass(frozen=True)
class Pki:
    """A root CA, an intermediate CA, and leaf certificates with their private keys (PEM)."""

    root: Path
    intermediate: Path
    leaf: Path
    leaf_key: Path
    unusable_leaf: Path
    unusable_key: Path
    stranger_root: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    may_sign: bool = True,
) -> x509.Certificate:
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        ).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    elif may_sign:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    blobs = []
    for item in items:
        if isinstance(item, x509.Certificate):
            blobs.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            blobs.append(
                item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    path.write_bytes(b"".join(blobs))
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    root_key, inter_key, leaf_key, bad_key, stranger_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(5)
    )
    root = _certificate("Bastion Test Root", root_key, "Bastion Test Root", root_key, ca=True)
    inter = _certificate("Bastion Test CA", inter_key, "Bastion Test Root", root_key, ca=True)
    leaf = _certificate("model-publisher", leaf_key, "Bastion Test CA", inter_key, ca=False)
    unusable = _certificate(
        "no-signing", bad_key, "Bastion Test CA", inter_key, ca=False, may_sign=False
    )
    stranger = _certificate("Stranger Root", stranger_key, "Stranger Root", stranger_key, ca=True)
    return Pki(
        root=_write_pem(folder / "root.pem", root),
        intermediate=_write_pem(folder / "intermediate.pem", inter),
        leaf=_write_pem(folder / "leaf.pem", leaf),
        leaf_key=_write_pem(folder / "leaf-key.pem", leaf_key),
        unusable_leaf=_write_pem(folder / "unusable.pem", unusable),
        unusable_key=_write_pem(folder / "unusable-key.pem", bad_key),
        stranger_root=_write_pem(folder / "stranger.pem", stranger),
    )
