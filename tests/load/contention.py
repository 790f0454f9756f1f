"""One contended run shared by ``test_fairness.py`` and ``test_replicas_queue.py``.

Three gateway processes on one Redis, two models with a pool of TPM each (the simulator
enforces the same quotas, ``rolling``), four tenants with their own keys. On the first model
tenants ``a`` and ``b`` (weights 1 and 1), on the second ``c`` and ``d`` (weights 3 and 1),
each offering twice the pool's quota for LOAD_S seconds, round-robin over the replicas, with
a DEADLINE_S queue deadline. The two pairs load separate pools and queues, so they run at once.

Under the rolling minute an overloaded pool admits in bursts: the idle pool fills in its
first FILL_S seconds (four times the quota offered, no contention), then capacity returns
only as those admissions leave the window, 60.5 s later, and as settlements refund what
requests reserved but did not use. Requests offered in between wait in the queues (in every
replica), so every admission after the first FILL_S seconds is a contended one: fair shares
are counted over the admissions from WARM_S to LOAD_S (by admission time: send time + the
gateway's x-gateway-queue-ms). Redis' command count is sampled while requests wait (WARM_S
to BLOCKED_END_S: nothing but refunds admits anything) and while capacity returns (to LOAD_S).

Both tenants of a pair send the same bodies in the same order at the same rate (the same
offered tokens); the second starts half a per-replica period after the first, so that on
every replica their requests alternate evenly.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.load.harness import MODEL, MODEL_ID, Process, get_text, make_bodies, metric, rate_for
from tests.load.scenarios import (
    OTHER_MODEL,
    OTHER_MODEL_ID,
    Loop,
    Scenario,
    gateway_settings,
    model,
    redis_commands,
    route,
    sim_pools,
)

TPM = 60_000
REPLICAS = 3
OFFER = 2.0  # each tenant offers this many times the pool's quota
LOAD_S = 80.0
DEADLINE_S = 15.0
FILL_S = 60 / (2 * OFFER)  # four times the quota offered: the idle window is full after 15 s
WARM_S = 20.0
BLOCKED_END_S = 58.0
WEIGHTS = {"a": 1.0, "b": 1.0, "c": 3.0, "d": 1.0}
PAIRS = {MODEL: ("a", "b"), OTHER_MODEL: ("c", "d")}


@dataclass
class Contended:
    loads: dict[str, Loop]
    """Each tenant's client."""
    pools: dict[str, dict[str, Any]]
    """The simulator's pools by model id, after the run."""
    expositions: list[str]
    """Each replica's /metrics after the run."""
    commands: list[tuple[float, int, dict[str, int]]] = field(default_factory=list)
    """(seconds into the load, total_commands_processed, calls per command) samples."""
    depths: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the load, requests waiting in all replicas' queues) samples."""
    started_wall: float = 0.0


async def _sampler(
    redis_url: str, gateways: list[Process], run: Contended, start: float
) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    marks = [WARM_S, 30.0, 40.0, 50.0, BLOCKED_END_S, LOAD_S]
    async with aiohttp.ClientSession() as session:
        for mark in marks:
            await asyncio.sleep(max(0.0, start + mark - loop.time()))
            total, calls = await redis_commands(redis_url)
            at = loop.time() - start
            run.commands.append((at, total, calls))
            depth = 0.0
            for gateway in gateways:
                depth += metric(await get_text(session, f"{gateway.url}/metrics"),
                                "gateway_queue_depth")  # fmt: skip
            run.depths.append((at, depth))


async def _offset(load: Loop, delay: float) -> Loop:
    """Start ``load`` after ``delay`` seconds."""
    await asyncio.sleep(delay)
    return await load.run()


async def _run(scenario: Scenario) -> Contended:
    pools = [{"model": MODEL_ID, "tpm": TPM}, {"model": OTHER_MODEL_ID, "tpm": TPM}]
    sim = scenario.sim(mode="rolling", tpm=TPM, pools=pools)
    models = {MODEL: model(MODEL_ID, route(TPM)), OTHER_MODEL: model(OTHER_MODEL_ID, route(TPM))}
    tenants = scenario.tenants(**{name: {"weight": w} for name, w in WEIGHTS.items()})
    gateways = scenario.replicas(REPLICAS, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=tenants, queue={"max_wait_s": DEADLINE_S},
        limiter={"replicas": REPLICAS}))  # fmt: skip
    # output = max_tokens: what a request reserves is what it is charged (up to the input
    # estimate), so the shares the queue gives in reserved tokens show in settled tokens.
    # Both tenants of a pair send the same bodies in the same order: the same offered tokens.
    rate = rate_for(make_bodies(2000, max_tokens=300, output=(300, 300)), TPM, OFFER)
    bodies = make_bodies(math.ceil(rate * LOAD_S), seed=5, max_tokens=300, output=(300, 300))
    urls = [g.url for g in gateways]
    loads = {tenant: Loop(urls, scenario.keys[tenant], bodies, rate=rate, duration_s=LOAD_S,
                          max_in_flight=1000, timeout_s=DEADLINE_S + 15, model=name)
             for name, pair in PAIRS.items() for tenant in pair}  # fmt: skip
    run = Contended(loads, {}, [])
    loop = asyncio.get_running_loop()
    start = loop.time()
    sampler = asyncio.create_task(_sampler(scenario.redis_url, gateways, run, start))
    period = REPLICAS / rate
    await asyncio.gather(*(_offset(load, n % 2 * period / 2)
                           for n, load in enumerate(loads.values())))  # fmt: skip
    await sampler
    run.started_wall = min(load.started_wall for load in loads.values())
    async with aiohttp.ClientSession() as session:
        run.pools = await sim_pools(session, sim.url)
        run.expositions = [await get_text(session, f"{g.url}/metrics") for g in gateways]
    return run


_DONE: list[Contended | Exception] = []


def contended() -> Contended:
    """The run, once per test session, whichever test module asks first (a failed run is not
    tried again)."""
    if not _DONE:
        with tempfile.TemporaryDirectory(prefix="gw-contended-") as workdir:
            scenario = Scenario(Path(workdir), tenants=WEIGHTS)
            try:
                _DONE.append(asyncio.run(_run(scenario)))
            except Exception as exc:
                _DONE.append(exc)
            finally:
                scenario.stop_all()
    if isinstance(_DONE[0], Exception):
        raise _DONE[0]
    return _DONE[0]
