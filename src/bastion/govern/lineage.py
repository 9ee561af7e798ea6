"""An artifact's history from the ledger, for documents: its events (verified against the
ledger's signed checkpoints when the public key is at hand), the names the ledger knows for
each digest, and the datasets a model was trained on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import RefusedError
from bastion.govern.checkpoint import load_public_key
from bastion.govern.ledger import Ledger, LedgerTampered, key_paths

DETAILS_CHARS = 160


@dataclass(frozen=True)
class Record:
    index: int
    kind: str
    actor: str
    time: str
    subjects: list[dict[str, str]]
    parents: list[str]
    details: dict[str, Any]

    @property
    def subject_names(self) -> str:
        return ", ".join(s["name"] for s in self.subjects)

    @property
    def details_text(self) -> str:
        text = json.dumps(self.details, sort_keys=True, ensure_ascii=False)
        return text if len(text) <= DETAILS_CHARS else text[: DETAILS_CHARS - 1] + "…"


@dataclass(frozen=True)
class History:
    ledger: str
    status: str  # how far the ledger was verified
    records: list[Record]

    def of_kind(self, *kinds: str) -> list[Record]:
        return [r for r in self.records if r.kind in kinds]

    def name_of(self, digest: str) -> str | None:
        """The last name the ledger gives the digest."""
        names = [s["name"] for r in self.records for s in r.subjects if s["digest"] == digest]
        return names[-1] if names else None

    def produced(self, digest: str, kind: str) -> list[Record]:
        """Events of `kind` naming `digest` as a subject (the training runs of a model)."""
        return [r for r in self.of_kind(kind) if any(s["digest"] == digest for s in r.subjects)]

    def inputs_of(self, digest: str) -> list[str]:
        """Digests the training runs of `digest` name as parents: its training data."""
        return list(dict.fromkeys(p for r in self.produced(digest, "train") for p in r.parents))


def read_history(path: str | Path, digest: str) -> History:
    """The lineage of `digest`. A ledger that fails verification is refused: a document
    built from a tampered record would vouch for it."""
    public_path = key_paths(path)[1]
    with Ledger.open(path) as ledger:
        if public_path.exists():
            try:
                result = ledger.verify(load_public_key(public_path))
            except LedgerTampered as exc:
                raise RefusedError(
                    f"{path} fails verification ({exc.message}); no document is written from "
                    "a tampered ledger"
                ) from None
            status = (
                f"verified with {public_path.name}: {result.size} entries, last signed "
                f"checkpoint at size {result.checkpoint.size} ({result.checkpoint.timestamp})"
            )
        else:
            status = f"not verified: no public key {public_path.name} next to the ledger"
        records = [_record(entry.index, entry.event) for entry in ledger.lineage(digest)]
    return History(str(path), status, records)


def _record(index: int, event: dict[str, Any]) -> Record:
    return Record(
        index=index,
        kind=event["kind"],
        actor=event["actor"],
        time=event["time"],
        subjects=event["subjects"],
        parents=event["parents"],
        details=event["details"],
    )
