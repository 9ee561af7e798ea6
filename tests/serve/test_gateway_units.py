"""The gateway's parts on their own: token buckets, budgets and history in both stores,
output policies, body and schema limits, key files."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bastion.errors import UsageError
from bastion.serve.auth import AuthError, KeyFile, KeyRing
from bastion.serve.harden import apply, parse_policy
from bastion.serve.limits import InputSchema, Limits, Refused, parse_json, read_body, to_batch
from bastion.serve.store import MemoryStore, RedisStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_memory_token_bucket_refills_at_its_rate():
    clock = Clock()
    store = MemoryStore(clock)

    async def scenario() -> list[float]:
        waits = [await store.take("k", rate=2.0, burst=3) for _ in range(4)]
        clock.now += 0.5  # one token back
        waits += [await store.take("k", 2.0, 3), await store.take("k", 2.0, 3)]
        return waits

    waits = asyncio.run(scenario())
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == pytest.approx(0.5)
    assert waits[4] == 0.0 and waits[5] == pytest.approx(0.5)


def test_memory_budget_resets_after_its_period():
    clock = Clock()
    store = MemoryStore(clock)

    async def scenario() -> list[bool]:
        spent = [await store.spend("b", 2, ttl_s=10) for _ in range(3)]
        clock.now = 11
        return [*spent, await store.spend("b", 2, ttl_s=10)]

    assert asyncio.run(scenario()) == [True, True, False, True]


async def _history_trace(store) -> list[tuple[int, list[bytes]]]:
    """Two replicas' views (since counters) interleaved on one store, history kept to 3."""
    seen = {"a": 0, "b": 0}
    trace = []
    for i, replica in enumerate("aababbba"):
        total, missed = await store.remember("key", b"r%d" % i, 3, seen[replica])
        seen[replica] = total
        trace.append((total, missed))
    await store.close()
    return trace


def test_redis_history_matches_memory_history(redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    memory = asyncio.run(_history_trace(MemoryStore()))
    shared = asyncio.run(_history_trace(RedisStore(redis_url)))
    assert shared == memory
    assert memory[3] == (4, [b"r2"])  # "b" saw r2 last; r2 is what it missed
    assert memory[6] == (7, [])
    assert memory[7] == (8, [b"r4", b"r5", b"r6"])  # "a" missed more than is kept


def test_redis_bucket_and_budget(redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()

    async def scenario():
        store = RedisStore(redis_url)
        waits = [await store.take("k", 0.001, 2) for _ in range(3)]
        spent = [await store.spend("b", 1, 60) for _ in range(2)]
        flag = await store.flag("k")
        await store.flag("k", "blocked")
        result = waits, spent, flag, await store.flag("k")
        await store.close()
        return result

    waits, spent, before, after = asyncio.run(scenario())
    assert waits[:2] == [0.0, 0.0] and waits[2] > 100
    assert spent == [True, False] and before is None and after == "blocked"


def test_output_policies_keep_the_label_and_hide_the_rest():
    p = np.random.default_rng(0).dirichlet(np.ones(5), size=50)
    labels = p.argmax(1)
    for spec in ("label", "top-k:1", "top-k:3", "round:1", "reverse-sigmoid:0.3:0.5"):
        out = apply((parse_policy(spec),), p)
        assert out.shape == p.shape
        kept_top = out[np.arange(len(p)), labels] == out.max(1)  # rounding may tie, not flip
        assert kept_top.mean() >= (0.9 if "sigmoid" in spec else 1.0)
    assert set(np.unique(apply((parse_policy("label"),), p))) == {0.0, 1.0}
    assert (np.count_nonzero(apply((parse_policy("top-k:2"),), p), axis=1) == 2).all()
    assert np.allclose(apply((parse_policy("reverse-sigmoid"),), p).sum(1), 1.0)
    tie = np.array([[0.25, 0.25, 0.25, 0.25]])
    assert np.count_nonzero(apply((parse_policy("top-k:2"),), tie)) == 2
    for bad in ("top-k:0", "round:9", "blur", "label:2", "reverse-sigmoid:-1"):
        with pytest.raises(UsageError):
            parse_policy(bad)


def test_limits_on_bodies_and_inputs():
    async def chunks(*parts: bytes):
        for part in parts:
            yield part

    assert asyncio.run(read_body(None, chunks(b"ab", b"cd"), 4)) == b"abcd"
    for declared, parts in ((None, (b"abc", b"de")), ("10", (b"a",)), ("x", (b"a",))):
        with pytest.raises(Refused):
            asyncio.run(read_body(declared, chunks(*parts), 4))
    assert parse_json(b'{"a": [[1]]}', 3) == {"a": [[1]]}
    with pytest.raises(Refused, match="deeper"):
        parse_json(b'{"a": [[[1]]]}', 3)
    schema = InputSchema((2,), 0.0, 1.0)
    assert to_batch([0.5, 0.5], schema, Limits()).shape == (1, 2)
    assert to_batch([0, 1, 1, 0], schema, Limits(), shape=[2, 2]).shape == (2, 2)
    for data, shape in (([0.5], None), ([[2, 0]], None), ([0, 1, 1], [2, 2]),
                        ([0, 1], [10**30, 1]), ([0, 1], ["2"]), ("00", None)):
        with pytest.raises(Refused):
            to_batch(data, schema, Limits(), shape=shape)


def test_key_ring_fails_closed(tmp_path):
    keys = KeyFile.load(tmp_path / "keys.json", create=True)
    _, token = keys.create("a", scopes=("infer",))
    keys.save()
    ring = KeyRing(keys.path, recheck_s=0.0)
    assert ring.authenticate(token, "infer").name == "a"
    with pytest.raises(AuthError) as scope:
        ring.authenticate(token, "metrics")
    assert scope.value.status == 403
    keys.path.unlink()
    with pytest.raises(AuthError) as gone:
        ring.authenticate(token, "infer")
    assert gone.value.status == 401


def test_concurrent_observations_of_one_key_count_each_query_once(redis_url):
    """Interleaved requests of one key, on two replicas sharing Redis: each replica's copy
    of the history holds every query exactly once."""
    import redis

    from bastion.serve.monitor import Monitor, MonitorConfig

    redis.Redis.from_url(redis_url).flushdb()
    schema = InputSchema((4,), 0.0, 1.0)
    rows = np.random.default_rng(0).uniform(size=(40, 4))
    proba = np.tile([0.7, 0.3], (40, 1))

    async def scenario() -> list[int]:
        replicas = [Monitor(MonitorConfig(), schema, RedisStore(redis_url)) for _ in range(2)]
        await asyncio.gather(*(replicas[i % 2].observe("k", rows[i : i + 1], proba[:1])
                               for i in range(40)))
        # one more query each, in turn: the first catches up with the 40, the second
        # with those and the first one's extra query
        for monitor in replicas:
            await monitor.observe("k", rows[:1], proba[:1])
        counts = [monitor._keys["k"].count for monitor in replicas]
        for monitor in replicas:
            await monitor.store.close()
        return counts

    assert asyncio.run(scenario()) == [41, 42]


def test_monitor_without_a_declared_range_takes_any_values():
    from bastion.serve.monitor import Monitor, MonitorConfig

    monitor = Monitor(MonitorConfig(min_queries=5, test_every=1), InputSchema((3,)),
                      MemoryStore())
    rows = np.array([[-1e6, 0.5, 1e6], [-50.0, 2.0, 3.0]] * 5)
    verdict = asyncio.run(monitor.observe("k", rows, np.tile([0.4, 0.6], (10, 1))))
    assert verdict.coverage is not None and 0 < verdict.coverage <= 1


def test_memory_store_forgets_refilled_buckets():
    clock = Clock()
    store = MemoryStore(clock, sweep_at=100)

    async def scenario() -> int:
        for i in range(99):
            await store.take(f"ip:10.0.0.{i}", rate=10.0, burst=5)
        clock.now += 1.0  # every bucket is full again
        await store.take("ip:10.0.1.1", rate=10.0, burst=5)
        return len(store._buckets)

    assert asyncio.run(scenario()) == 1


class _Delayed:
    """The digits model answering `delay_s` late, from whichever thread called it."""

    def __init__(self, model, delay_s: float) -> None:
        self.model = model
        self.delay_s = delay_s
        self.n_classes = len(model.classes_)
        self.input_shape = (64,)
        self.clip_values = (0.0, 16.0)
        self.threads: set[int] = set()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import threading
        import time

        self.threads.add(threading.get_ident())
        time.sleep(self.delay_s)
        return self.model.predict_proba(x)


def test_fast_predictions_run_on_the_event_loop_slow_ones_in_the_pool(digits):
    import threading

    from bastion.serve.backend import LocalBackend

    schema = InputSchema((64,), 0.0, 16.0)
    fast, slow = _Delayed(digits.model, 0.0), _Delayed(digits.model, 0.005)
    fast_backend, slow_backend = LocalBackend("f", fast, schema), LocalBackend("s", slow, schema)
    assert fast_backend.inline_rows >= 1 and slow_backend.inline_rows == 0
    assert LocalBackend("f", fast, schema, inline_s=0).inline_rows == 0
    rows = digits.x_test[:40]

    async def scenario() -> None:
        for backend in (fast_backend, slow_backend):
            backend.classifier.threads.clear()
            one = await backend.predict(rows[:1])
            assert np.allclose(one, digits.model.predict_proba(rows[:1]))
        assert fast.threads == {threading.get_ident()}  # answered on the loop's thread
        assert threading.get_ident() not in slow.threads
        fast.threads.clear()
        await fast_backend.predict(rows)  # more rows than were timed: the pool
        assert threading.get_ident() not in fast.threads

    asyncio.run(scenario())


def test_a_model_that_fails_on_the_probe_never_runs_inline(digits):
    from bastion.serve.backend import BackendError, LocalBackend

    def fail(x: np.ndarray) -> np.ndarray:
        raise ValueError("bad weights")

    broken = _Delayed(digits.model, 0.0)
    broken.predict_proba = fail
    backend = LocalBackend("b", broken, InputSchema((64,), 0.0, 16.0))
    assert backend.inline_rows == 0
    with pytest.raises(BackendError, match="ValueError"):
        asyncio.run(backend.predict(np.zeros((1, 64))))


def test_redis_store_replaces_a_connection_dropped_while_idle(redis_url):
    import time

    import redis

    async def scenario() -> list[float]:
        store = RedisStore(redis_url, health_check_s=0.05)
        waits = [await store.take("idle", 100.0, 100)]
        admin = redis.Redis.from_url(redis_url)
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        admin.close()
        time.sleep(0.1)  # idle past the health check: the next batch pings first
        waits += await asyncio.gather(*(store.take("idle", 100.0, 100) for _ in range(3)))
        await store.close()
        return waits

    assert asyncio.run(scenario()) == [0.0, 0.0, 0.0, 0.0]
