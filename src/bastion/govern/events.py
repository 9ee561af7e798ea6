"""Ledger entries: typed JSON events and the canonical bytes that get hashed.

An event says what happened (`kind`), who did it (`actor`), when (`time`, UTC ISO-8601), to
which artifacts (`subjects`: name + sha256 digest), from which inputs (`parents`: digests),
plus free JSON `details`. Lineage follows parents: a `train` event names the dataset digest
as a parent and the model digest as a subject; a `deploy` event names the model as a parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bastion.errors import InputError

KINDS = (
    "scan", "sign", "verify", "data-diff", "train", "assess", "deploy", "key-event", "document",
)
FIELDS = ("kind", "actor", "time", "subjects", "parents", "details")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_TEXT = 4096


class EventError(InputError):
    """An event does not have the shape the ledger accepts."""


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the same value always gives the same bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def file_digest(path: str | os.PathLike[str]) -> str:
    """`sha256:<hex>` of a file's content."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; name the files to record") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return "sha256:" + digest.hexdigest()


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))


def format_time(moment: datetime) -> str:
    text = moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    return text + "Z"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"event {what} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise EventError(f"event {what} is longer than {MAX_TEXT} characters")
    return value


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise EventError(f"event {what} must be 'sha256:' followed by 64 lowercase hex digits")
    return value


def _time(value: Any) -> str:
    if not isinstance(value, str):
        raise EventError("event time must be an ISO-8601 string in UTC")
    try:
        # Python 3.10's parser does not read the "Z" suffix.
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise EventError(f"event time {value!r} is not ISO-8601") from None
    if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:
        raise EventError(f"event time {value!r} must be UTC (end in Z or +00:00)")
    return format_time(moment)


@dataclass(frozen=True)
class Subject:
    name: str
    digest: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "digest": self.digest}


def _subjects(value: Any) -> tuple[Subject, ...]:
    if not isinstance(value, list):
        raise EventError("event subjects must be a list of {name, digest} objects")
    subjects = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"name", "digest"}:
            raise EventError(f"event subjects[{i}] must be an object with name and digest only")
        subjects.append(
            Subject(
                _text(item["name"], f"subjects[{i}].name"),
                _digest(item["digest"], f"subjects[{i}].digest"),
            )
        )
    return tuple(subjects)


def _parents(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise EventError("event parents must be a list of digests")
    return tuple(_digest(item, f"parents[{i}]") for i, item in enumerate(value))


def _details(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError("event details must be a JSON object")
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise EventError(f"event details are not plain JSON: {exc}") from None
    return value


@dataclass(frozen=True)
class Event:
    kind: str
    actor: str
    time: str = field(default_factory=utc_now)
    subjects: tuple[Subject, ...] = ()
    parents: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EventError(f"event kind {self.kind!r} is not one of: {', '.join(KINDS)}")
        _text(self.actor, "actor")
        object.__setattr__(self, "time", _time(self.time))
        object.__setattr__(self, "subjects", _subjects([s.to_json() for s in self.subjects]))
        object.__setattr__(self, "parents", _parents(list(self.parents)))
        _details(self.details)

    @classmethod
    def from_json(cls, value: Any) -> Event:
        """Validate a decoded JSON object; `time` defaults to now."""
        if not isinstance(value, dict):
            raise EventError("an event is a JSON object")
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise EventError(f"event has unknown field(s): {', '.join(unknown)}")
        for required in ("kind", "actor"):
            if required not in value:
                raise EventError(f"event is missing {required!r}")
        return cls(
            kind=value["kind"],
            actor=value["actor"],
            time=value.get("time") or utc_now(),
            subjects=_subjects(value.get("subjects", [])),
            parents=_parents(value.get("parents", [])),
            details=_details(value.get("details", {})),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actor": self.actor,
            "time": self.time,
            "subjects": [s.to_json() for s in self.subjects],
            "parents": list(self.parents),
            "details": self.details,
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())


def subject_for_file(path: str | os.PathLike[str]) -> Subject:
    return Subject(Path(path).name, file_digest(path))


def default_actor() -> str:
    """Who is acting, as the operating system knows it."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{os.uname().nodename}"
