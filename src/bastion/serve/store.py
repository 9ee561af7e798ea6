"""Gateway state: token buckets, daily budgets, the monitor's query history and alert flags.

`MemoryStore` serves one process: every operation completes without awaiting, so on one event
loop it is atomic. `RedisStore` lets several replicas share the same state exactly: each
read-modify-write runs as one Lua script inside Redis, with Redis's own clock, so replicas
never race each other or disagree about time.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from bastion.errors import UsageError


class Store(Protocol):
    async def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token; 0.0 when granted, else seconds until one is available."""
        ...

    async def spend(self, budget: str, limit: int, ttl_s: int) -> bool:
        """Count one query against `budget`; False (and nothing counted) when spent."""
        ...

    async def remember(
        self, key: str, record: bytes, keep: int, since: int
    ) -> tuple[int, list[bytes]]:
        """Append `record` to `key`'s history (keeping the last `keep`). Returns the number
        of records ever appended (this one included) and the kept records appended after
        number `since` and before this one, so each replica fetches only what it lacks."""
        ...

    async def flag(self, key: str, value: str | None = None) -> str | None:
        """Read (value None) or set a per-key flag (alerts: throttled, blocked)."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """State for a single gateway process."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._budgets: dict[str, tuple[int, float]] = {}
        self._history: dict[str, tuple[int, deque[bytes]]] = {}
        self._flags: dict[str, str] = {}

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.get(bucket, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now)
            return 0.0
        self._buckets[bucket] = (tokens, now)
        return (1.0 - tokens) / rate if rate > 0 else float("inf")

    async def spend(self, budget: str, limit: int, ttl_s: int) -> bool:
        now = self._clock()
        used, expires = self._budgets.get(budget, (0, now + ttl_s))
        if now >= expires:
            used, expires = 0, now + ttl_s
        if used >= limit:
            return False
        self._budgets[budget] = (used + 1, expires)
        return True

    async def remember(
        self, key: str, record: bytes, keep: int, since: int
    ) -> tuple[int, list[bytes]]:
        total, history = self._history.get(key, (0, deque(maxlen=keep)))
        missing = min(total - since, len(history))
        before = list(history)[len(history) - missing :] if missing > 0 else []
        history.append(record)
        self._history[key] = (total + 1, history)
        return total + 1, before

    async def flag(self, key: str, value: str | None = None) -> str | None:
        if value is not None:
            self._flags[key] = value
        return self._flags.get(key)

    async def close(self) -> None:
        return None


# Token bucket in Redis: state is a hash {tokens, stamp}; time comes from Redis (TIME), so
# every replica sees one clock. Returns "0" when granted, else the wait in seconds.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
elseif rate > 0 then
  wait = (1 - tokens) / rate
else
  wait = -1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
local idle = 60
if rate > 0 then idle = math.ceil(burst / rate) + 1 end
redis.call('EXPIRE', KEYS[1], idle)
return tostring(wait)
"""

# Daily budget: count only while under the limit, so a refused query is never counted.
_SPEND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
if used == 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""

# Monitor history: count, append, trim and read what the caller lacks in one step, so
# replicas see one order of queries and transfer only new records.
_REMEMBER = """
local keep = tonumber(ARGV[2])
local since = tonumber(ARGV[4])
local total = redis.call('INCR', KEYS[2])
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
-- keep `keep` records before the new one, as the memory store does
if length > keep + 1 then
  redis.call('LTRIM', KEYS[1], -(keep + 1), -1)
  length = keep + 1
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
local first = total - length + 1
local start = math.max(since + 1, first) - first
if start > length - 2 then return {total, {}} end
return {total, redis.call('LRANGE', KEYS[1], start, length - 2)}
"""

HISTORY_TTL_S = 7 * 24 * 3600


class RedisStore:
    """State shared by every replica that points at the same Redis."""

    def __init__(self, url: str, prefix: str = "bastion:") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise UsageError("--store redis://... needs the redis package") from None
        self._redis = aioredis.from_url(url)
        self._prefix = prefix
        self._take = self._redis.register_script(_TAKE)
        self._spend = self._redis.register_script(_SPEND)
        self._remember = self._redis.register_script(_REMEMBER)

    async def ping(self) -> None:
        await self._redis.ping()

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        wait = float(await self._take(keys=[self._prefix + "tb:" + bucket], args=[rate, burst]))
        return float("inf") if wait < 0 else wait

    async def spend(self, budget: str, limit: int, ttl_s: int) -> bool:
        return bool(await self._spend(keys=[self._prefix + "bd:" + budget], args=[limit, ttl_s]))

    async def remember(
        self, key: str, record: bytes, keep: int, since: int
    ) -> tuple[int, list[bytes]]:
        names = [self._prefix + "hist:" + key, self._prefix + "seq:" + key]
        total, before = await self._remember(
            keys=names, args=[record, keep, HISTORY_TTL_S, since]
        )
        return int(total), list(before)

    async def flag(self, key: str, value: str | None = None) -> str | None:
        name = self._prefix + "flag:" + key
        if value is not None:
            await self._redis.set(name, value, ex=HISTORY_TTL_S)
            return value
        raw = await self._redis.get(name)
        return raw.decode() if raw is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(spec: str | None) -> Store:
    """`None`/"memory" -> MemoryStore; "redis://..." / "rediss://..." -> RedisStore."""
    if spec in (None, "", "memory"):
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise UsageError(f"--store {spec!r}: expected 'memory' or a redis://host:port URL")
