"""A route's configured quota is 30 % above the real one: the gateway learns the real one.

The simulator enforces REAL tokens per minute (``rolling``); the gateway's single route says
CONFIGURED = REAL / 0.7, with the default 25 s deadline. Two loads, one run each:

* ``burst`` (the acceptance scenario): traffic the real quota can carry, 0.85 x REAL for
  120 s, plus 0.8 x REAL more in its first 30 s, so that the first minute offers more than
  REAL and Bedrock throttles. The gateway must learn from those 429s and, after the first
  minute, absorb the rest in its queue: under 1 % of the requests sent after it may get a 429,
  and none of Bedrock's. (A load above the real quota for good cannot pass that bar: the
  excess must time out, learned or not.)
* ``sustained``: 1.5 x REAL throughout. A third of it can never be served (the gateway's own
  429s at the deadline, with retry hints); what counts is that Bedrock's 429s after the first
  minute stay under 1 % and the learned quota does not undershoot: after the first minute it
  stays at 90 % of the real quota or more, and the last loaded minute uses 85 % of it or more.

Bedrock's (the simulator's) 429s are retried by the gateway and lower the pool's learned
quota factor, which shows in ``GET /admin/pools`` and ``gateway_pool_quota_factor``. Run with
``-s`` for the figures.
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
LEARN_S = 60.0  # "the first minute": the gateway may learn in it
DEADLINE_S = 25.0  # the default queue.max_wait_s


@dataclass(frozen=True)
class Shape:
    """Offered tokens per minute / REAL: ``steady`` for ``load_s``, plus ``burst`` for the
    first ``burst_s``."""

    steady: float
    load_s: float
    burst: float = 0.0
    burst_s: float = 0.0


BURST = Shape(steady=0.85, load_s=120.0, burst=0.8, burst_s=30.0)
SUSTAINED = Shape(steady=1.5, load_s=90.0)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class Run:
    shape: Shape
    replies: list[Reply]
    started_wall: float
    ended_wall: float
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
    session: aiohttp.ClientSession, scenario: Scenario, gateway: str, sim: str, into: list[Any],
    load_s: float,
) -> int:  # fmt: skip
    """Sample the quota factor every 5 s; the simulator's throttle count at LEARN_S."""
    loop = asyncio.get_running_loop()
    start, throttled = loop.time(), -1
    while loop.time() - start < load_s:
        (pool,) = await admin_pools(session, gateway, scenario.admin_key)
        into.append((round(loop.time() - start), pool["quota_factor"]))
        if throttled < 0 and loop.time() - start >= LEARN_S:
            throttled = (await simulator_pool(session, sim))["throttled"]
        await asyncio.sleep(5)
    return throttled


async def _run(scenario: Scenario, shape: Shape) -> Run:
    sim = scenario.sim(mode="rolling", tpm=REAL)
    models = {MODEL: model(MODEL_ID, route(CONFIGURED))}
    (gateway,) = scenario.replicas(1, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=scenario.tenants(), admin_key=scenario.admin_key,
        queue={"max_wait_s": DEADLINE_S}))  # fmt: skip
    per_real = rate_for(make_bodies(2000), REAL, 1.0)  # requests per second offering REAL
    loads = []
    for n, (multiple, seconds) in enumerate(((shape.steady, shape.load_s),
                                             (shape.burst, shape.burst_s))):  # fmt: skip
        if multiple:
            rate = per_real * multiple
            loads.append(Loop([gateway.url], scenario.keys["load"],
                              make_bodies(math.ceil(rate * seconds), seed=3 + n), rate=rate,
                              duration_s=seconds, max_in_flight=1000,
                              timeout_s=DEADLINE_S + 15))  # fmt: skip
    factors: list[tuple[int, float]] = []
    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(
            _watch(session, scenario, gateway.url, sim.url, factors, shape.load_s)
        )
        await asyncio.gather(*(load.run() for load in loads))
        throttled = await watcher
        (pool,) = await admin_pools(session, gateway.url, scenario.admin_key)
        exposition = await get_text(session, f"{gateway.url}/metrics")
        upstream = await simulator_pool(session, sim.url)
    started = min(load.started_wall for load in loads)
    ended = max(load.ended_wall for load in loads)
    end = math.floor(ended)
    (_, tokens), *_ = rolling_sums(upstream["timeline"], end - 60, end)
    replies = [r for load in loads for r in load.replies]
    late = [r for r in replies if r.sent - started >= LEARN_S]
    run = Run(shape, replies, started, ended, late, factors, pool, exposition, upstream,
              throttled, tokens / REAL)  # fmt: skip
    _report(run)
    return run


def _report(run: Run) -> None:
    shape, late, pool, exposition, upstream = (run.shape, run.late, run.pool, run.exposition,
                                               run.upstream)  # fmt: skip
    start = run.started_wall
    statuses = Counter(r.status for r in run.replies)
    print(
        f"\n[learn] configured {CONFIGURED} tpm, real {REAL} tpm, offered {shape.steady} x real "
        f"for {shape.load_s:.0f} s + {shape.burst} x real for the first {shape.burst_s:.0f} s, "
        f"deadline {DEADLINE_S:.0f} s"
    )
    print(f"[learn] client: {len(run.replies)} requests, statuses {dict(sorted(statuses.items()))}"
          f", 429 share {statuses[429] / max(1, len(run.replies)):.1%}")  # fmt: skip
    late_429 = [r for r in late if r.status == 429]
    print(f"[learn] after the first minute: {len(late)} requests, 429 {len(late_429)} "
          f"({len(late_429) / max(1, len(late)):.1%}): the gateway's own at the deadline "
          f"{sum(1 for r in late_429 if r.gateway_own)}, Bedrock's passed on "
          f"{sum(1 for r in late_429 if not r.gateway_own)}")  # fmt: skip
    first = [r for r in run.replies if r.status == 429 and r.sent - start < LEARN_S]
    print(f"[learn] first minute: 429 {len(first)}, of which Bedrock's passed on after "
          f"{sorted({r.attempts for r in first if not r.gateway_own})} attempts "
          f"{sum(1 for r in first if not r.gateway_own)}")  # fmt: skip
    by10: dict[int, Counter[int]] = {}
    for r in run.replies:
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


def _learn(tmp_path_factory: pytest.TempPathFactory, shape: Shape) -> Run:
    scenario = Scenario(tmp_path_factory.mktemp("learned"))
    try:
        return asyncio.run(_run(scenario, shape))
    finally:
        scenario.stop_all()


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _learn(tmp_path_factory, BURST)


@pytest.fixture(scope="module")
def sustained(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _learn(tmp_path_factory, SUSTAINED)


def _learned_and_shown(run: Run) -> None:
    assert run.pool["quota_factor"] < 1
    assert run.pool["effective_tpm"] < CONFIGURED
    assert metric(run.exposition, "gateway_pool_quota_factor") < 1
    assert metric(run.exposition, "gateway_upstream_throttles_total") > 0
    assert metric(run.exposition, "gateway_upstream_throttles_total") == run.upstream["throttled"]


def _bedrock_throttles_hardly_anyone_late(run: Run) -> int:
    """After the first minute Bedrock may throttle the recovery's probes (once the learned
    quota, held for a minute, climbs back above the real one), no more: at most 1 % of the
    requests sent after it. Returns how many of Bedrock's 429s reached a client late."""
    statuses = Counter(r.status for r in run.replies)
    assert set(statuses) <= {200, 429}, statuses
    assert len(run.late) >= 200
    assert run.upstream["throttled"] - run.throttled_first_minute <= 0.01 * len(run.late)
    for reply in run.replies:
        if reply.gateway_own:  # the gateway's own refusals come with retry hints
            assert reply.retry_after_ms is not None, reply
    assert run.upstream["max_rolling_60s_tokens"] <= REAL
    return sum(1 for r in run.late if r.status == 429 and not r.gateway_own)


def test_a_burst_is_learned_from_and_then_under_one_percent_429(burst: Run) -> None:
    _learned_and_shown(burst)
    assert _bedrock_throttles_hardly_anyone_late(burst) == 0
    late_429 = sum(1 for r in burst.late if r.status == 429)
    assert late_429 < 0.01 * len(burst.late)


def test_sustained_overload_is_learned_without_undershooting(sustained: Run) -> None:
    _learned_and_shown(sustained)
    assert _bedrock_throttles_hardly_anyone_late(sustained) <= 0.01 * len(sustained.late)
    learned = [factor for second, factor in sustained.factors if second >= LEARN_S]
    assert min(learned) * CONFIGURED >= 0.90 * REAL  # never cut far below the real quota
    assert sustained.late_fill >= 0.85
