"""A route's configured quota is 30 % above the real one: the gateway learns the real one.

The simulator enforces REAL tokens per minute (``rolling``); the gateway's single route says
CONFIGURED = REAL / 0.7. The load offers 1.5 x REAL for LOAD_S seconds with the default 25 s
deadline. Bedrock's (the simulator's) 429s are retried by the gateway and lower the pool's
learned quota factor; after the first minute neither the upstream nor the clients may see
Bedrock's throttling, and the learned quota shows in ``GET /admin/pools`` and
``gateway_pool_quota_factor``. One run feeds every test here; run with ``-s`` for its figures.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.load.harness import (
    MODEL,
    MODEL_ID,
    describe,
    get_text,
    make_bodies,
    metric,
    rate_for,
    rolling_sums,
    simulator_pool,
)
from tests.load.scenarios import (
    Loop,
    Reply,
    Scenario,
    admin_pools,
    gateway_settings,
    model,
    percentile,
    route,
)

REAL = 140_000
CONFIGURED = 200_000  # REAL is 30 % below it
OVERLOAD = 1.5  # offered tokens per minute / REAL
LOAD_S = 90.0
LEARN_S = 60.0  # "the first minute": the gateway may learn in it
DEADLINE_S = 25.0  # the default queue.max_wait_s

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]


@dataclass(frozen=True)
class Run:
    load: Loop
    late: list[Reply]
    """The requests sent after the first minute."""
    factors: list[tuple[int, float]]
    """(seconds into the load, quota_factor of /admin/pools), every 5 s."""
    pool: dict[str, Any]
    """/admin/pools' entry of the route's pool, just after the load."""
    exposition: str
    upstream: dict[str, Any]
    """The simulator's stats of the pool after the load (with its timeline)."""
    throttled_first_minute: int
    """Upstream 429s (the simulator's count) in the first minute of the load."""
    late_fill: float
    """Upstream tokens in the last rolling minute of the load / REAL."""


async def _watch(
    session: aiohttp.ClientSession, scenario: Scenario, gateway: str, sim: str, into: list[Any]
) -> int:
    """Sample the quota factor every 5 s; the simulator's throttle count at LEARN_S."""
    loop = asyncio.get_running_loop()
    start, throttled = loop.time(), -1
    while loop.time() - start < LOAD_S:
        (pool,) = await admin_pools(session, gateway, scenario.admin_key)
        into.append((round(loop.time() - start), pool["quota_factor"]))
        if throttled < 0 and loop.time() - start >= LEARN_S:
            throttled = (await simulator_pool(session, sim))["throttled"]
        await asyncio.sleep(5)
    return throttled


async def _run(scenario: Scenario) -> Run:
    sim = scenario.sim(mode="rolling", tpm=REAL)
    models = {MODEL: model(MODEL_ID, route(CONFIGURED))}
    (gateway,) = scenario.replicas(1, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=scenario.tenants(), admin_key=scenario.admin_key,
        queue={"max_wait_s": DEADLINE_S}))  # fmt: skip
    rate = rate_for(make_bodies(2000), REAL, OVERLOAD)
    bodies = make_bodies(math.ceil(rate * LOAD_S), seed=3)
    load = Loop([gateway.url], scenario.keys["load"], bodies, rate=rate, duration_s=LOAD_S,
                max_in_flight=1000, timeout_s=DEADLINE_S + 15)  # fmt: skip
    factors: list[tuple[int, float]] = []
    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(_watch(session, scenario, gateway.url, sim.url, factors))
        await load.run()
        throttled = await watcher
        (pool,) = await admin_pools(session, gateway.url, scenario.admin_key)
        exposition = await get_text(session, f"{gateway.url}/metrics")
        upstream = await simulator_pool(session, sim.url)
    end = math.floor(load.ended_wall)
    (_, tokens), *_ = rolling_sums(upstream["timeline"], end - 60, end)
    late = [r for r in load.replies if r.sent - load.started_wall >= LEARN_S]
    run = Run(load, late, factors, pool, exposition, upstream, throttled, tokens / REAL)
    _report(run)
    return run


def _report(run: Run) -> None:
    load, late, pool, exposition, upstream = (run.load, run.late, run.pool, run.exposition,
                                              run.upstream)  # fmt: skip
    start = load.started_wall
    print(
        f"\n[learn] configured {CONFIGURED} tpm, real {REAL} tpm, offered {OVERLOAD} x real "
        f"for {LOAD_S:.0f} s, deadline {DEADLINE_S:.0f} s"
    )
    print(f"[learn] client: {describe(load)}")
    late_429 = [r for r in late if r.status == 429]
    print(f"[learn] after the first minute: {len(late)} requests, 429 {len(late_429)} "
          f"({len(late_429) / max(1, len(late)):.1%}): the gateway's own at the deadline "
          f"{sum(1 for r in late_429 if r.gateway_own)}, Bedrock's passed on "
          f"{sum(1 for r in late_429 if not r.gateway_own)}")  # fmt: skip
    first = [r for r in load.replies if r.status == 429 and r.sent - start < LEARN_S]
    print(f"[learn] first minute: 429 {len(first)}, of which Bedrock's passed on after "
          f"{sorted({r.attempts for r in first if not r.gateway_own})} attempts "
          f"{sum(1 for r in first if not r.gateway_own)}")  # fmt: skip
    by10: dict[int, Counter[int]] = {}
    for r in load.replies:
        by10.setdefault(int((r.sent - start) // 10) * 10, Counter())[r.status] += 1
    print("[learn] statuses by send time: " + ", ".join(
        f"{s}-{s + 10}s {dict(c)}" for s, c in sorted(by10.items())))  # fmt: skip
    waits = [r.queue_ms or 0 for r in late if r.status == 200]
    print(
        f"[learn] after the first minute, 200s' queue-ms p50 {percentile(waits, 0.5):.0f} "
        f"p90 {percentile(waits, 0.9):.0f} max {max(waits, default=0)}"
    )
    print(f"[learn] quota factor every 5 s: {run.factors}")
    print(f"[learn] /admin/pools at the end: quota_factor {pool['quota_factor']}, effective_tpm "
          f"{pool['effective_tpm']} (real {REAL}); gateway_pool_quota_factor "
          f"{metric(exposition, 'gateway_pool_quota_factor'):.4f}; "
          f"gateway_upstream_throttles_total "
          f"{metric(exposition, 'gateway_upstream_throttles_total'):g}")  # fmt: skip
    print(f"[learn] simulator: admitted {upstream['admitted']}, throttled {upstream['throttled']} "
          f"({run.throttled_first_minute} in the first minute), max_rolling_60s_tokens "
          f"{upstream['max_rolling_60s_tokens']} (real {REAL}); the last loaded minute used "
          f"{run.late_fill:.1%} of the real quota")  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    scenario = Scenario(tmp_path_factory.mktemp("learned"))
    try:
        return asyncio.run(_run(scenario))
    finally:
        scenario.stop_all()


def test_the_learned_quota_shows_in_pool_status_and_metrics(run: Run) -> None:
    assert run.pool["quota_factor"] < 1
    assert run.pool["effective_tpm"] < CONFIGURED
    assert metric(run.exposition, "gateway_pool_quota_factor") < 1
    assert metric(run.exposition, "gateway_upstream_throttles_total") > 0
    assert metric(run.exposition, "gateway_upstream_throttles_total") == run.upstream["throttled"]


def test_after_the_first_minute_bedrock_throttles_nobody(run: Run) -> None:
    statuses = Counter(r.status for r in run.load.replies)
    assert set(statuses) <= {200, 429}, statuses
    assert len(run.late) >= 200
    assert run.upstream["throttled"] == run.throttled_first_minute  # none after the minute
    passed_on = [r for r in run.late if r.status == 429 and not r.gateway_own]
    assert not passed_on
    for reply in run.load.replies:
        if reply.gateway_own:  # the gateway's own refusals come with retry hints
            assert reply.retry_after_ms is not None, reply
    assert run.upstream["max_rolling_60s_tokens"] <= REAL


@pytest.mark.xfail(
    strict=False,
    reason="Gateway (gateway/limiter/adaptive.py): the learned factor undershoots. The first "
    "429 sets it to 0.70, the real quota; recovery (+0.002/s) starts at once, so the limit is "
    "above the real quota within seconds, Bedrock throttles again after the 2 s cooldown and "
    "the factor drops to 0.50 (0.71 x real), then needs ~100 s to climb back. Meanwhile ~18 % "
    "of the real quota goes unused and a third of the requests sent after the first minute "
    "reach their deadline (the gateway's own 429, with retry hints; none of Bedrock's).",
)
def test_after_the_first_minute_under_one_percent_429(run: Run) -> None:
    late_429 = sum(1 for r in run.late if r.status == 429)
    assert late_429 < 0.01 * len(run.late)
