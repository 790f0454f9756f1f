"""The gateway on a Redis Cluster and on a Sentinel set that fails over under load.

Cluster: two replicas under overload keep P1 and fill the quota, every key of theirs on the
one master of the ``{bgw}`` slot; admissions per second through the store, Cluster against a
single Redis. Sentinel: the master is killed mid-load; every request is answered (200 or a
Bedrock-shaped 429/503), the simulator's rolling minute is never exceeded, and the replicas are
back on the new master within seconds. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest
import redis

from gateway.limiter.core import Admitted, Charge, Plan, window_bucket
from gateway.limiter.redis_store import RedisStore
from tests.load.harness import (
    POOL_PREFIX,
    Launcher,
    OpenLoop,
    Process,
    describe,
    eventually,
    get_text,
    make_bodies,
    metric,
    rate_for,
    simulator_pool,
)
from tests.servers import RedisCluster, RedisSentinelSet, RedisServer

TPM = 60_000


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _keys(port: int, pattern: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        return sum(1 for _ in client.scan_iter(match=pattern))
    finally:
        client.close()


async def _admissions_per_s(url: str, seconds: float, workers: int = 32) -> float:
    """Admissions a second through one RedisStore (a tenant and a pool window each, never
    full), ``workers`` callers at once: the store's own speed, no gateway around it."""
    store = RedisStore.from_url(url, timeout_s=2.0)
    tenant = window_bucket("{bench}:tenant", 10**12, window_ms=60_000, slot_ms=250,
                           margin_ms=500, label="t")  # fmt: skip
    pool = window_bucket("{bench}:pool", 10**12, window_ms=60_000, slot_ms=250, margin_ms=500,
                         label="p")  # fmt: skip
    count = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker(n: int) -> None:
        nonlocal count
        i = 0
        while loop.time() < end:
            plan = Plan(f"w{n}-{i}", (Charge(tenant, 300, settles=True),
                                      Charge(pool, 300, settles=True)))  # fmt: skip
            assert isinstance(await store.admit(plan), Admitted)
            count, i = count + 1, i + 1

    try:
        await store.admit(Plan("warm", (Charge(pool, 1),)))  # connect and load the script
        started = loop.time()
        await asyncio.gather(*(worker(n) for n in range(workers)))
        return count / (loop.time() - started)
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_two_replicas_on_a_cluster_hold_and_fill_the_quota(
    launcher: Launcher, redis_cluster: RedisCluster, private_redis: RedisServer
) -> None:
    sim = launcher.simulator(mode="rolling", tpm=TPM)
    gateways = launcher.gateways(2, upstream_url=sim.url, redis_url=redis_cluster.url, tpm=TPM,
                                 queue={"max_wait_s": 0})  # fmt: skip
    bodies = make_bodies(600)
    load = OpenLoop([g.url for g in gateways], launcher.key, bodies,
                    rate=rate_for(bodies, TPM, 8.0), duration_s=12.0)  # fmt: skip
    await load.run()
    async with aiohttp.ClientSession() as session:
        pool = await simulator_pool(session, sim.url)
    owner = redis_cluster.owner("{bgw}:x")
    placed = {port: _keys(port, "{bgw}:*") for port in redis_cluster.ports}
    pool_keys = _keys(owner, POOL_PREFIX + "*")

    # Alternated, the best of two each: the machine is shared, one run alone is noise.
    runs = [await _admissions_per_s(url, 1.0) for _ in range(2)
            for url in (private_redis.url, redis_cluster.url)]  # fmt: skip
    single, cluster = max(runs[0::2]), max(runs[1::2])
    print(f"\n[cluster] client: {describe(load)}; simulator max_rolling_60s_tokens "
          f"{pool['max_rolling_60s_tokens']} (TPM {TPM}), throttled {pool['throttled']}; "
          f"{{bgw}} keys per node {placed} (slot owner {owner})")  # fmt: skip
    print(f"[cluster] store admissions/s, 32 callers, one process, best of 2 x 1 s: single "
          f"Redis {single:.0f}, Cluster {cluster:.0f} ({cluster / single:.2f} x)")  # fmt: skip

    assert set(load.statuses()) <= {200, 429}, load.statuses()
    assert pool["throttled"] == 0
    assert 0.9 * TPM <= pool["max_rolling_60s_tokens"] <= TPM  # P1 and P2 on the Cluster
    assert pool_keys > 0
    assert placed[owner] > pool_keys  # pools and tenants, on the slot's owner...
    assert sum(placed.values()) == placed[owner]  # ...and nowhere else
    assert cluster >= 0.5 * single  # the same one round trip; a MOVED per call would halve it


async def _degraded(session: aiohttp.ClientSession, gateway: Process) -> float:
    return metric(await get_text(session, f"{gateway.url}/metrics"), "gateway_limiter_degraded")


class Watch:
    """Polls every replica's ``gateway_limiter_degraded`` and keeps when each was seen on."""

    def __init__(self, gateways: list[Process]) -> None:
        self.gateways = gateways
        self.on: dict[int, list[float]] = {i: [] for i in range(len(gateways))}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                for i, gateway in enumerate(self.gateways):
                    if await _degraded(session, gateway) == 1:
                        self.on[i].append(loop.time())
                await asyncio.sleep(0.05)  # the polling interval

    def seconds(self) -> list[float]:
        """Per replica, first to last time seen degraded (+ one polling interval)."""
        return [round(t[-1] - t[0] + 0.05, 2) if t else 0.0 for t in self.on.values()]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_sentinel_failover_under_load_is_a_short_outage(launcher: Launcher) -> None:
    servers = RedisSentinelSet(replicas=1, sentinels=3, down_after_ms=1000).start()
    try:
        await _failover_under_load(launcher, servers)
    finally:
        servers.stop()


async def _failover_under_load(launcher: Launcher, servers: RedisSentinelSet) -> None:
    old, new = servers.data_ports
    sim = launcher.simulator(mode="rolling", tpm=TPM)
    gateways = launcher.gateways(2, upstream_url=sim.url, redis_url=servers.url, tpm=TPM,
                                 on_store_failure="local", retry_store_after_s=0.5,
                                 queue={"max_wait_s": 0})  # fmt: skip
    bodies = make_bodies(600)
    load = OpenLoop([g.url for g in gateways], launcher.key, bodies,
                    rate=rate_for(bodies, TPM, 6.0), duration_s=60.0)  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = asyncio.create_task(load.run(stop))
    watch = Watch(gateways)
    watcher = asyncio.create_task(watch.run())

    async def quota_full() -> bool:  # the gateways refusing on the full rolling minute
        return sum(o.error_type == "ThrottlingException" for o in load.outcomes) >= 10

    async def promoted() -> bool:
        return await asyncio.to_thread(servers.master_port) == new

    async def back() -> bool:
        return all(t and t[-1] < loop.time() - 0.5 for t in watch.on.values()) and (
            await asyncio.to_thread(_keys, new, POOL_PREFIX + "*") > 0)  # fmt: skip

    try:
        await eventually(quota_full, 30, "the gateways refusing on the full quota")
        await asyncio.to_thread(servers.kill, old)
        down, killed_at = loop.time(), time.time()
        switched = await eventually(promoted, 20, "the sentinels promoting the replica")
        await eventually(back, 15, "every replica degraded, then back on the new master")
        recovered = loop.time()
        await asyncio.sleep(5)  # the scenario's length after the failover
    finally:
        stop.set()
        await runner
        watch.stop.set()
        await watcher
    async with aiohttp.ClientSession() as session:
        pool = await simulator_pool(session, sim.url)

    across = [o for o in load.outcomes if down <= o.sent < recovered]
    tracebacks = [g.name for g in gateways if "Traceback" in g.tail(10_000)]
    print(f"\n[sentinel] client: {describe(load)}")
    print(f"[sentinel] master killed at {time.strftime('%X', time.gmtime(killed_at))}; "
          f"replica promoted after {switched:.2f} s; every gateway back on it after "
          f"{recovered - down:.2f} s; {len(across)} requests sent across the failover, "
          f"answered {dict(sorted(load.statuses(across).items()))}; seconds degraded per "
          f"gateway {watch.seconds()}")  # fmt: skip
    print(f"[sentinel] simulator: max_rolling_60s_tokens {pool['max_rolling_60s_tokens']} "
          f"(TPM {TPM}), throttled {pool['throttled']}")  # fmt: skip

    assert set(load.statuses()) <= {200, 429, 503}, load.statuses()  # no hang, no 500
    assert not tracebacks, tracebacks
    assert all(o.error_type in ("", "ThrottlingException", "ServiceUnavailableException")
               for o in load.outcomes), {o.error_type for o in load.outcomes}  # fmt: skip
    assert all(watch.on.values()), watch.on  # every replica saw the outage...
    assert max(watch.seconds()) < switched + 3  # ...and left it soon after the promotion
    assert pool["throttled"] == 0  # P1 across the failover
    assert pool["max_rolling_60s_tokens"] <= TPM
    assert load.statuses()[200] > 0
