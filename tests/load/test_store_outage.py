"""P8: Redis goes away under load and comes back on the same port.

With ``on_store_failure: local`` the replicas keep serving on their shares of the quota, say so
in ``/metrics`` and rejoin the shared windows once Redis answers again. With ``deny`` they
answer ServiceUnavailableException while it is away. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import aiohttp
import orjson
import pytest

from tests.load.faults import read_buckets, settled
from tests.load.harness import (
    Body,
    Launcher,
    OpenLoop,
    Process,
    describe,
    eventually,
    get_text,
    invoke_once,
    kill_redis,
    make_bodies,
    metric,
    rate_for,
    redis_probe,
    restart_redis,
    simulator_pool,
)
from tests.servers import RedisServer

TPM = 600_000
RATE = 10.0  # about 40 % of TPM: each replica's local share (TPM / 2) carries its half
OUTAGE_S = 6.0
RETRY_S = 1.0

pytestmark = pytest.mark.timeout(120)


def answers(load: OpenLoop) -> str:
    """Requests sent, answered, and the errors by status and type."""
    errors = Counter(f"{o.status} {o.error_type.split(':')[0]}" if o.status else o.error
                     for o in load.outcomes if o.status != 200)  # fmt: skip
    answered = sum(1 for o in load.outcomes if o.status)
    return f"sent {len(load.outcomes)}, answered {answered}, errors {dict(errors) or 'none'}"


def max_reserved(bodies: list[Body]) -> int:
    """An upper bound of a body's reservation: its input (at the estimate's largest factor,
    3) and its max_tokens."""
    return max(3 * body.cost + int(orjson.loads(body.raw)["max_tokens"]) for body in bodies)


async def _degraded(session: aiohttp.ClientSession, gateway: Process) -> tuple[float, float]:
    exposition = await get_text(session, f"{gateway.url}/metrics")
    return (metric(exposition, "gateway_limiter_degraded"),
            metric(exposition, "gateway_limiter_store_failures_total"))  # fmt: skip


@pytest.mark.slow
async def test_local_share_serves_through_a_redis_outage_then_rejoins(
    launcher: Launcher, private_redis: RedisServer
) -> None:
    sim = launcher.simulator(mode="rolling", tpm=TPM)
    gateways = launcher.gateways(2, upstream_url=sim.url, redis_url=private_redis.url, tpm=TPM,
                                 on_store_failure="local", retry_store_after_s=RETRY_S)  # fmt: skip
    bodies = make_bodies(600)
    load = OpenLoop([g.url for g in gateways], launcher.key, bodies, rate=RATE,
                    duration_s=60.0)  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = asyncio.create_task(load.run(stop))

    def ok_since(t: float) -> int:
        return sum(1 for o in load.outcomes if o.sent >= t and o.status == 200)

    async def shared_and_counting() -> bool:
        return ok_since(0) >= 20 and (await redis_probe(private_redis.url))[0] > 0

    try:
        async with aiohttp.ClientSession() as session:
            await eventually(shared_and_counting, 15, "admissions through Redis")

            await asyncio.to_thread(kill_redis, private_redis)
            down = loop.time()

            async def all_degraded() -> bool:
                states = [await _degraded(session, g) for g in gateways]
                return all(d == 1 and f > 0 for d, f in states)

            noticed = await eventually(all_degraded, 10, "every replica degraded")
            ready = orjson.loads(await get_text(session, f"{gateways[0].url}/health/ready"))
            failures = [(await _degraded(session, g))[1] for g in gateways]

            async def outage_served() -> bool:
                return loop.time() - down >= OUTAGE_S and ok_since(down) >= 30

            await eventually(outage_served, 30, "requests served during the outage")
            retried = [(await _degraded(session, g))[1] for g in gateways]
            await asyncio.to_thread(restart_redis, private_redis)
            up = loop.time()

            async def pools_in_redis() -> bool:
                return (await redis_probe(private_redis.url))[0] > 0

            async def none_degraded() -> bool:
                return all(d == 0 for d, _ in [await _degraded(session, g) for g in gateways])

            rejoined = await eventually(pools_in_redis, RETRY_S + 5, "pool keys back in Redis")
            await eventually(none_degraded, RETRY_S + 5, "every replica back on Redis")
            _, calls = await redis_probe(private_redis.url)

            async def evalsha_grows() -> bool:
                return (await redis_probe(private_redis.url))[1] > calls

            await eventually(evalsha_grows, 5, "EVALSHA calls growing")
            after = loop.time()

            async def served_after() -> bool:
                return ok_since(after) >= 10

            await eventually(served_after, 10, "requests served after the rejoin")
            _, evalsha = await redis_probe(private_redis.url)
    finally:
        stop.set()
        await runner
    pool = await settled(sim, private_redis.url)
    buckets = await read_buckets(private_redis.url)

    during = [o for o in load.outcomes if down <= o.sent < up]
    print(f"\n[local] client: {describe(load)}; {answers(load)}")
    limiter_state = ready["components"]["limiter"]
    print(f"[local] outage {up - down:.1f} s: {len(during)} requests sent, "
          f"{load.statuses(during)[200]} answered 200; replicas degraded after {noticed:.2f} s; "
          f"store failures {failures} at first, {retried} at the end (one per retry); "
          f"/health/ready {limiter_state!r}")  # fmt: skip
    print(f"[local] Redis back: pool keys after {rejoined:.2f} s (retry_store_after_s "
          f"{RETRY_S}), EVALSHA calls on the new Redis {evalsha}")  # fmt: skip
    print(f"[local] simulator: max_rolling_60s_tokens {pool['max_rolling_60s_tokens']} "
          f"(TPM {TPM}), throttled {pool['throttled']}, admitted {pool['admitted']}, settled "
          f"{pool['settled']}, in flight {pool['in_flight']}, tokens {pool['tokens']}")  # fmt: skip
    print(f"[local] the new Redis once settled: window {buckets.window} tokens (total "
          f"{buckets.window_total}), {buckets.window - pool['tokens']} more than the simulator "
          f"charged in the whole run")  # fmt: skip

    assert set(load.statuses()) <= {200, 429}, load.statuses()
    assert load.statuses(during)[200] >= 0.9 * len(during) >= 30
    assert ready["status"] == "ok"
    assert limiter_state.startswith("degraded")
    assert all(f > 0 for f in failures)
    # Redis is tried again every retry_store_after_s, and each try fails while it is away.
    tries = (OUTAGE_S - noticed) / RETRY_S - 2
    assert all(r >= f + tries for f, r in zip(failures, retried, strict=True))
    assert rejoined <= RETRY_S + 3
    assert pool["throttled"] == 0
    assert pool["admitted"] == pool["settled"] == load.statuses()[200]
    # The whole run fits in one window, and the restarted Redis knows all of it: each replica
    # added its own last window when it rejoined. Nothing counted twice; the calls admitted
    # locally and settled after that seed keep their reservation there (the safe side).
    assert buckets.window == buckets.window_total
    assert pool["tokens"] <= buckets.window <= pool["tokens"] + 2 * 3 * max_reserved(bodies)


async def test_deny_answers_service_unavailable_while_redis_is_down(
    launcher: Launcher, private_redis: RedisServer
) -> None:
    sim = launcher.simulator(mode="rolling", tpm=TPM)
    (gateway,) = launcher.gateways(1, upstream_url=sim.url, redis_url=private_redis.url, tpm=TPM,
                                   on_store_failure="deny", retry_store_after_s=0.5)  # fmt: skip
    bodies = make_bodies(20)
    async with aiohttp.ClientSession() as session:
        assert [(await invoke_once(session, gateway.url, launcher.key, b))[0]
                for b in bodies[:3]] == [200] * 3  # fmt: skip

        await asyncio.to_thread(kill_redis, private_redis)
        answers = [await invoke_once(session, gateway.url, launcher.key, b) for b in bodies[3:8]]
        async with session.get(f"{gateway.url}/health/ready") as reply:
            ready = reply.status
        degraded, failures = await _degraded(session, gateway)

        await asyncio.to_thread(restart_redis, private_redis)
        bodies_left = itertools.cycle(bodies[8:])

        async def admitted_again() -> bool:
            status, _, _ = await invoke_once(session, gateway.url, launcher.key, next(bodies_left))
            return status == 200

        back = await eventually(admitted_again, 5, "admitted after Redis returns")

    print(
        f"\n[deny] while down: {[(s, t) for s, t, _ in answers]}; ready {ready}; "
        f"degraded {degraded}, store failures {failures}; admitted again after {back:.2f} s"
    )
    for status, error_type, body in answers:
        assert status == 503
        assert error_type == "ServiceUnavailableException"
        assert b"quota store" in body
    assert ready == 503
    assert degraded == 1
    assert failures > 0


@pytest.mark.slow
async def test_the_upstream_bound_holds_across_an_outage_under_overload(
    launcher: Launcher, private_redis: RedisServer
) -> None:
    tpm = 60_000
    sim = launcher.simulator(mode="rolling", tpm=tpm)
    gateways = launcher.gateways(2, upstream_url=sim.url, redis_url=private_redis.url, tpm=tpm,
                                 on_store_failure="local", retry_store_after_s=0.5,
                                 queue={"max_wait_s": 0})  # fmt: skip
    bodies = make_bodies(600)
    load = OpenLoop([g.url for g in gateways], launcher.key, bodies,
                    rate=rate_for(bodies, tpm, 4.0), duration_s=60.0)  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = asyncio.create_task(load.run(stop))

    def own_throttles() -> int:
        return sum(1 for o in load.outcomes if o.error_type == "ThrottlingException")

    async def quota_full() -> bool:
        return own_throttles() >= 10

    async def pools_in_redis() -> bool:
        return (await redis_probe(private_redis.url))[0] > 0

    try:
        await eventually(quota_full, 30, "the gateways refusing on the full quota")
        await asyncio.to_thread(kill_redis, private_redis)
        down = loop.time()
        async with aiohttp.ClientSession() as session:

            async def all_degraded() -> bool:
                return all([(await _degraded(session, g))[0] == 1 for g in gateways])

            await eventually(all_degraded, 10, "every replica on its local share")
        await asyncio.sleep(2)  # the outage's length, not a wait for readiness
        await asyncio.to_thread(restart_redis, private_redis)
        up = loop.time()
        await eventually(pools_in_redis, 5, "pool keys back in Redis")
        rejoined = loop.time()
        await asyncio.sleep(5)  # the scenario's length, not a wait for readiness
    finally:
        stop.set()
        await runner
    async with aiohttp.ClientSession() as session:
        pool = await simulator_pool(session, sim.url)

    upstream = [o for o in load.outcomes if o.error_type.startswith("ThrottlingException:")]
    print(f"\n[overload outage] client: {describe(load)}; Redis down {up - down:.1f} s, "
          f"shared again {rejoined - up:.1f} s later; upstream throttles passed to clients: "
          f"{sum(o.sent < down for o in upstream)} before the outage, "
          f"{sum(down <= o.sent < rejoined for o in upstream)} during it, "
          f"{sum(o.sent >= rejoined for o in upstream)} after; simulator throttled "
          f"{pool['throttled']}, max_rolling_60s_tokens {pool['max_rolling_60s_tokens']} "
          f"(TPM {tpm})")  # fmt: skip
    if not set(load.statuses()) <= {200, 429} or not load.statuses()[200]:
        pytest.fail(f"not the failure this test expects: {load.statuses()}")  # not an xfail
    assert pool["throttled"] == 0
