"""Gateway API keys: created once, shown once, stored only as hashes.

A key reads `bst_<id>_<secret>`: the id finds the record, the 256-bit secret proves
possession. The file keeps SHA-256 of the whole key (a random 256-bit secret needs no slow
hash: there is nothing to guess), compared in constant time. Keys carry scopes and their own
rate limit and daily budget. The gateway re-reads the file when it changes, so a revoked
key stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bastion.errors import InputError, UsageError
from bastion.fsutil import atomic_write

SCOPES = ("infer", "metadata", "metrics")
KEY_FORMAT = re.compile(r"bst_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    digest: str
    scopes: tuple[str, ...] = ("infer", "metadata")
    rate: float = 10.0
    burst: int = 20
    daily_budget: int = 10_000
    created: str = ""
    revoked: bool = False

    def public(self) -> dict[str, object]:
        """What `list` shows: everything but the digest."""
        record = asdict(self)
        record.pop("digest")
        record["scopes"] = list(self.scopes)
        return record


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass
class KeyFile:
    path: Path
    keys: dict[str, ApiKey] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, create: bool = False) -> KeyFile:
        target = Path(path)
        if not target.exists():
            if create:
                return cls(target)
            raise InputError(
                f"{target}: no such API key file (create one: bastion api-keys create)"
            )
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            keys = {}
            for item in data["keys"]:
                item["scopes"] = tuple(item["scopes"])
                key = ApiKey(**item)
                keys[key.id] = key
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{target}: not a Bastion API key file ({exc})") from None
        return cls(target, keys)

    def save(self) -> None:
        body = {
            "version": FORMAT_VERSION,
            "keys": [{**asdict(k), "scopes": list(k.scopes)} for k in self.keys.values()],
        }
        atomic_write(self.path, json.dumps(body, indent=2) + "\n")
        os.chmod(self.path, 0o600)

    def create(
        self,
        name: str,
        *,
        scopes: tuple[str, ...] = ("infer", "metadata"),
        rate: float = 10.0,
        burst: int = 20,
        daily_budget: int = 10_000,
        created: str = "",
    ) -> tuple[ApiKey, str]:
        """A new key; returns its record and the token, which is never stored."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise UsageError(f"unknown scope(s) {', '.join(unknown)} (known: {', '.join(SCOPES)})")
        if rate <= 0 or burst < 1 or daily_budget < 1:
            raise UsageError("--rate must be > 0, --burst and --daily-budget at least 1")
        key_id = secrets.token_hex(6)
        token = f"bst_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name, _digest(token), tuple(scopes), rate, burst, daily_budget,
                     created)
        self.keys[key_id] = key
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        key = self.keys.get(key_id)
        if key is None:
            raise InputError(f"no API key with id {key_id!r} in {self.path}")
        revoked = ApiKey(**{**asdict(key), "revoked": True})
        self.keys[key_id] = revoked
        return revoked


class AuthError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class KeyRing:
    """The gateway's view of the key file, reloaded when the file changes (looked at no more
    than once per `recheck_s`: a revoked key is refused within that time)."""

    def __init__(self, path: str | os.PathLike[str], recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self._checked = time.monotonic()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = KeyFile.load(self.path).keys  # errors at start
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed; fail closed (no keys) when it vanished or
        stopped parsing, rather than keep honouring keys that may have been revoked."""
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            try:
                self._keys = KeyFile.load(self.path).keys
            except InputError:
                self._keys = {}
            self._stamp = stamp

    def authenticate(self, token: str | None, scope: str) -> ApiKey:
        """The key behind `token`, or AuthError(401 unknown, 403 revoked or out of scope)."""
        if not token:
            raise AuthError(401, "missing API key (send Authorization: Bearer KEY or X-API-Key)")
        self._refresh()
        match = KEY_FORMAT.fullmatch(token)
        key = self._keys.get(match.group(1)) if match else None
        # Compare against a digest even for an unknown id, so timing does not reveal ids.
        expected = key.digest if key is not None else "0" * 64
        if not hmac.compare_digest(_digest(token) if match else "", expected) or key is None:
            raise AuthError(401, "invalid API key")
        if key.revoked:
            raise AuthError(403, "API key revoked")
        if scope not in key.scopes:
            raise AuthError(403, f"API key lacks the {scope!r} scope")
        return key
