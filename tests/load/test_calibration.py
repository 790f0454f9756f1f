"""P1 and P2 against an upstream that counts input tokens differently from our estimator.

Real Bedrock counts with each model's own tokenizer. Here the simulator counts 5 % more (then
10 % fewer) input tokens than its own tokenizer, to which the estimator's weights were fitted,
and three gateway processes on one Redis offer it 3x its quota. The gateway must learn the
real count from the answers (the calibration factor), so the upstream throttles nothing, no
rolling minute holds more than the quota, and over-estimation does not waste it. A fourth
replica started mid-run must scale by the learned factor before its first request. Run with
``-s`` to see the factor over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import cost
from gateway.simulator.tokens import input_tokens
from tests.load.harness import (
    Launcher,
    OpenLoop,
    Process,
    describe,
    get_text,
    make_bodies,
    metric,
    rate_for,
    rolling_sums,
    simulator_pool,
)
from tests.servers import RedisServer

TPM = 120_000
REPLICAS = 3
LOAD_S = 95.0
OVERLOAD = 3.3
LATE_S = 40.0  # when the fourth replica starts
SKIP_S = 10  # the first seconds, while the idle pool fills, are not judged for P2
FILL = 0.95
QUEUE_WAIT_S = 10.0
MAX_OUTPUT = 4096  # the model maximum the harness's gateway config leaves at its default

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


@dataclass(frozen=True)
class Run:
    scale: float
    load: OpenLoop
    pool: dict[str, Any]
    expositions: list[str]
    fills: list[float]
    factors: list[tuple[float, float]]
    """(seconds into the load, replica 0's factor), every 5 s."""
    late: tuple[float, float]
    """(the fourth replica's factor once ready, before any request; replica 0's just then)."""
    expected: float
    """The 0.98 quantile of true / estimate over the bodies, computed here."""


def factor_of(exposition: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "gateway_estimate_calibration_factor" and (
                sample.labels["family"] == "invoke"
            ):
                return float(sample.value)
    raise AssertionError("no calibration factor in /metrics")


def expected_factor(bodies: list[Any], scale: float) -> float:
    ratios = []
    for body in bodies:
        document = orjson.loads(body.raw)
        true = max(1, round(input_tokens("invoke", document) * scale))
        estimate = cost.estimate("invoke", document, default_max_tokens=MAX_OUTPUT).input_tokens
        ratios.append(true / estimate)
    ratios.sort()
    return ratios[math.ceil(0.98 * len(ratios)) - 1]


async def _sample_factors(url: str, started: float, into: list[tuple[float, float]],
                          stop: asyncio.Event) -> None:  # fmt: skip
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            into.append((time.monotonic() - started, factor_of(await get_text(session, url))))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)


async def _run(scale: float, launcher: Launcher, redis_url: str) -> Run:
    sim = launcher.simulator(mode="rolling", tpm=TPM, counting={"scale": scale})
    settings: dict[str, Any] = {
        "upstream_url": sim.url,
        "redis_url": redis_url,
        "tpm": TPM,
        "queue": {"max_wait_s": QUEUE_WAIT_S},
        "replicas": REPLICAS + 1,
    }
    gateways = launcher.gateways(REPLICAS, **settings)
    rate = rate_for(make_bodies(2000), TPM, OVERLOAD)
    bodies = make_bodies(math.ceil(rate * LOAD_S))
    load = OpenLoop([g.url for g in gateways], launcher.key, bodies, rate=rate, duration_s=LOAD_S,
                    max_in_flight=400, timeout_s=QUEUE_WAIT_S + 15)  # fmt: skip
    started, stop = time.monotonic(), asyncio.Event()
    factors: list[tuple[float, float]] = []
    sampler = asyncio.create_task(
        _sample_factors(f"{gateways[0].url}/metrics", started, factors, stop)
    )
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(LATE_S)  # the load runs meanwhile: this is the schedule, not a wait
    (late,) = await asyncio.to_thread(launcher.gateways, 1, first=REPLICAS, **settings)
    late_factors = await _late_factors(late, gateways[0])
    await runner
    stop.set()
    await sampler
    async with aiohttp.ClientSession() as session:
        pool = await simulator_pool(session, sim.url)
        expositions = [await get_text(session, f"{g.url}/metrics") for g in gateways]
    first, last = math.ceil(load.started_wall) + SKIP_S, math.floor(load.ended_wall)
    fills = [t / TPM for _, t in rolling_sums(pool["timeline"], first, last)]
    run = Run(scale, load, pool, expositions, fills, factors, late_factors,
              expected_factor(bodies, scale))  # fmt: skip
    _report(run)
    return run


async def _late_factors(late: Process, reference: Process) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session:
        mine = factor_of(await get_text(session, f"{late.url}/metrics"))
        theirs = factor_of(await get_text(session, f"{reference.url}/metrics"))
        served = metric(await get_text(session, f"{late.url}/metrics"), "gateway_requests_total")
    assert served == 0, "the fourth replica is read before it serves anything"
    return mine, theirs


def _report(run: Run) -> None:
    tag = f"[count x{run.scale}]"
    pool = run.pool
    print(f"\n{tag} client: {describe(run.load)}")
    print(f"{tag} simulator: throttled {pool['throttled']}, max_rolling_60s_tokens "
          f"{pool['max_rolling_60s_tokens']} (TPM {TPM}), admitted {pool['admitted']}")  # fmt: skip
    print(f"{tag} fill of {len(run.fills)} rolling minutes from {SKIP_S} s: min "
          f"{min(run.fills):.1%}, mean {sum(run.fills) / len(run.fills):.1%}")  # fmt: skip
    series = " ".join(f"{s:.0f}s:{f:.3f}" for s, f in run.factors)
    print(f"{tag} factor (expected q98 of true/estimate {run.expected:.3f}): {series}")
    print(f"{tag} fourth replica at {LATE_S:.0f} s: factor {run.late[0]:.3f} before its first "
          f"request (replica 0: {run.late[1]:.3f})")  # fmt: skip


@pytest.fixture(scope="module", params=[1.05, 0.9], ids=["5pct-more", "10pct-fewer"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    scale: float = request.param
    redis = RedisServer().start()
    launcher = Launcher(tmp_path_factory.mktemp(f"count{scale}"))
    try:
        return asyncio.run(_run(scale, launcher, redis.url))
    finally:
        launcher.stop_all()
        redis.stop()


def test_the_upstream_throttles_nothing_and_sees_at_most_the_quota(run: Run) -> None:
    assert run.pool["throttled"] == 0, run.pool["throttled_by"]
    assert run.pool["max_rolling_60s_tokens"] <= TPM
    assert sum(metric(e, "gateway_upstream_throttles_total") for e in run.expositions) == 0
    assert set(run.load.statuses()) <= {200, 429}, run.load.statuses()


def test_the_quota_is_filled(run: Run) -> None:
    assert len(run.fills) >= 20
    assert sum(run.fills) / len(run.fills) >= FILL


def test_the_factor_converges_on_the_upstreams_count(run: Run) -> None:
    settled = [f for s, f in run.factors if s >= 30]
    assert settled
    for found in settled:  # one bin (1 %) above the quantile, or the next sample's
        assert run.expected * 0.985 <= found <= run.expected * 1.03, (found, run.expected)


def test_a_new_replica_scales_by_the_learned_factor_from_its_first_request(run: Run) -> None:
    mine, theirs = run.late
    assert mine == pytest.approx(theirs, rel=0.011)
    assert mine == pytest.approx(run.expected, rel=0.03)
