"""Two gateway replicas sharing one real redis-server: limits, budgets and monitor blocks
hold across both, exactly."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import redis

from bastion.serve.monitor import MonitorConfig
from bastion.serve.store import RedisStore


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


async def _spread(urls: list[str], token: str, body: dict, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=20) as client:
        responses = await asyncio.gather(*(
            client.post(url + "/predict", json=body, headers={"X-API-Key": token})
            for url, _ in zip(itertools.cycle(urls), range(n))
        ))
    return [r.status_code for r in responses]


def test_two_replicas_share_the_rate_limit_exactly(redis_url, start_gateway, make_key, digits):
    _flush(redis_url)
    token = make_key(rate=0.001, burst=9)
    replicas = [start_gateway(store=RedisStore(redis_url)) for _ in range(2)]
    codes = asyncio.run(_spread(replicas, token, {"inputs": digits.x_test[:1].tolist()}, 50))
    assert codes.count(200) == 9
    assert codes.count(429) == 41


def test_two_replicas_share_the_daily_budget(redis_url, start_gateway, make_key, digits):
    _flush(redis_url)
    token = make_key(rate=1000, burst=1000, daily_budget=6)
    replicas = [start_gateway(store=RedisStore(redis_url)) for _ in range(2)]
    codes = asyncio.run(_spread(replicas, token, {"inputs": digits.x_test[:1].tolist()}, 20))
    assert codes.count(200) == 6 and codes.count(429) == 14


def test_a_block_on_one_replica_holds_on_the_other(redis_url, start_gateway, make_key, digits):
    _flush(redis_url)
    token = make_key(rate=1000, burst=1000)
    # 16 distances: more than either replica sees alone in 30 alternating queries.
    monitor = MonitorConfig(action="block", min_queries=16, test_every=2)
    first, second = (start_gateway(store=RedisStore(redis_url), monitor=monitor)
                     for _ in range(2))
    headers = {"X-API-Key": token}
    row = {"inputs": digits.x_test[:1].tolist()}
    # The same query over and over, alternating replicas: a degenerate distance
    # distribution, judged on the history both replicas share.
    with httpx.Client(headers=headers) as client:
        codes = [client.post(url + "/predict", json=row).status_code
                 for url, _ in zip(itertools.cycle([first, second]), range(30))]
        blocked_at = codes.index(403)
        assert 16 <= blocked_at < 30
        assert set(codes[blocked_at:]) == {403}
        assert client.post(first + "/predict", json=row).status_code == 403
        assert client.post(second + "/predict", json=row).status_code == 403
