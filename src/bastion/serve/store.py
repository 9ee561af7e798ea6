"""Gateway state: token buckets, daily budgets, the monitor's query history and alert flags.

`MemoryStore` serves one process: every operation completes without awaiting, so on one event
loop it is atomic. `RedisStore` lets several replicas share the same state exactly: each
read-modify-write runs as one Lua script inside Redis, with Redis's own clock, so replicas
never race each other or disagree about time. The scripts that concurrent requests call are
sent together, as one pipeline per round trip (see `_Courier`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.errors import UsageError


@dataclass(frozen=True)
class Admission:
    """One request's admission: `refused` is None (admitted), "address" or "key" (rate
    limited, with `wait` seconds), "blocked" (monitor) or "budget" (daily budget spent)."""

    refused: str | None = None
    wait: float = 0.0
    flag: str | None = None


@dataclass(frozen=True)
class Quota:
    """The limits applied to one API key's request."""

    key_id: str
    rate: float
    burst: int
    budget: int | None  # None: the request does not count against the budget
    budget_period: str
    budget_ttl_s: int


class Store(Protocol):
    async def admit(
        self, address: str, address_rate: float, address_burst: int, quota: Quota | None,
        throttle_factor: float,
    ) -> Admission:
        """Decide a request atomically: the address bucket, then for a key its flag, its
        bucket and its budget."""
        ...

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
    """State for a single gateway process.

    Buckets that have refilled are forgotten (a full bucket and no bucket mean the same), so
    clients cycling through many source addresses cannot grow memory without bound: the
    sweep runs whenever the table doubles past `sweep_at`."""

    def __init__(self, clock=time.monotonic, sweep_at: int = 10_000) -> None:
        self._clock = clock
        self._sweep_at = sweep_at
        # bucket -> (tokens, stamp, time at which it is full again)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self._budgets: dict[str, tuple[int, float]] = {}
        self._history: dict[str, tuple[int, deque[bytes]]] = {}
        self._flags: dict[str, str] = {}

    async def admit(
        self, address: str, address_rate: float, address_burst: int, quota: Quota | None,
        throttle_factor: float,
    ) -> Admission:
        # No await suspends in this store, so on one event loop this runs as one step.
        wait = await self.take("ip:" + address, address_rate, address_burst)
        if wait:
            return Admission("address", wait)
        if quota is None:
            return Admission()
        flag = self._flags.get(quota.key_id)
        if flag == "blocked":
            return Admission("blocked", flag=flag)
        rate, burst = quota.rate, quota.burst
        if flag == "throttled":
            rate, burst = rate * throttle_factor, max(1, int(burst * throttle_factor))
        wait = await self.take("key:" + quota.key_id, rate, burst)
        if wait:
            return Admission("key", wait, flag)
        budget = f"{quota.key_id}:{quota.budget_period}"
        if quota.budget is not None and not await self.spend(
            budget, quota.budget, quota.budget_ttl_s
        ):
            return Admission("budget", flag=flag)
        return Admission(flag=flag)

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        now = self._clock()
        tokens, stamp, _ = self._buckets.get(bucket, (float(burst), now, now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        full_at = now + (burst - tokens) / rate if rate > 0 else float("inf")
        self._buckets[bucket] = (tokens, now, full_at)
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)
        if granted:
            return 0.0
        return (1.0 - tokens) / rate if rate > 0 else float("inf")

    def _sweep(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}
        self._sweep_at = max(self._sweep_at, 2 * len(self._buckets))

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
        total, history = self._history.get(key) or (0, deque(maxlen=keep))
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
# every replica sees one clock. Returns 0 when granted, else the wait in seconds (-1: never).
_TAKE_FUNCTION = """
local function take(key, rate, burst, now)
  local state = redis.call('HMGET', key, 'tokens', 'stamp')
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
  redis.call('HSET', key, 'tokens', tostring(tokens), 'stamp', tostring(now))
  local idle = 60
  if rate > 0 then idle = math.ceil(burst / rate) + 1 end
  redis.call('EXPIRE', key, idle)
  return wait
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_TAKE = _TAKE_FUNCTION + """
return tostring(take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now))
"""

# Daily budget: count only while under the limit, so a refused query is never counted.
_SPEND_FUNCTION = """
local function spend(key, limit, ttl)
  local used = tonumber(redis.call('GET', key) or '0')
  if used >= limit then return false end
  redis.call('INCR', key)
  if used == 0 then redis.call('EXPIRE', key, ttl) end
  return true
end
"""

_SPEND = _SPEND_FUNCTION + """
if spend(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) then return 1 end
return 0
"""

# The whole admission decision in one round trip: address bucket, then (for a known key)
# its flag, its bucket (slowed when throttled) and its budget.
_ADMIT = _TAKE_FUNCTION + _SPEND_FUNCTION + """
local wait = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now)
if wait ~= 0 then return {1, tostring(wait), ''} end
if ARGV[3] == '' then return {0, '0', ''} end
local flag = redis.call('GET', KEYS[4]) or ''
if flag == 'blocked' then return {2, '0', flag} end
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
if flag == 'throttled' then
  rate = rate * tonumber(ARGV[5])
  burst = math.max(1, math.floor(burst * tonumber(ARGV[5])))
end
wait = take(KEYS[2], rate, burst, now)
if wait ~= 0 then return {3, tostring(wait), flag} end
if ARGV[6] ~= '' and not spend(KEYS[3], tonumber(ARGV[6]), tonumber(ARGV[7])) then
  return {4, '0', flag}
end
return {0, '0', flag}
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


class _Courier:
    """Sends the commands that concurrent requests issue as one pipeline on one connection.

    A command waits only while an earlier batch is on the wire; then everything queued goes
    out together. Redis still runs each command (each Lua script) on its own, atomically and
    in order, and each caller gets its own reply (an error reply raises in that caller
    only); what the batch shares is the round trip and its cost in the client (connection
    checkout, socket writes and reads), which is most of a script call's cost here. A
    command is sent once and never retried: a lost connection fails every command of its
    batch, and the next batch reconnects."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, *command: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((command, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            connection = await self._pool.get_connection()
        except BaseException as exc:  # no connection: every waiting command fails with it
            self._sender = None
            batch, self._queue = self._queue, []
            self._fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._round_trip(connection, batch)
        finally:
            self._sender = None
            await self._pool.release(connection)

    async def _round_trip(self, connection: Any, batch: list[tuple[tuple[Any, ...], Any]]) -> None:
        from redis.exceptions import ResponseError

        try:
            await connection.send_packed_command(
                connection.pack_commands([command for command, _ in batch])
            )
            for _, future in batch:
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:  # this command's error reply; the rest follow
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(reply)
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            self._fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    @staticmethod
    def _fail(batch: list[tuple[tuple[Any, ...], Any]], exc: BaseException) -> None:
        for _, future in batch:
            if future.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)


class RedisStore:
    """State shared by every replica that points at the same Redis.

    A connection idle for `health_check_s` is pinged (and replaced if Redis dropped it)
    before its next batch, so a Redis restart or an idle timeout does not fail requests."""

    def __init__(self, url: str, prefix: str = "bastion:", health_check_s: float = 5.0) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise UsageError("--store redis://... needs the redis package") from None
        # One retry without delay: for the health check's PING (and the idempotent flag
        # reads and writes); the courier's scripts are never retried.
        self._redis = aioredis.from_url(url, health_check_interval=health_check_s,
                                        retry=Retry(NoBackoff(), 1))
        self._courier = _Courier(self._redis.connection_pool)
        self._prefix = prefix
        self._take = self._redis.register_script(_TAKE)
        self._admit = self._redis.register_script(_ADMIT)
        self._spend = self._redis.register_script(_SPEND)
        self._remember = self._redis.register_script(_REMEMBER)

    async def ping(self) -> None:
        await self._redis.ping()

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script through the courier (loading it first if this Redis has
        not seen it: a NOSCRIPT reply means it did not run)."""
        from redis.exceptions import NoScriptError

        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._courier.call(*command)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self._courier.call(*command)

    async def admit(
        self, address: str, address_rate: float, address_burst: int, quota: Quota | None,
        throttle_factor: float,
    ) -> Admission:
        p = self._prefix
        if quota is None:
            keys = [p + "tb:ip:" + address, p + "unused", p + "unused", p + "unused"]
            args = [address_rate, address_burst, "", 0, throttle_factor, "", 0]
        else:
            keys = [p + "tb:ip:" + address, p + "tb:key:" + quota.key_id,
                    p + "bd:" + f"{quota.key_id}:{quota.budget_period}",
                    p + "flag:" + quota.key_id]
            args = [address_rate, address_burst, quota.rate, quota.burst, throttle_factor,
                    "" if quota.budget is None else quota.budget, quota.budget_ttl_s]
        code, wait, flag = await self._run(self._admit, keys, args)
        flag = flag.decode() or None
        wait = float(wait)
        refused = {0: None, 1: "address", 2: "blocked", 3: "key", 4: "budget"}[int(code)]
        return Admission(refused, float("inf") if wait < 0 else wait, flag)

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        wait = float(await self._run(self._take, [self._prefix + "tb:" + bucket], [rate, burst]))
        return float("inf") if wait < 0 else wait

    async def spend(self, budget: str, limit: int, ttl_s: int) -> bool:
        return bool(await self._run(self._spend, [self._prefix + "bd:" + budget], [limit, ttl_s]))

    async def remember(
        self, key: str, record: bytes, keep: int, since: int
    ) -> tuple[int, list[bytes]]:
        names = [self._prefix + "hist:" + key, self._prefix + "seq:" + key]
        total, before = await self._run(
            self._remember, names, [record, keep, HISTORY_TTL_S, since]
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
