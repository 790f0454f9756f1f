"""Fixtures for the limiter: private Redis servers (one, a Cluster, a Sentinel set), and every
store behind one interface."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from tests.servers import RedisCluster, RedisSentinelSet, RedisServer


async def fresh_store(url: str) -> RedisStore:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return RedisStore.from_url(url, timeout_s=2.0)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole run; tests flush what they use."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSet]:
    """A master and one sentinel for the whole run (no replica: nothing here fails over)."""
    sentinels = RedisSentinelSet(replicas=0, sentinels=1).start()
    yield sentinels
    sentinels.stop()


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = await fresh_store(redis_server.url)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MemoryStore | RedisStore]:
    if request.param == "memory":
        yield MemoryStore(clock_ms=lambda: 0)
        return
    if request.param == "redis":
        redis_store = await fresh_store(request.getfixturevalue("redis_server").url)
    else:
        servers = request.getfixturevalue(f"redis_{request.param}")
        servers.flush()
        redis_store = RedisStore.from_url(servers.url, timeout_s=2.0)
    yield redis_store
    await redis_store.close()
