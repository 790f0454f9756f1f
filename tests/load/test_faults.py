"""The fault suite: what callers see, and what the buckets hold, when things break under load.

Real processes: ``bedrock-gateway serve`` replicas on one redis-server, the simulator upstream.
Each test offers a short bounded load with a fault in it: the upstream answering 5xx, stalling
past the gateway's read timeout or closing connections mid-response; a replica killed with
SIGKILL; clients leaving before their answer or mid-stream. Each prints what the clients saw
(requests sent, answered, errors by type) and, once the load has settled, checks the buckets:

* nothing leaked: no lease left (a dead replica's lapse after ``lease_ttl_s``), no call in
  flight at the simulator, and the pool's per-minute window holds exactly the quota tokens
  that settlements counted in the tenant's usage (written in the same round trip as each
  correction): a call never settled leaves its reservation in the window, one settled twice
  its correction twice;
* nothing double-charged: the window holds what the simulator charged, plus the reservation
  of each call whose outcome the gateway never learned (a timeout, a connection broken
  mid-answer), which it keeps in full: the safe side;
* one request per admission in the requests-per-minute window.

Redis going away is tests/load/test_store_outage.py. Run with ``-s`` for the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.simulator.tokens import input_tokens
from tests.load.faults import (
    STREAM,
    Buckets,
    Job,
    Load,
    busy,
    gateway_counts,
    kill_replica,
    read_buckets,
    read_leases,
    report,
    settled,
)
from tests.load.harness import MODEL, MODEL_ID, Process, eventually
from tests.load.scenarios import Scenario, gateway_settings, model, route, sim_pools

TPM = 600_000  # far above the load: only the faults (and the concurrency limit) refuse
RPM = 100_000
CONCURRENCY = 40
MAX_TOKENS = 100
OUTPUT = 40
LOAD_S = 10.0
RATE = 10.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


# ---- processes ----------------------------------------------------------------------------


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    scenario = Scenario(tmp_path)
    try:
        yield scenario
    finally:
        scenario.stop_all()


def start(
    scenario: Scenario, replicas: int, *, concurrency: int = CONCURRENCY,
    upstream: dict[str, Any] | None = None, limiter: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None, **latency: float,
) -> tuple[Process, list[Process]]:  # fmt: skip
    """The simulator and ``replicas`` gateways on the scenario's Redis: one model, one route
    with a per-minute token and request window and a concurrency limit."""
    sim = scenario.sim(mode="rolling", tpm=TPM, **latency)
    pool = route(TPM, rpm=RPM, max_concurrency=concurrency)

    def build(port: int) -> dict[str, Any]:
        return gateway_settings(
            port, upstream_url=sim.url, redis_url=scenario.redis_url,
            models={MODEL: model(MODEL_ID, pool)}, tenants=scenario.tenants(),
            upstream=upstream, limiter={"replicas": replicas, **(limiter or {})}, queue=queue,
        )  # fmt: skip

    return sim, scenario.replicas(replicas, build)


# ---- requests -----------------------------------------------------------------------------


def body(i: int, *directives: str, output: int = OUTPUT) -> bytes:
    """A distinct InvokeModel body (``fail_times`` counts by body) asking for ``output``."""
    tags = "".join(f" [sim:{d}]" for d in (f"output_tokens={output}", *directives))
    document = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": f"Request {i} of the fault suite.{tags}"}],
    }
    return orjson.dumps(document)


INPUT = input_tokens("invoke", orjson.loads(body(1000, "reset=1", "fail_times=1")))
"""About the simulator's input count of each body (they differ by a token or two)."""


def assert_consistent(buckets: Buckets, pool: dict[str, Any], admissions: int) -> None:
    """Nothing leaked, nothing settled twice, one request counted per admission."""
    assert buckets.leases == 0
    assert pool["in_flight"] == 0
    assert pool["admitted"] == pool["settled"]
    assert buckets.window == buckets.window_total
    assert buckets.window == buckets.settled_tokens
    assert buckets.requests == admissions
    assert pool["throttled"] == 0


async def run_load(load: Load) -> Counter[str]:
    return await asyncio.wait_for(load.run(), LOAD_S + 40)


# ---- the upstream's faults ----------------------------------------------------------------


async def test_upstream_5xx_is_retried_refunded_and_passed_on(scenario: Scenario) -> None:
    sim, gateways = start(scenario, 2)

    def job(i: int) -> Job:
        kind = i % 8
        if kind == 0:  # fails every attempt
            return Job(body(i, "status=503"))
        if kind == 1:  # fails once: the retry answers
            return Job(body(i, "status=500", "fail_times=1"))
        if kind == 2:
            return Job(body(i, "status=503"), STREAM)
        return Job(body(i), STREAM if kind == 3 else "invoke")

    load = Load([g.url for g in gateways], scenario.keys["load"], job, RATE, LOAD_S)
    seen = await run_load(load)
    pool = await settled(sim, scenario.redis_url)
    buckets = await read_buckets(scenario.redis_url)
    async with aiohttp.ClientSession() as session:
        counts = await gateway_counts(session, gateways)
    report("5xx", load, buckets, pool, counts)

    kinds = Counter(i % 8 for i in range(load.sent))
    failing = kinds[0] + kinds[2]  # every attempt failed
    assert seen["503 ServiceUnavailableException"] == failing
    assert seen["stream complete"] == kinds[3]
    assert seen["200"] == load.sent - failing - kinds[3]
    assert counts.upstream_errors.get("http_5xx") == 3 * failing + kinds[1]
    assert counts.admissions == pool["admitted"] + counts.upstream_errors["http_5xx"]
    assert_consistent(buckets, pool, counts.admissions)
    # A 5xx answer is refunded in full: the window holds exactly what Bedrock charged.
    assert buckets.window == pool["tokens"]
    assert buckets.settled_calls == pool["settled"]


async def test_a_stalled_upstream_times_out_and_keeps_its_reservation(
    scenario: Scenario,
) -> None:
    read_timeout_s = 1.0
    sim, gateways = start(scenario, 2, upstream={"read_timeout_s": read_timeout_s})

    def job(i: int) -> Job:  # one in four stalls past the read timeout
        return Job(body(i, "ttft_ms=2500") if i % 4 == 0 else body(i))

    load = Load([g.url for g in gateways], scenario.keys["load"], job, RATE, LOAD_S)
    seen = await run_load(load)
    pool = await settled(sim, scenario.redis_url)
    buckets = await read_buckets(scenario.redis_url)
    async with aiohttp.ClientSession() as session:
        counts = await gateway_counts(session, gateways)
    report("stall", load, buckets, pool, counts)

    stalled = sum(1 for i in range(load.sent) if i % 4 == 0)
    assert seen["408 ModelTimeoutException"] == stalled
    assert seen["200"] == load.sent - stalled
    assert counts.upstream_errors.get("timeout") == stalled
    assert counts.admissions == pool["admitted"] == load.sent  # a timeout is not retried
    assert_consistent(buckets, pool, counts.admissions)
    # Bedrock charged the stalled calls in full (it generated them); the gateway, which never
    # learned their usage, keeps their reservations: input estimate + max_tokens.
    kept = buckets.window - pool["tokens"]
    assert stalled * (MAX_TOKENS - OUTPUT - INPUT) <= kept <= stalled * (MAX_TOKENS + 2 * INPUT)


async def test_connections_reset_mid_answer_are_retried_or_reported(
    scenario: Scenario,
) -> None:
    sim, gateways = start(scenario, 2, token_ms=5.0)

    def job(i: int) -> Job:
        kind = i % 8
        if kind == 0:  # every attempt cut mid-body
            return Job(body(i, "reset=1"))
        if kind == 1:  # the first attempt cut: the retry answers
            return Job(body(i, "reset=1", "fail_times=1"))
        if kind == 2:  # a stream cut half-way, after frames went to the client
            return Job(body(i, "reset=1"), STREAM)
        return Job(body(i), STREAM if kind == 3 else "invoke")

    load = Load([g.url for g in gateways], scenario.keys["load"], job, RATE, LOAD_S)
    seen = await run_load(load)
    pool = await settled(sim, scenario.redis_url)
    buckets = await read_buckets(scenario.redis_url)
    async with aiohttp.ClientSession() as session:
        counts = await gateway_counts(session, gateways)
    report("reset", load, buckets, pool, counts)

    kinds = Counter(i % 8 for i in range(load.sent))
    assert seen["503 ServiceUnavailableException"] == kinds[0]
    assert seen["stream ended by serviceUnavailableException"] == kinds[2]
    assert seen["stream complete"] == kinds[3]
    assert seen["200"] == load.sent - kinds[0] - kinds[2] - kinds[3]
    cut_plain = 3 * kinds[0] + kinds[1]  # three attempts of kind 0, one of kind 1
    assert counts.upstream_errors.get("connection") == cut_plain + kinds[2]
    assert counts.admissions == pool["admitted"] == load.sent + 2 * kinds[0] + kinds[1]
    assert_consistent(buckets, pool, counts.admissions)
    # A plain answer cut mid-body keeps its reservation (its usage never arrived); a stream
    # cut half-way is settled on what it reported and delivered, which Bedrock charged too.
    kept = buckets.window - pool["tokens"]
    low, high = MAX_TOKENS - OUTPUT - INPUT, MAX_TOKENS + 2 * INPUT
    assert cut_plain * low <= kept <= cut_plain * high


# ---- a replica dies -----------------------------------------------------------------------


async def test_a_replica_killed_mid_load_leaves_leases_that_lapse(scenario: Scenario) -> None:
    concurrency, lease_ttl_s, kill_at = 6, 5.0, 4.0
    sim, gateways = start(
        scenario, 3, concurrency=concurrency, limiter={"lease_ttl_s": lease_ttl_s},
        queue={"max_wait_s": 3}, ttft_ms=300, token_ms=2.0,
    )  # fmt: skip
    urls = [g.url for g in gateways]
    load = Load(urls, scenario.keys["load"], lambda i: Job(body(i)), rate=20.0, duration_s=12.0)
    samples: list[tuple[int, int, dict[str, int]]] = []  # (ms, in flight, leases -> lapse ms)

    async def watch(session: aiohttp.ClientSession, until: asyncio.Event) -> None:
        while not until.is_set():
            at = time.time_ns() // 1_000_000  # the clock Redis's TIME reads: the same host
            pool = (await sim_pools(session, sim.url)).get(MODEL_ID, {"in_flight": 0})
            samples.append((at, pool["in_flight"], await read_leases(scenario.redis_url)))
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(session, done))
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(kill_at)  # the fault's moment in the load, not a wait for readiness
        # the victim: the first replica seen with calls in flight (the replicas' shares of the
        # leases are uneven, and one may hold none for seconds)
        victims: list[Process] = []

        async def one_busy() -> bool:
            victims.extend([g for g in gateways if await busy(session, g)][:1])
            return bool(victims)

        await eventually(one_busy, 6, "a replica with calls in flight")
        victim = victims[0]
        kill_replica(victim)
        killed = time.time_ns() // 1_000_000
        urls.remove(victim.url)  # the load balancer stops sending to it
        seen = await asyncio.wait_for(runner, 60)
        done.set()
        await watcher
        pool = await settled(sim, scenario.redis_url)
        buckets = await read_buckets(scenario.redis_url)
        counts = await gateway_counts(session, [g for g in gateways if g is not victim])
    report("sigkill", load, buckets, pool, counts)

    # admitted, never settled: its leases (a survivor's admission handed back as its waiter
    # timed out is settled on nothing, so it adds no usage: not the dead replica's)
    dead = buckets.requests - buckets.settled_calls - counts.withdrawn
    # A lease the dead replica held is never released, so it is still there in the last second
    # of its life; a survivor's lease lives as long as its call (~0.4 s of the 5 s).
    orphans = {m: lapse for _, _, leases in samples for m, lapse in leases.items()
               if any(m in later and at >= lapse - 1000 for at, _, later in samples)}  # fmt: skip
    first_lapse, last_lapse = min(orphans.values()), max(orphans.values())

    def live_orphans(at: int) -> int:  # the dead replica's leases that count at ``at``
        return sum(1 for lapse in orphans.values() if lapse > at + 200)

    after_kill = [(at, flight) for at, flight, _ in samples if at > killed + 500]
    held = [flight for at, flight in after_kill if at + 200 < first_lapse]
    after = [flight for at, flight in after_kill if at > last_lapse + 500]
    print(f"[sigkill] the dead replica's unsettled calls {dead}, leases {len(orphans)} lapsing "
          f"{first_lapse - killed} - {last_lapse - killed} ms after the kill; simulator in "
          f"flight at most {max(held)} while they all held (max_concurrency {concurrency}), "
          f"{max(after)} once they lapsed; leases at most "
          f"{max(len(leases) for _, _, leases in samples)}")  # fmt: skip
    lost = seen["no answer (ServerDisconnectedError)"] + seen["no answer (ClientOSError)"]
    assert set(seen) <= {"200", "429 ThrottlingException", "no answer (ServerDisconnectedError)",
                         "no answer (ClientOSError)"}, seen  # fmt: skip
    assert 2 <= dead <= lost  # it died with calls in flight
    assert len(orphans) == dead
    assert seen["200"] >= 0.5 * load.sent
    assert max(len(leases) for _, _, leases in samples) <= concurrency
    assert max(flight for _, flight, _ in samples) <= concurrency  # never over-admitted
    # The dead replica's leases still count until each lapses...
    assert all(flight <= concurrency - live_orphans(at) for at, flight in after_kill)
    assert max(held) <= concurrency - dead
    assert max(after) == concurrency  # ...and then the survivors use them again
    assert pool["throttled"] == 0
    assert buckets.leases == 0
    assert pool["in_flight"] == 0
    assert pool["admitted"] == pool["settled"]
    # admitted as it died, never sent
    assert 0 <= buckets.requests - counts.withdrawn - pool["admitted"] <= dead
    # Bedrock finished and charged the dead replica's calls that reached it; nobody settled
    # them, so their reservations stay in the window until it slides past them: the safe side.
    unsettled = buckets.window - buckets.settled_tokens
    assert dead * MAX_TOKENS <= unsettled <= dead * (MAX_TOKENS + 3 * INPUT)


# ---- clients walk away --------------------------------------------------------------------


async def test_clients_leaving_mid_request_and_mid_stream(scenario: Scenario) -> None:
    sim, gateways = start(scenario, 2, ttft_ms=400, token_ms=10.0)

    def job(i: int) -> Job:
        kind = i % 4
        if kind == 0:  # gone before the first byte of the answer
            return Job(body(i), leave_after_s=0.2)
        if kind == 1:
            return Job(body(i), STREAM, leave_after_s=0.2)
        if kind == 2:  # gone after a few frames
            return Job(body(i), STREAM, leave_after_frames=3)
        return Job(body(i))

    load = Load([g.url for g in gateways], scenario.keys["load"], job, RATE, LOAD_S)
    seen = await run_load(load)
    pool = await settled(sim, scenario.redis_url)
    buckets = await read_buckets(scenario.redis_url)
    async with aiohttp.ClientSession() as session:
        counts = await gateway_counts(session, gateways)
    report("client gone", load, buckets, pool, counts)

    kinds = Counter(i % 4 for i in range(load.sent))
    assert seen["client left before the answer"] == kinds[0] + kinds[1]
    assert seen["client left mid-stream"] == kinds[2]
    assert seen["200"] == kinds[3]
    assert counts.admissions == pool["admitted"]
    assert_consistent(buckets, pool, counts.admissions)
    # A plain call whose client left is still answered upstream and settled on its usage. A
    # stream the client left before its first frame keeps its reservation (nothing of its
    # usage is known); one left mid-stream is settled on the input Bedrock reported and the
    # output delivered, while Bedrock may have sent a few frames more before it saw the close.
    kept = buckets.window - pool["tokens"]
    low, high = (
        kinds[1] * (MAX_TOKENS - INPUT) - kinds[2] * OUTPUT,
        kinds[1] * (MAX_TOKENS + 2 * INPUT),
    )
    assert low <= kept <= high


async def test_clients_leaving_while_queued_are_not_sent_upstream(scenario: Scenario) -> None:
    sim, gateways = start(scenario, 2, concurrency=2, queue={"max_wait_s": 20}, ttft_ms=1000)

    def job(i: int) -> Job:  # four in five give up after 0.3 s, most of them while queued
        return Job(body(i)) if i % 5 == 0 else Job(body(i), leave_after_s=0.3)

    load = Load([g.url for g in gateways], scenario.keys["load"], job, RATE, 5.0)
    seen = await run_load(load)
    pool = await settled(sim, scenario.redis_url)
    buckets = await read_buckets(scenario.redis_url)
    async with aiohttp.ClientSession() as session:
        counts = await gateway_counts(session, gateways)
    report("gone while queued", load, buckets, pool, counts)

    stayed = seen["200"]
    left = seen["client left before the answer"]
    assert (stayed, left) == (load.sent // 5, load.sent - load.sent // 5)
    # Only the calls admitted before their clients left went upstream (once admitted, a call
    # is answered upstream and settled on its usage); the others left the queue unserved (one
    # admitted in the very moment its client left is handed back: withdrawn, never sent).
    sent = counts.admissions - counts.withdrawn
    assert sent == pool["admitted"] <= stayed + 0.3 * left
    assert_consistent(buckets, pool, counts.admissions)
    assert buckets.window == pool["tokens"]
    # Each one that left the queue is counted once as client_gone; those admitted first were
    # answered (to nobody) and count as what Bedrock said.
    assert counts.outcomes.get("client_gone", 0) == left - (sent - stayed)
    assert counts.outcomes.get("success", 0) == sent
