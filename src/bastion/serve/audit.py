"""The gateway's audit trail: one JSON line per decision (allowed, limited, refused,
blocked, alert), and, when a ledger is configured, a `serve` event per batch of decisions
(counts, plus every alert) so the tamper-evident record is not one SQLite write per query.

Lines are written through a buffer. A refusal or an alert reaches the file at once, with
every line before it; allowed lines reach it at the end of the event loop's current round
(so a burst of concurrent requests costs one write, not one per request), when the buffer
fills, and at shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from typing import Any

import orjson

from bastion.govern.events import Event, default_actor, utc_now

MAX_ALERTS_PER_EVENT = 100
_LINE = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


class _Clock:
    """UTC time as ISO-8601 with microseconds; the formatted seconds are reused until the
    second changes (formatting them is most of the cost of a timestamp)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


class AuditLog:
    def __init__(
        self, path: str | os.PathLike[str] | None, ledger: str | os.PathLike[str] | None,
        model: str,
    ) -> None:
        self._file = open(path, "ab") if path else None  # noqa: SIM115
        self._flush_pending = False
        self._clock = _Clock()
        self.ledger = ledger
        self.model = model
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._alerts: list[dict[str, Any]] = []
        self._since = utc_now()

    def write(self, decision: str, **fields: Any) -> None:
        if self._file is not None:
            line = {"time": self._clock.now(), "decision": decision, **fields}
            self._file.write(orjson.dumps(line, option=_LINE))
            if decision != "allowed":
                self._file.flush()
            elif not self._flush_pending:
                self._flush_soon()
        if self.ledger is not None:
            with self._lock:
                self._counts[decision] += 1
                if decision == "alert" and len(self._alerts) < MAX_ALERTS_PER_EVENT:
                    self._alerts.append(fields)

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # written outside an event loop: nothing to batch with
            self._file.flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._file is not None and not self._file.closed:
            self._file.flush()

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
