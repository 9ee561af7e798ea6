"""The signature file: a Sigstore bundle (media type v0.3, JSON) holding a DSSE envelope whose
payload is the in-toto statement, signed over the DSSE pre-authentication encoding (PAE).
Verification material is either a public-key hint or an X.509 certificate chain, and the
bundle carries no transparency-log entries (key and certificate signing are offline)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.fsutil import atomic_write, read_limited
from bastion.supplychain.sign import errors
from bastion.supplychain.sign.errors import VerificationError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_BUNDLE_BYTES = 64 << 20


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def new_bundle(
    payload: bytes, signature: bytes, *, key_hint: str = "", certificates: Sequence[bytes] = ()
) -> dict[str, Any]:
    """A bundle for a payload signed by a key (named by its hint) or by a certificate chain
    (DER, leaf first)."""
    material: dict[str, Any]
    if certificates:
        chain = [{"rawBytes": _b64(der)} for der in certificates]
        material = {"x509CertificateChain": {"certificates": chain}, "tlogEntries": []}
    else:
        material = {"publicKey": {"hint": key_hint}, "tlogEntries": []}
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        },
    }


def write_bundle(path: str | os.PathLike[str], bundle: dict[str, Any]) -> Path:
    return atomic_write(path, json.dumps(bundle, indent=2) + "\n")


@dataclass
class Bundle:
    label: str
    payload: bytes
    signatures: list[bytes]
    key_hint: str | None = None
    certificates: list[bytes] = field(default_factory=list)

    @property
    def signed_bytes(self) -> bytes:
        return pae(PAYLOAD_TYPE, self.payload)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Parse a bundle without trusting it: shape and version only. A missing file is bad
    input (exit 2); a damaged or foreign one is a failed verification."""
    target = Path(path)
    label = str(target)
    raw = read_limited(
        target, "signature", MAX_BUNDLE_BYTES,
        missing=f"no signature at {target} (sign first, or pass --signature)",
    )
    if len(raw) > MAX_BUNDLE_BYTES:
        raise _malformed(label, f"larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _malformed(label, f"not JSON ({exc})") from None
    return _decode(document, label)


def _malformed(label: str, reason: str) -> VerificationError:
    return VerificationError([errors.malformed(label, reason)])


def _decode(document: Any, label: str) -> Bundle:
    if not isinstance(document, dict):
        raise _malformed(label, "not a JSON object")
    media_type = document.get("mediaType")
    if not isinstance(media_type, str):
        raise _malformed(label, "no mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise VerificationError(
            [errors.unsupported(label, f"bundle media type {media_type!r} (expected v0.3)")]
        )
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        what = "a message signature" if "messageSignature" in document else "no DSSE envelope"
        raise VerificationError([errors.unsupported(label, f"bundle holds {what}")])
    payload_type = envelope.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError([errors.unsupported(label, f"DSSE payload type {payload_type!r}")])
    payload = _base64(envelope.get("payload"), label, "dsseEnvelope.payload")
    raw_signatures = envelope.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise _malformed(label, "the DSSE envelope has no signature")
    signatures = [
        _base64(item.get("sig") if isinstance(item, dict) else None, label, "signature")
        for item in raw_signatures
    ]
    bundle = Bundle(label, payload, signatures)
    _read_material(bundle, document.get("verificationMaterial"))
    return bundle


def _read_material(bundle: Bundle, material: Any) -> None:
    if not isinstance(material, dict):
        raise _malformed(bundle.label, "no verificationMaterial")
    public_key = material.get("publicKey")
    if isinstance(public_key, dict) and isinstance(public_key.get("hint"), str):
        bundle.key_hint = public_key["hint"].lower() or None
    chain = material.get("x509CertificateChain")
    if isinstance(chain, dict):
        certificates = chain.get("certificates")
        if not isinstance(certificates, list) or not certificates:
            raise _malformed(bundle.label, "x509CertificateChain has no certificate")
        bundle.certificates = [_raw_bytes(c, bundle.label) for c in certificates]
    elif isinstance(material.get("certificate"), dict):
        bundle.certificates = [_raw_bytes(material["certificate"], bundle.label)]


def _raw_bytes(item: Any, label: str) -> bytes:
    return _base64(item.get("rawBytes") if isinstance(item, dict) else None, label, "rawBytes")


def _base64(value: Any, label: str, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _malformed(label, f"{where} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(label, f"{where} is not base64") from None
