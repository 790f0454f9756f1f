"""Learned quotas: a 429 lowers a pool's factor here at once and, through Redis, everywhere."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterator

import httpx
import pytest
import redis

from gateway.auth import hash_key
from gateway.config import parse_config
from gateway.limiter.adaptive import Aimd
from gateway.limiter.core import Charge, Plan, window_bucket
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from tests.conftest import (
    BEARER,
    HAIKU,
    ClientFactory,
    gateway_settings,
    messages_body,
    start_gateway,
)
from tests.limiter.conftest import fresh_store
from tests.servers import RedisServer, ServerThread

ADMIN_KEY = "gw-admin-key-for-tests"


def test_a_local_throttle_lowers_the_factor_and_it_recovers() -> None:
    now = [1000.0]
    aimd = Aimd(0.7, 0.01, 0.1, 2, hold_s=0)
    learned = LearnedQuotas(aimd, None, "k", wall=lambda: now[0])

    async def run() -> None:
        learned.throttled("pool")
        assert learned.factor("pool") == pytest.approx(0.7)
        now[0] += 10
        assert learned.factor("pool") == pytest.approx(0.8)
        assert learned.factor("other") == 1.0

    asyncio.run(run())


def test_replicas_share_what_one_learned(redis_server: RedisServer) -> None:
    async def run() -> None:
        aimd = Aimd(0.7, 0.0, 0.1, 5)
        stores = [RedisStore.from_url(redis_server.url, 2) for _ in range(2)]
        a, b = (LearnedQuotas(aimd, store, "{t}:adapt") for store in stores)
        a.throttled("pool-x")
        b.throttled("pool-x")  # the same burst seen by another replica: one signal
        await a.close()
        await b.close()
        await b.refresh()
        assert b.factor("pool-x") == pytest.approx(0.7, abs=0.01)
        fresh = LearnedQuotas(aimd, stores[0], "{t}:adapt")
        await fresh.refresh()  # a replica that saw nothing learns it too
        assert fresh.factor("pool-x") == pytest.approx(0.7, abs=0.01)
        for store in stores:
            await store.close()

    asyncio.run(run())


WINDOW = window_bucket("{t}:pool:x:tpm", 1000, window_ms=60_000, slot_ms=250, margin_ms=500,
                       label="tokens per minute of pool x")  # fmt: skip


def _fill(store: MemoryStore | RedisStore, tokens: int) -> Awaitable[object]:
    return store.admit(Plan("m", (Charge(WINDOW, tokens, settles=True),)))


def test_a_local_throttle_measures_what_the_pool_carried() -> None:
    store = MemoryStore()
    learned = LearnedQuotas(Aimd(), None, "k", local_use=store.used)

    async def run() -> None:
        await _fill(store, 900)
        learned.throttled("pool-x", WINDOW)
        assert learned.factor("pool-x") == pytest.approx(0.855)  # 0.95 x 900 / 1000
        learned.throttled("pool-y")  # no window to measure: the bounded step
        assert learned.factor("pool-y") == pytest.approx(0.7)

    asyncio.run(run())


def test_a_shared_throttle_measures_the_pool_in_redis(redis_server: RedisServer) -> None:
    async def run() -> None:
        store = await fresh_store(redis_server.url)
        learned = LearnedQuotas(Aimd(), store, "{t}:adapt")
        await _fill(store, 800)  # admitted by any replica: the window is shared
        learned.throttled("pool-x", WINDOW)
        await learned.close()
        assert learned.factor("pool-x") == pytest.approx(0.76, abs=1e-4)
        await store.close()

    asyncio.run(run())


@pytest.fixture
def overcommitted(simulator: ServerThread, redis_server: RedisServer) -> Iterator[ServerThread]:
    """The gateway believes haiku has 20k TPM; the simulator's real quota is 3k."""
    real = [{"model": HAIKU, "region": "us-west-2", "tpm": 3000}]
    # The simulator is shared by the session: forget what earlier tests spent on haiku, or its
    # rolling minute may already hold more than the 3k this test's quota allows.
    httpx.post(f"{simulator.url}/_simulator/reset").raise_for_status()
    redis.Redis.from_url(redis_server.url).flushdb()  # and any quota an earlier test learned
    httpx.put(f"{simulator.url}/_simulator/pools", json=real).raise_for_status()
    settings = gateway_settings(simulator.url)
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url}
    settings["models"]["claude-haiku"]["routes"][0]["tpm"] = 20_000
    settings["admin"] = {"key_sha256": hash_key(ADMIN_KEY)}
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()
    httpx.post(f"{simulator.url}/_simulator/reset?config=1").raise_for_status()


def test_the_gateway_learns_a_lower_real_quota(
    overcommitted: ServerThread, make_client: ClientFactory
) -> None:
    client = make_client(overcommitted.url)
    body = json.dumps(messages_body("learn [sim:output_tokens=400]", max_tokens=400))
    outcomes = []
    for _ in range(12):
        try:
            client.invoke_model(modelId="claude-haiku", body=body)
            outcomes.append(200)
        except client.exceptions.ThrottlingException:
            outcomes.append(429)
    assert 200 in outcomes
    url = overcommitted.url
    pools = httpx.get(f"{url}/admin/pools", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    haiku = next(p for p in pools.json()["pools"] if p["base_model"] == HAIKU)
    assert haiku["quota_factor"] < 0.75  # decreased to 0.7, recovering slowly since
    assert haiku["effective_tpm"] < 15_000
    assert abs(haiku["throttled_at"] - time.time()) < 60  # when Bedrock last lowered it
    assert haiku["holds_until"] == pytest.approx(haiku["throttled_at"] + 60)
    untouched = next(p for p in pools.json()["pools"] if p["base_model"] != HAIKU)
    assert (untouched["quota_factor"], untouched["throttled_at"]) == (1.0, None)
    metrics = httpx.get(f"{url}/metrics").text
    assert "gateway_upstream_throttles_total{" in metrics
    factor_lines = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("gateway_pool_quota_factor{") and f"/on-demand/{HAIKU}" in ln
    ]
    assert factor_lines
    assert float(factor_lines[0].rsplit(" ", 1)[1]) < 0.75


@pytest.mark.parametrize(
    ("authorization", "status", "error_type"),
    [(None, 401, "UnrecognizedClientException"),
     (f"Bearer {BEARER}", 403, "AccessDeniedException"),
     ("Bearer wrong-admin-key", 403, "AccessDeniedException")],
)  # fmt: skip
def test_the_admin_api_needs_its_own_key(
    overcommitted: ServerThread, authorization: str | None, status: int, error_type: str
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    reply = httpx.get(f"{overcommitted.url}/admin/pools", headers=headers)
    assert reply.status_code == status
    assert reply.headers["x-amzn-errortype"] == error_type
