"""Signing a model or dataset (a folder or one file) into a Sigstore bundle."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bastion.errors import InputError
from bastion.supplychain.sign import keys
from bastion.supplychain.sign.bundle import PAYLOAD_TYPE, new_bundle, pae, write_bundle
from bastion.supplychain.sign.hashing import new_hasher
from bastion.supplychain.sign.manifest import (
    DEFAULT_SHARD_SIZE,
    FILES,
    METHODS,
    SHARDS,
    Manifest,
    Serialization,
    build_manifest,
)
from bastion.supplychain.sign.tree import GIT_PATHS, Listing, artifact_name, list_artifact

DEFAULT_SIGNATURE_NAME = "model.sig"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SignResult:
    path: Path
    signature: Path
    method: str
    hash_type: str
    files: int
    bytes: int
    resources: int
    digest: str
    seconds: float


def default_signature_path(path: PathLike) -> Path:
    """`model.sig` inside a folder; `NAME.sig` beside a single file."""
    target = Path(path)
    if target.is_dir():
        return target / DEFAULT_SIGNATURE_NAME
    return target.with_name(target.name + ".sig")


def relative_inside(root: Path, path: Path) -> str | None:
    """`path` relative to the folder `root` (POSIX), or None when it lies outside."""
    if not root.is_dir():
        return None
    try:
        inside = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    text = inside.as_posix()
    return None if text == "." else text


def check_options(method: str, hash_type: str, shard_size: int) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r} (expected one of: {', '.join(METHODS)})")
    if method == SHARDS and hash_type == "blake3":
        raise InputError(
            "blake3 is parallel by itself: sign with --method files (as model-signing does)"
        )
    if shard_size <= 0:
        raise InputError(f"shard size must be positive, got {shard_size}")
    new_hasher(hash_type)


def _refuse(listing: Listing) -> None:
    if listing.refused:
        more = f" (and {len(listing.refused) - 1} more)" if len(listing.refused) > 1 else ""
        raise InputError(f"cannot sign {listing.root}: {listing.refused[0].message}{more}")


def hash_artifact(
    path: PathLike,
    *,
    method: str = FILES,
    hash_type: str = "sha256",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore: Iterable[str] = (),
    ignore_prefixes: Sequence[str] = (),
    allow_symlinks: bool = False,
    workers: int | None = None,
) -> tuple[Manifest, Listing]:
    """The manifest of an artifact as it is on disk now; InputError if it cannot be signed."""
    check_options(method, hash_type, shard_size)
    listing = list_artifact(
        path, ignore_prefixes=ignore_prefixes, patterns=tuple(ignore), allow_symlinks=allow_symlinks
    )
    _refuse(listing)
    recorded = () if listing.is_file else (*GIT_PATHS, *ignore_prefixes, *listing.matched)
    serialization_ = Serialization(
        method,
        hash_type,
        allow_symlinks,
        tuple(sorted(set(recorded))),
        shard_size if method == SHARDS else None,
    )
    manifest, read_errors = build_manifest(
        artifact_name(listing.root), listing, serialization_, workers
    )
    if read_errors:
        name, exc = next(iter(read_errors.items()))
        raise InputError(f"cannot read {name} in {listing.root}: {exc.strerror}")
    return manifest, listing


def sign(
    path: PathLike,
    key: PathLike | keys.PrivateKey,
    signature: PathLike | None = None,
    *,
    method: str = FILES,
    hash_type: str = "sha256",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore: Iterable[str] = (),
    allow_symlinks: bool = False,
    certificate: PathLike | None = None,
    certificate_chain: Iterable[PathLike] = (),
    passphrase: str | bytes | None = None,
    ask_passphrase: Callable[[], str] | None = None,
    workers: int | None = None,
) -> SignResult:
    """Sign the folder or file at `path` with an EC private key (PEM path or loaded key),
    optionally under an X.509 certificate (plus its chain), into a Sigstore bundle at
    `signature` (default: see `default_signature_path`). The signature file itself, git
    metadata and paths matching `ignore` patterns are left out of the manifest."""
    started = time.perf_counter()
    root = Path(path)
    check_options(method, hash_type, shard_size)
    private_key = (
        key
        if isinstance(key, keys.PrivateKey)
        else keys.load_private_key(key, passphrase, ask_passphrase)
    )
    chain = _certificate_chain(private_key, certificate, certificate_chain)
    if not root.exists() and not root.is_symlink():
        raise InputError(f"no such file or folder: {root}")
    out = Path(signature) if signature else default_signature_path(root)
    inside = relative_inside(root, out)
    manifest, listing = hash_artifact(
        root,
        method=method,
        hash_type=hash_type,
        shard_size=shard_size,
        ignore=ignore,
        ignore_prefixes=(inside,) if inside else (),
        allow_symlinks=allow_symlinks,
        workers=workers,
    )
    payload = json.dumps(manifest.statement(), indent=2, ensure_ascii=False).encode("utf-8")
    signed = keys.sign_bytes(private_key, pae(PAYLOAD_TYPE, payload))
    bundle = new_bundle(
        payload, signed, key_hint=keys.key_hint(private_key.public_key()), certificates=chain
    )
    write_bundle(out, bundle)
    return SignResult(
        root,
        out,
        method,
        hash_type,
        len(listing.files),
        listing.total_bytes,
        len(manifest.resources),
        manifest.root_digest(),
        time.perf_counter() - started,
    )


def _certificate_chain(
    key: keys.PrivateKey, certificate: PathLike | None, chain: Iterable[PathLike]
) -> list[bytes]:
    """DER certificates, signing certificate first, for the bundle; empty without one."""
    extra = list(chain)
    if certificate is None:
        if extra:
            raise InputError("--certificate-chain needs --certificate when signing")
        return []
    leaf = keys.load_certificates([certificate])[0]
    keys.check_certificate_key(leaf, key, str(certificate))
    return [
        c.public_bytes(serialization.Encoding.DER) for c in [leaf, *keys.load_certificates(extra)]
    ]
