"""What `bastion bom`, `card` and `datasheet` share: writing the documents atomically and
recording them in the ledger as a `document` event (the files written are the subjects; the
model and data they describe are the parents, so the documents join the artifacts' lineage)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bastion.fsutil import atomic_write
from bastion.govern.events import Event, Subject, default_actor
from bastion.govern.ledger import record


def sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_documents(outputs: dict[str, str]) -> None:
    """Write each path -> text atomically; the path "-" is standard output."""
    for path, text in outputs.items():
        if path == "-":
            sys.stdout.write(text)
        else:
            atomic_write(path, text)


def record_documents(
    ledger: str | None, document: str, outputs: dict[str, str], parents: Sequence[str],
    details: dict[str, object] | None = None,
) -> None:
    """Append one `document` event naming what was written and what it describes."""
    if ledger is None:
        return
    subjects = tuple(
        Subject(Path(path).name if path != "-" else "stdout", sha256_text(text))
        for path, text in outputs.items()
    )
    event = Event(
        kind="document",
        actor=default_actor(),
        subjects=subjects,
        parents=tuple(dict.fromkeys(d for d in parents if d)),
        details={"document": document, **(details or {})},
    )
    record(ledger, [event])
