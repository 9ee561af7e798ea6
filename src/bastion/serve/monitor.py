"""Query monitor against model extraction, per API key.

PRADA (Juuti et al. 2019): natural queries from one client are spread so that the minimum
distance from each new query to the client's earlier queries (of the same predicted class)
is roughly normally distributed; an extraction attack's synthetic queries (small steps away
from earlier ones, as in Jacobian augmentation) are not. A Shapiro-Wilk test on those
distances flags the key when W drops below a threshold. Two further signals catch attacks
that sample from a natural pool: coverage (the share of each feature's range, in ten bins,
that the key's queries have visited) and the mean normalised entropy of the model's answers
(copiers probe the decision boundaries, where the model is unsure).

Every record (query, predicted class, its minimum distance, entropy) goes through the store,
so replicas sharing Redis judge the same history.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bastion.serve.limits import InputSchema
from bastion.serve.store import Store

_HEADER = struct.Struct("<ifff")  # predicted class, min distance, entropy, padding
_BINS = 10
ACTIONS = ("log", "throttle", "block")


@dataclass(frozen=True)
class MonitorConfig:
    action: str = "block"
    keep: int = 1000  # queries remembered per key
    min_queries: int = 50  # no verdict before this many distances
    window: int = 300  # distances tested
    test_every: int = 10
    shapiro_w: float = 0.90  # alert below (PRADA's delta)
    coverage: float = 0.95  # alert above
    entropy: float = 0.60  # alert above (mean normalised entropy)


@dataclass
class Verdict:
    queries: int
    shapiro_w: float | None = None
    coverage: float | None = None
    entropy: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        return bool(self.reasons)

    def evidence(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {"queries": self.queries, "shapiro_w": r(self.shapiro_w),
                "coverage": r(self.coverage), "entropy": r(self.entropy),
                "reasons": self.reasons}


class _KeyHistory:
    """This replica's copy of one key's records, synced incrementally from the store.

    Records are numbered by the store (1, 2, ...). Concurrent requests of one key may hand
    back the same record twice (one as its own, another as missed), so each number is added
    once; no lock is held across the store's round trip.

    The remembered queries live in preallocated rings, so a nearest-neighbour search is one
    matrix-vector product over the ring and a handful of whole-array operations, whatever
    the number of classes; empty slots carry class -1 and never match."""

    def __init__(self, keep: int, window: int, dim: int) -> None:
        self.seen = 0  # highest record number this replica has asked the store past
        self.vectors = np.zeros((keep, dim), dtype=np.float32)
        self.classes = np.full(keep, -1, dtype=np.int32)
        self.numbers = np.zeros(keep, dtype=np.int64)
        self.norms = np.zeros(keep, dtype=np.float32)  # squared, for distances by one product
        self._offsets = np.arange(dim) * _BINS  # row of each feature in the flat bin table
        self.present: set[int] = set()
        # only the last `window` are ever judged
        self.distances: deque[float] = deque(maxlen=window)
        self.entropies: deque[float] = deque(maxlen=window)
        self.bins = np.zeros(dim * _BINS, dtype=bool)  # feature x bin, visited or not
        self.count = 0  # rows filled in the ring
        self.next = 0

    def add(self, number: int, vector: np.ndarray, label: int, distance: float,
            entropy: float) -> None:
        if number in self.present:
            return
        slot = self.next
        if self.count == len(self.vectors):
            self.present.discard(int(self.numbers[slot]))
        else:
            self.count += 1
        self.present.add(number)
        self.numbers[slot] = number
        self.vectors[slot] = vector
        self.norms[slot] = vector @ vector
        self.classes[slot] = label
        self.next = (slot + 1) % len(self.vectors)
        if distance == distance:  # not NaN: there was an earlier query of this class
            self.distances.append(distance)
        self.entropies.append(entropy)
        # in [0, 1] when the model declares a range; clamp for models that do not
        cells = (vector * _BINS).astype(np.int64)
        np.minimum(cells, _BINS - 1, out=cells)
        np.maximum(cells, 0, out=cells)
        cells += self._offsets
        self.bins[cells] = True

    def min_distance(self, vector: np.ndarray, label: int) -> float:
        """Euclidean distance to the nearest remembered query of the same class (NaN when
        there is none)."""
        # |a - v|^2 = |a|^2 - 2 a.v + |v|^2, and |v|^2 is the same for every a: one
        # matrix-vector product ranks the ring; slots of other classes are ruled out.
        squared = self.vectors @ (-2.0 * vector)
        squared += self.norms
        squared[self.classes != label] = np.inf
        nearest = int(squared.argmin())
        if squared[nearest] == np.inf:
            return math.nan
        # The distance itself is computed directly: the expansion loses precision in
        # float32 exactly where it matters (repeated queries must give 0).
        diff = self.vectors[nearest].astype(np.float64) - vector
        return math.sqrt(diff @ diff)


class Monitor:
    def __init__(self, config: MonitorConfig, schema: InputSchema, store: Store) -> None:
        if config.action not in ACTIONS:
            raise ValueError(f"monitor action must be one of {ACTIONS}")
        self.config = config
        self.store = store
        self.dim = int(np.prod(schema.shape))
        low = schema.low if schema.low is not None else 0.0
        high = schema.high if schema.high is not None else 1.0
        self._low, self._span = low, (high - low) or 1.0
        self._keys: dict[str, _KeyHistory] = {}

    def _normalise(self, rows: np.ndarray) -> np.ndarray:
        return ((rows.reshape(len(rows), -1) - self._low) / self._span).astype(np.float32)

    async def observe(self, key_id: str, rows: np.ndarray, probabilities: np.ndarray) -> Verdict:
        """Record a batch of queries for `key_id` and judge the key's history."""
        history = self._keys.get(key_id)
        if history is None:
            history = self._keys[key_id] = _KeyHistory(
                self.config.keep, max(self.config.window, self.config.min_queries), self.dim
            )
        vectors = self._normalise(rows)
        labels = probabilities.argmax(axis=1).tolist()
        entropies = _normalised_entropy(probabilities).tolist()
        tested = False
        for vector, label, entropy in zip(vectors, labels, entropies, strict=True):
            distance = history.min_distance(vector, label)
            record = _HEADER.pack(label, distance, entropy, 0.0) + vector.tobytes()
            total, missed = await self.store.remember(
                key_id, record, self.config.keep, history.seen
            )
            for number, raw in enumerate(missed, start=total - len(missed)):
                self._add(history, number, raw)
            history.add(total, vector, label, distance, entropy)
            history.seen = max(history.seen, total)
            tested = tested or total % self.config.test_every == 0
        return self._judge(history, tested)

    def _add(self, history: _KeyHistory, number: int, raw: bytes) -> None:
        label, distance, entropy, _ = _HEADER.unpack_from(raw)
        vector = np.frombuffer(raw, dtype="<f4", offset=_HEADER.size)
        history.add(number, vector, label, distance, entropy)

    def _judge(self, history: _KeyHistory, tested: bool) -> Verdict:
        cfg = self.config
        verdict = Verdict(queries=history.seen)
        if not tested or len(history.distances) < cfg.min_queries:
            return verdict
        distances = np.fromiter(history.distances, dtype=np.float64)[-cfg.window :]
        verdict.shapiro_w = _shapiro(distances)
        verdict.coverage = float(history.bins.mean())
        verdict.entropy = float(np.mean(list(history.entropies)[-cfg.window :]))
        reasons = verdict.reasons
        if verdict.shapiro_w is not None and verdict.shapiro_w < cfg.shapiro_w:
            reasons.append(f"min-distance distribution not normal (W={verdict.shapiro_w:.3f})")
        if verdict.coverage > cfg.coverage:
            reasons.append(f"queries cover {verdict.coverage:.0%} of the input range")
        if verdict.entropy > cfg.entropy:
            reasons.append(f"answers are uncertain on average (entropy {verdict.entropy:.2f})")
        return verdict


def _shapiro(distances: np.ndarray) -> float | None:
    """W on the distances without outliers beyond 3 standard deviations (as PRADA does).
    Identical distances (one query repeated) are as far from normal as it gets: W = 0."""
    mean, std = distances.mean(), distances.std()
    kept = distances[np.abs(distances - mean) <= 3 * std] if std > 0 else distances
    if len(kept) < 3 or np.ptp(kept) == 0:
        return 0.0 if len(kept) >= 3 else None
    return float(stats.shapiro(kept).statistic)


def _normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.maximum(probabilities, 1e-12)
    k = probabilities.shape[1]
    return -(p * np.log(p)).sum(axis=1) / (math.log(k) if k > 1 else 1.0)
