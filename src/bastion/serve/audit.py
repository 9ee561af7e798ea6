"""The gateway's audit trail: one JSON line per decision (allowed, limited, refused,
blocked, alert), and, when a ledger is configured, a `serve` event per batch of decisions
(counts, plus every alert) so the tamper-evident record is not one SQLite write per query."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any

from bastion.govern.events import Event, default_actor, utc_now

MAX_ALERTS_PER_EVENT = 100


def _now() -> str:
    """UTC time as ISO-8601 with microseconds (cheaper than datetime on the hot path)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class AuditLog:
    def __init__(
        self, path: str | os.PathLike[str] | None, ledger: str | os.PathLike[str] | None,
        model: str,
    ) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115
        self.ledger = ledger
        self.model = model
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._alerts: list[dict[str, Any]] = []
        self._since = utc_now()

    def write(self, decision: str, **fields: Any) -> None:
        if self._file is not None:
            line = {"time": _now(), "decision": decision, **fields}
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        if self.ledger is not None:
            with self._lock:
                self._counts[decision] += 1
                if decision == "alert" and len(self._alerts) < MAX_ALERTS_PER_EVENT:
                    self._alerts.append(fields)

    def flush_to_ledger(self) -> int | None:
        """Record the decisions since the last flush as one ledger event; its index."""
        if self.ledger is None:
            return None
        with self._lock:
            if not self._counts:
                return None
            counts, alerts, since = dict(self._counts), self._alerts, self._since
            self._counts, self._alerts, self._since = Counter(), [], utc_now()
        from bastion.govern.ledger import record

        event = Event(
            kind="serve",
            actor=default_actor(),
            details={"model": self.model, "from": since, "to": utc_now(),
                     "decisions": counts, "alerts": alerts},
        )
        indices, _ = record(self.ledger, [event])
        return indices[0]

    def close(self) -> None:
        self.flush_to_ledger()
        if self._file is not None:
            self._file.close()
