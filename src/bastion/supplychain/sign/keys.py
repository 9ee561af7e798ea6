"""Elliptic-curve keys and X.509 certificates for signing, through `cryptography`.

Keys are PEM: PKCS#8 private keys (optionally encrypted with a passphrase) and
SubjectPublicKeyInfo public keys, on the NIST curves the model-signing format accepts.
The signature hash follows the curve size (P-256: SHA-256, P-384: SHA-384, P-521: SHA-512),
and the key hint in a bundle is the SHA-256 of the public key's PEM text.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as x509_verification

from bastion.errors import InputError
from bastion.fsutil import atomic_write, read_limited

CURVES: dict[str, type[ec.EllipticCurve]] = {
    "p256": ec.SECP256R1,
    "p384": ec.SECP384R1,
    "p521": ec.SECP521R1,
}
_CURVE_NAMES = {curve.name for curve in CURVES.values()}
_HASH_BY_KEY_SIZE = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}
MAX_KEY_FILE = 1 << 20

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    target = Path(path)
    data = read_limited(target, what, MAX_KEY_FILE)
    if len(data) > MAX_KEY_FILE:
        raise InputError(f"{what} {target} is larger than {MAX_KEY_FILE} bytes")
    return data


def _supported(public_key: object, path: str | os.PathLike[str]) -> PublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InputError(
            f"{path} is not an elliptic-curve key (model signing uses ECDSA P-256/P-384/P-521)"
        )
    if public_key.curve.name not in _CURVE_NAMES:
        raise InputError(f"{path} uses curve {public_key.curve.name}; use P-256, P-384 or P-521")
    return public_key


def signature_hash(public_key: PublicKey) -> hashes.HashAlgorithm:
    return _HASH_BY_KEY_SIZE[public_key.curve.key_size]()


def public_pem(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hint(public_key: PublicKey) -> str:
    """How a bundle names its key without carrying it: sha256 of the public PEM."""
    return hashlib.sha256(public_pem(public_key)).hexdigest()


def generate_key_pair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str] | None = None,
    *,
    curve: str = "p256",
    passphrase: str | bytes | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a new private key (mode 0600, encrypted when a passphrase is given) and its
    public key (default: the private key's path with suffix .pub)."""
    if curve not in CURVES:
        raise InputError(f"unknown curve {curve!r} (expected one of: {', '.join(CURVES)})")
    private = Path(private_path)
    public = Path(public_path) if public_path else private.with_suffix(".pub")
    if private == public:
        raise InputError(f"the private and public key cannot both be written to {private}")
    for target in (private, public):
        if target.exists() and not overwrite:
            raise InputError(f"{target} already exists (pass --force to replace it)")
    key = ec.generate_private_key(CURVES[curve]())
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    atomic_write(private, pem)
    atomic_write(public, public_pem(key.public_key()))
    os.chmod(public, 0o644)
    return private, public


def load_private_key(
    path: str | os.PathLike[str],
    passphrase: str | bytes | None = None,
    ask: Callable[[], str] | None = None,
) -> PrivateKey:
    """Load a PEM private key. An encrypted key takes `passphrase`, else `ask()` is called
    (the CLI prompts); with neither, the error says how to provide one."""
    data = _read(path, "private key")
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    try:
        key = serialization.load_pem_private_key(data, secret)
    except TypeError:
        if secret is not None:
            raise InputError(f"private key {path} is not encrypted; give no passphrase") from None
        if ask is None:
            raise InputError(
                f"private key {path} is encrypted: set the passphrase in "
                "BASTION_KEY_PASSPHRASE (or --passphrase-env) or run in a terminal"
            ) from None
        return load_private_key(path, ask(), None)
    except ValueError:
        reason = "wrong passphrase or not a PEM private key" if secret else "not a PEM private key"
        raise InputError(f"cannot load private key {path}: {reason}") from None
    except UnsupportedAlgorithm:
        raise InputError(f"cannot load private key {path}: unsupported key type") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(
            f"{path} is not an elliptic-curve key (model signing uses ECDSA P-256/P-384/P-521)"
        )
    _supported(key.public_key(), path)
    return key


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path} is not a PEM public key") from None
    return _supported(key, path)


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """DER-encoded ECDSA signature, as DSSE and the Sigstore bundle carry it."""
    return key.sign(data, ec.ECDSA(signature_hash(key.public_key())))


def verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(signature_hash(key)))
    except InvalidSignature:
        return False
    return True


def load_certificates(paths: Iterable[str | os.PathLike[str]]) -> list[x509.Certificate]:
    """Every PEM certificate in the given files, in order."""
    certificates: list[x509.Certificate] = []
    for path in paths:
        data = _read(path, "certificate")
        try:
            certificates.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise InputError(f"{path} holds no PEM certificate") from None
    return certificates


def check_certificate_key(certificate: x509.Certificate, key: PrivateKey, path: str) -> None:
    if certificate.public_key() != key.public_key():
        raise InputError(f"certificate {path} does not belong to the signing key")


def _may_sign(certificate: x509.Certificate) -> bool:
    """Digital signature key usage, or the code-signing extended key usage."""
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in usage


def trusted_signing_key(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate]
) -> PublicKey:
    """The leaf's public key once its chain reaches one of `roots`, checked at the time the
    leaf became valid (a bundle without a timestamp has no better signing time; the peer
    does the same). Raises ValueError with the reason when the chain is not trusted."""
    policy = (
        x509_verification.PolicyBuilder()
        .store(x509_verification.Store(roots))
        .time(leaf.not_valid_before_utc)
        .extension_policies(
            ca_policy=x509_verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=x509_verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        policy.build_client_verifier().verify(leaf, intermediates)
    except x509_verification.VerificationError as exc:
        raise ValueError(str(exc)) from None
    if not _may_sign(leaf):
        raise ValueError("the certificate is not allowed to sign (key usage)")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate's key is not an elliptic-curve key")
    return key
