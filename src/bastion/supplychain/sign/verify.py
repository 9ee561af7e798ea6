"""Verifying a model or dataset against its bundle: authenticity first (key or certificate
chain), then the signed manifest is decoded and checked for escaping paths, then the files on
disk are hashed the same way and every difference is reported by name."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from bastion.errors import InputError
from bastion.supplychain.sign import errors, keys
from bastion.supplychain.sign.bundle import Bundle, read_bundle
from bastion.supplychain.sign.errors import VerificationError
from bastion.supplychain.sign.manifest import (
    SHARDS,
    Manifest,
    Serialization,
    build_manifest,
    compare,
    manifest_from_statement,
    split_shard,
)
from bastion.supplychain.sign.signer import default_signature_path, relative_inside
from bastion.supplychain.sign.tree import SINGLE_FILE_NAME, Listing, artifact_name, list_artifact

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    signature: Path
    method: str
    hash_type: str
    files: int
    bytes: int
    resources: int
    digest: str
    signer: str
    seconds: float


def _authenticate(
    bundle: Bundle, key: PathLike | keys.PublicKey | None, roots: list[x509.Certificate]
) -> str:
    """Check the DSSE signature; returns who signed (key hint or certificate subject)."""
    if key is not None:
        public_key = key if isinstance(key, keys.PublicKey) else keys.load_public_key(key)
        shown = "the given key" if isinstance(key, keys.PublicKey) else str(key)
        hint = keys.key_hint(public_key)
        if bundle.key_hint and bundle.key_hint != hint:
            raise VerificationError([errors.wrong_key(bundle.label, shown)])
        if not any(keys.verifies(public_key, s, bundle.signed_bytes) for s in bundle.signatures):
            raise VerificationError([errors.bad_signature(bundle.label, shown)])
        return f"key {hint[:16]}"
    if not bundle.certificates:
        reason = "the bundle carries no certificate (verify with --key)"
        raise VerificationError([errors.untrusted(bundle.label, reason)])
    try:
        chain = [x509.load_der_x509_certificate(der) for der in bundle.certificates]
    except ValueError:
        raise VerificationError(
            [errors.malformed(bundle.label, "a certificate is not DER")]
        ) from None
    try:
        public_key = keys.trusted_signing_key(chain[0], chain[1:], roots)
    except ValueError as exc:
        raise VerificationError([errors.untrusted(bundle.label, str(exc))]) from None
    subject = chain[0].subject.rfc4514_string()
    if not any(keys.verifies(public_key, s, bundle.signed_bytes) for s in bundle.signatures):
        raise VerificationError([errors.bad_signature(bundle.label, f"certificate {subject}")])
    return f"certificate {subject}"


def _signed_manifest(bundle: Bundle) -> Manifest:
    try:
        statement = json.loads(bundle.payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerificationError(
            [errors.malformed(bundle.label, "the signed payload is not JSON")]
        ) from None
    return manifest_from_statement(statement, bundle.label)


def verify(
    path: PathLike,
    key: PathLike | keys.PublicKey | None = None,
    signature: PathLike | None = None,
    *,
    certificate_chain: Iterable[PathLike] = (),
    allow_symlinks: bool = False,
    ignore: Iterable[str] = (),
    workers: int | None = None,
) -> VerifyResult:
    """Verify the folder or file at `path` against its bundle with a public key, or with the
    certificate chain in the bundle rooted in `certificate_chain`. Raises VerificationError
    (every problem found, each with its exact message) or InputError for unusable input."""
    started = time.perf_counter()
    roots_paths = list(certificate_chain)
    if key is None and not roots_paths:
        raise InputError("verification needs a public key (--key) or a --certificate-chain")
    if key is not None and roots_paths:
        raise InputError("give either a public key or a certificate chain, not both")
    roots = keys.load_certificates(roots_paths)
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise InputError(f"no such file or folder: {root}")
    sig = Path(signature) if signature else default_signature_path(root)
    bundle = read_bundle(sig)
    signer = _authenticate(bundle, key, roots)
    expected = _signed_manifest(bundle)
    actual, listing = _hash_now(root, sig, expected.serialization, allow_symlinks, ignore, workers)
    if SINGLE_FILE_NAME in listing.refused_names:
        raise VerificationError(listing.refused)
    label = root.name if listing.is_file else ""
    problems = listing.refused + compare(
        expected, actual, [e.name for e in listing.files], listing.refused_names, label
    )
    if problems:
        raise VerificationError(problems)
    return VerifyResult(
        root,
        sig,
        expected.serialization.method,
        expected.serialization.hash_type,
        len(listing.files),
        listing.total_bytes,
        len(expected.resources),
        expected.root_digest(),
        signer,
        time.perf_counter() - started,
    )


def _hash_now(
    root: Path,
    signature: Path,
    signed: Serialization,
    allow_symlinks: bool,
    ignore: Iterable[str],
    workers: int | None,
) -> tuple[Manifest, Listing]:
    """Hash the artifact as it is now, the way it was signed, skipping what the signer
    ignored and the signature file itself."""
    inside = relative_inside(root, signature)
    prefixes = (*signed.ignore_paths, *((inside,) if inside else ()))
    listing = list_artifact(
        root, ignore_prefixes=prefixes, patterns=tuple(ignore), allow_symlinks=allow_symlinks
    )
    serialization = Serialization(
        signed.method, signed.hash_type, allow_symlinks, signed.ignore_paths, signed.shard_size
    )
    actual, read_errors = build_manifest(artifact_name(root), listing, serialization, workers)
    if read_errors:
        key, exc = next(iter(read_errors.items()))
        name = split_shard(str(key))[0] if signed.method == SHARDS else str(key)
        # A file that vanished or became a symlink after the folder was listed is tampering.
        if exc.errno == errno.ENOENT:
            raise VerificationError([errors.missing(name)])
        if exc.errno == errno.ELOOP:
            raise VerificationError([errors.symlink_refused(name)])
        raise InputError(f"cannot read {name} in {root}: {exc.strerror}")
    return actual, listing


def verify_model(
    path: PathLike,
    key: PathLike | keys.PublicKey,
    signature: PathLike | None = None,
    *,
    allow_symlinks: bool = False,
) -> VerifyResult:
    """What safe loading calls before it scans and loads: verify `path` (a model file or
    folder) with `key`; a mismatch raises VerificationError and must stop the load."""
    return verify(path, key, signature, allow_symlinks=allow_symlinks)
