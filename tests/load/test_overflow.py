"""A burst becomes a spill-over, not a 429; past the queue's bound, a 429 comes at once.

The model has two routes, an on-demand one of quota Q and its cross-region profile (``us.``) of
2Q, and the simulator enforces the same quotas per pool in ``rolling`` mode. A burst offering
5 x Q for 30 s, with a 45 s deadline, must reach clients without a single 429 and the upstream
without a single throttle, the on-demand pool filling first and the profile taking the rest.
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.load.harness import MODEL, MODEL_ID, describe, get_text, make_bodies, metric, rate_for
from tests.load.scenarios import (
    ON_DEMAND_LABEL,
    PROFILE_ID,
    PROFILE_LABEL,
    Loop,
    Scenario,
    gateway_settings,
    labelled,
    model,
    percentile,
    route,
    sim_pools,
)

Q = 72_000  # the on-demand pool's tokens per minute; the profile has 2 x Q
BURST = 5.0  # offered tokens per minute / Q
BURST_S = 30.0
DEADLINE_S = 45.0

pytestmark = pytest.mark.slow


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    launcher = Scenario(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.mark.timeout(150)
async def test_a_burst_of_five_times_the_quota_spills_over_without_a_429(
    scenario: Scenario,
) -> None:
    pools = [{"model": MODEL_ID, "tpm": Q}, {"model": PROFILE_ID, "tpm": 2 * Q}]
    sim = scenario.sim(mode="rolling", tpm=Q, pools=pools)
    models = {MODEL: model(MODEL_ID, route(Q), route(2 * Q, profile=PROFILE_ID))}
    (gateway,) = scenario.replicas(1, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=scenario.tenants(), server={"shutdown_grace_s": 60},
        queue={"max_wait_s": DEADLINE_S}))  # fmt: skip
    rate = rate_for(make_bodies(2000), Q, BURST)
    bodies = make_bodies(math.ceil(rate * BURST_S))
    load = Loop([gateway.url], scenario.keys["load"], bodies, rate=rate, duration_s=BURST_S,
                max_in_flight=1000, timeout_s=DEADLINE_S + 15)  # fmt: skip
    await load.run()
    async with aiohttp.ClientSession() as session:
        stats = await sim_pools(session, sim.url)
        exposition = await get_text(session, f"{gateway.url}/metrics")

    replies = load.replies
    offered = sum(b.cost for b in bodies) / (load.ended_wall - load.started_wall) * 60
    routes = Counter(r.route for r in replies)
    waits = [r.queue_ms or 0 for r in replies if r.status == 200]
    first_profile = min((r.sent for r in replies if r.route == PROFILE_LABEL), default=math.nan)
    on_demand, profile = stats[MODEL_ID], stats[PROFILE_ID]
    print(
        f"\n[burst] on-demand Q {Q} tpm, profile {2 * Q} tpm; offered {offered / Q:.2f} x Q "
        f"for {BURST_S:.0f} s, deadline {DEADLINE_S:.0f} s"
    )
    print(f"[burst] client: {describe(load)}")
    print(
        f"[burst] x-gateway-route: {dict(routes)}; first answer on the profile for a request "
        f"sent {first_profile - load.started_wall:.1f} s into the burst"
    )
    print(
        f"[burst] x-gateway-queue-ms: p50 {percentile(waits, 0.5):.0f}, p99 "
        f"{percentile(waits, 0.99):.0f}, max {max(waits, default=0)}; attempts > 1: "
        f"{sum(1 for r in replies if (r.attempts or 1) > 1)}"
    )
    for name, pool in (("on-demand", on_demand), ("profile", profile)):
        print(f"[burst] simulator {name}: admitted {pool['admitted']}, throttled "
              f"{pool['throttled']}, tokens {pool['tokens']}, max_rolling_60s_tokens "
              f"{pool['max_rolling_60s_tokens']} (tpm {pool['tpm']})")  # fmt: skip
    print(
        f"[burst] gateway_upstream_throttles_total "
        f"{metric(exposition, 'gateway_upstream_throttles_total'):g}"
    )

    assert load.not_sent == 0
    assert len(replies) == int(rate * BURST_S)
    assert set(load.statuses()) == {200}, load.statuses()
    assert on_demand["throttled"] == profile["throttled"] == 0
    assert metric(exposition, "gateway_upstream_throttles_total") == 0
    # spill-over: the on-demand pool first, filled, then the profile
    assert set(routes) == {ON_DEMAND_LABEL, PROFILE_LABEL}
    assert on_demand["admitted"] > 0
    assert profile["admitted"] > 0
    assert 0.9 * Q <= on_demand["max_rolling_60s_tokens"] <= Q
    assert profile["max_rolling_60s_tokens"] <= 2 * Q
    admissions = labelled(exposition, "gateway_admissions_total", "route")
    assert admissions == {ON_DEMAND_LABEL: on_demand["admitted"],
                          PROFILE_LABEL: profile["admitted"]}  # fmt: skip


DEPTH = 5
SHORT_WAIT_S = 3.0


@pytest.mark.timeout(60)
async def test_past_the_queue_bound_a_429_with_retry_hints_comes_at_once(
    scenario: Scenario,
) -> None:
    bodies = make_bodies(40, seed=11)
    tpm = sum(b.cost for b in bodies[:8])  # room for some eight of them
    sim = scenario.sim(mode="rolling", tpm=10 * tpm)
    models = {MODEL: model(MODEL_ID, route(tpm))}
    queue = {"max_wait_s": SHORT_WAIT_S, "max_depth": DEPTH}
    (gateway,) = scenario.replicas(1, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=scenario.tenants(), queue=queue))  # fmt: skip
    # every request at once: some admitted, DEPTH wait, the rest find the queue full
    load = Loop([gateway.url], scenario.keys["load"], bodies, rate=2000.0, duration_s=0.02,
                max_in_flight=100, timeout_s=SHORT_WAIT_S + 10)  # fmt: skip
    await load.run()
    replies = load.replies
    full = [r for r in replies if r.status == 429 and "queue full" in r.message]
    waited = [r for r in replies if r.status == 429 and r not in full]
    print(
        f"\n[bound] route tpm {tpm}, queue max_depth {DEPTH}, max_wait_s {SHORT_WAIT_S}: "
        f"{describe(load)}"
    )
    print(f"[bound] queue full: {len(full)} answers 429 in max "
          f"{max((r.latency for r in full), default=0) * 1000:.0f} ms, x-amz-retry-after "
          f"{sorted({r.retry_after_ms for r in full})} ms; after waiting: {len(waited)} 429 in "
          f"{min((r.latency for r in waited), default=0):.2f}-"
          f"{max((r.latency for r in waited), default=0):.2f} s")  # fmt: skip

    assert len(replies) == int(2000.0 * 0.02)
    assert set(load.statuses()) <= {200, 429}, load.statuses()
    assert len(full) >= len(bodies) - DEPTH - 8 - 4  # some refunds may admit a few more
    for reply in full:
        assert reply.latency < 0.5, reply
        assert reply.error_type == "ThrottlingException", reply
        assert int(reply.retry_after_ms or 0) > 0, reply
        assert reply.retry_after is not None, reply
    for reply in waited:  # the waiters that got no room: at their deadline, with hints
        assert reply.latency >= SHORT_WAIT_S - 0.1, reply
        assert reply.retry_after_ms is not None, reply
