"""Fixtures for the limiter: a private redis-server, and both stores behind one interface."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from tests.servers import RedisServer


async def fresh_store(url: str) -> RedisStore:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return RedisStore.from_url(url, timeout_s=2.0)


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = await fresh_store(redis_server.url)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[MemoryStore | RedisStore]:
    if request.param == "memory":
        yield MemoryStore(clock_ms=lambda: 0)
        return
    redis_store = await fresh_store(redis_server.url)
    yield redis_store
    await redis_store.close()
