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
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.eventstream import EventStreamDecoder
from gateway.simulator.tokens import input_tokens
from tests.load.harness import (
    MODEL,
    MODEL_ID,
    Process,
    eventually,
    get_text,
    metric,
    simulator_pool,
)
from tests.load.scenarios import Scenario, gateway_settings, labelled, model, route, sim_pools

TPM = 600_000  # far above the load: only the faults (and the concurrency limit) refuse
RPM = 100_000
CONCURRENCY = 40
MAX_TOKENS = 100
OUTPUT = 40
LOAD_S = 10.0
RATE = 10.0
STREAM = "invoke-with-response-stream"

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


def kill_replica(process: Process) -> None:
    """SIGKILL the replica's whole process tree (the server and its workers), as when a pod is
    killed: nothing runs its shutdown path."""
    pids = [process.proc.pid]
    for pid in pids:  # grows as children are found
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.proc.wait(timeout=10)


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


@dataclass(frozen=True, slots=True)
class Job:
    """One request: what to send, and when the client walks away (never, by default)."""

    payload: bytes
    operation: str = "invoke"
    leave_after_s: float | None = None
    leave_after_frames: int | None = None


async def send(session: aiohttp.ClientSession, url: str, key: str, job: Job) -> str:
    """What the client saw: ``200``, ``<status> <x-amzn-ErrorType>``, how a stream ended, that
    it left, or ``no answer (<exception>)``."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    timer = asyncio.timeout(job.leave_after_s)
    try:
        async with (
            timer,
            session.post(
                f"{url}/model/{MODEL}/{job.operation}", data=job.payload, headers=headers
            ) as reply,  # fmt: skip
        ):
            if reply.status != 200 or job.operation != STREAM:
                await reply.read()
                if reply.status == 200:
                    return "200"
                # Bedrock's type may carry a namespace: "…Exception:http://internal…/"
                error_type = reply.headers.get("x-amzn-ErrorType", "").split(":")[0]
                return f"{reply.status} {error_type}"
            return await _read_stream(reply, job.leave_after_frames)
    except TimeoutError:
        if timer.expired():
            return "client left before the answer"
        return "no answer (client timeout)"
    except aiohttp.ClientError as exc:
        return f"no answer ({type(exc).__name__})"


async def _read_stream(reply: aiohttp.ClientResponse, leave_after: int | None) -> str:
    decoder, frames = EventStreamDecoder(), 0
    async for chunk in reply.content.iter_any():
        decoder.feed(chunk)
        for message in decoder:
            frames += 1
            if message.message_type == "exception":
                return f"stream ended by {message.exception_type}"
            if leave_after is not None and frames >= leave_after:
                reply.close()
                return "client left mid-stream"
    return "stream complete"


@dataclass
class Load:
    """Offers ``rate`` jobs a second for ``duration_s`` round-robin over ``urls`` (a list the
    test may change, as a load balancer drops a dead replica), whatever the answers."""

    urls: list[str]
    key: str
    job: Callable[[int], Job]
    rate: float = RATE
    duration_s: float = LOAD_S
    seen: Counter[str] | None = None
    sent: int = 0

    async def run(self) -> Counter[str]:
        self.seen = Counter()
        timeout = aiohttp.ClientTimeout(total=30)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as group:
            start = loop.time()
            for i in range(int(self.rate * self.duration_s)):
                await asyncio.sleep(max(0.0, start + i / self.rate - loop.time()))
                url = self.urls[i % len(self.urls)]
                group.create_task(self._one(session, url, i))
                self.sent += 1
        return self.seen

    async def _one(self, session: aiohttp.ClientSession, url: str, i: int) -> None:
        outcome = await send(session, url, self.key, self.job(i))
        assert self.seen is not None
        self.seen[outcome] += 1


# ---- what the buckets hold ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Buckets:
    """The pool's buckets and the tenant's usage counters in Redis."""

    window: int
    """Quota tokens in the pool's per-minute token window (the sum of its live slots)."""
    window_total: int
    """The window's running total, which admit.lua compares against the quota."""
    requests: int
    """Requests in the pool's per-minute request window: one per admission."""
    leases: int
    """Concurrency leases held and not lapsed."""
    settled_calls: int
    """Settlements that charged something (the tenant's usage hash of the day)."""
    settled_tokens: int
    """The quota tokens those settlements charged."""


async def read_buckets(redis_url: str) -> Buckets:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2, decode_responses=True)
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        keys = [key async for key in client.scan_iter(match="{bgw}:pool:*")]

        def pool(suffix: str) -> str:  # a key that is gone is empty (a lease set without leases)
            found = [k for k in keys if k.endswith(suffix)]
            return found[0] if found else f"{{bgw}}:pool:none{suffix}"

        window, total = await _window(client, pool(":tpm"), now_ms)
        requests, _ = await _window(client, pool(":rpm"), now_ms)
        leases = int(await client.zcount(pool(":conc"), f"({now_ms}", "+inf"))
        usage: dict[str, str] = {}
        async for key in client.scan_iter(match="{bgw}:usage:load:d:*"):
            usage.update(await client.hgetall(key))
    finally:
        await client.aclose()
    return Buckets(window, total, requests, leases, int(usage.get(f"n:{MODEL}", 0)),
                   int(usage.get(f"q:{MODEL}", 0)))  # fmt: skip


async def _window(client: aioredis.Redis, key: str, now_ms: int) -> tuple[int, int]:
    """(the sum of the slots still in the window, the running total) of a window bucket
    (slot_ms 250, span 60.5 s: the gateway's defaults)."""
    slots = await client.hgetall(key)
    first = now_ms // 250 - 242 + 1
    live = sum(int(v) for k, v in slots.items() if k.isdigit() and int(k) >= first)
    return live, int(slots.get("t", 0))


@dataclass(frozen=True, slots=True)
class Counts:
    """The gateways' own counters, summed over the replicas that are still up."""

    admissions: int
    upstream_errors: dict[str, float]
    retries: dict[str, float]


async def gateway_counts(session: aiohttp.ClientSession, gateways: list[Process]) -> Counts:
    admissions, errors, retries = 0, Counter[str](), Counter[str]()
    for gateway in gateways:
        exposition = await get_text(session, f"{gateway.url}/metrics")
        admissions += int(metric(exposition, "gateway_admissions_total"))
        errors.update(labelled(exposition, "gateway_upstream_errors_total", "error"))
        retries.update(labelled(exposition, "gateway_retries_total", "reason"))
    return Counts(admissions, dict(errors), dict(retries))


async def busy(session: aiohttp.ClientSession, gateway: Process, calls: int = 2) -> bool:
    """Whether ``gateway`` holds at least ``calls`` admitted calls not yet answered."""
    exposition = await get_text(session, f"{gateway.url}/metrics")
    answered = labelled(exposition, "gateway_requests_total", "route")
    admitted = metric(exposition, "gateway_admissions_total")
    return admitted - sum(n for r, n in answered.items() if r != "none") >= calls


async def settled(sim: Process, redis_url: str, within: float = 15.0) -> dict[str, Any]:
    """Once no call is in flight at the simulator nor holds a lease: the simulator's pool."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            pool = await simulator_pool(session, sim.url)
            buckets = await read_buckets(redis_url)
            if pool["in_flight"] == 0 and buckets.leases == 0:
                return pool
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled within {within:g} s: simulator in flight "
                                     f"{pool['in_flight']}, {buckets}")  # fmt: skip
            await asyncio.sleep(0.1)


def report(name: str, load: Load, buckets: Buckets, pool: dict[str, Any], counts: Counts) -> None:
    seen = load.seen or Counter()
    answered = sum(
        n for outcome, n in seen.items() if not outcome.startswith(("no answer", "client left"))
    )
    print(f"\n[{name}] sent {load.sent}, answered {answered}; "
          f"{', '.join(f'{o}: {n}' for o, n in sorted(seen.items()))}")  # fmt: skip
    print(f"[{name}] gateways: {counts.admissions} admissions, upstream errors "
          f"{counts.upstream_errors}, retries {counts.retries}")  # fmt: skip
    print(f"[{name}] Redis: window {buckets.window} tokens (total {buckets.window_total}), "
          f"{buckets.requests} requests, {buckets.leases} leases; usage: {buckets.settled_calls} "
          f"settled calls, {buckets.settled_tokens} tokens | simulator: admitted "
          f"{pool['admitted']}, settled {pool['settled']}, in flight {pool['in_flight']}, "
          f"tokens {pool['tokens']}, throttled {pool['throttled']}; window - simulator tokens "
          f"{buckets.window - pool['tokens']}")  # fmt: skip


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

    load = Load([g.url for g in gateways], scenario.keys["load"], job)
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

    load = Load([g.url for g in gateways], scenario.keys["load"], job)
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

    load = Load([g.url for g in gateways], scenario.keys["load"], job)
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
    samples: list[tuple[float, int, int]] = []  # (seconds since the kill, leases, in flight)
    loop = asyncio.get_running_loop()
    killed = loop.time() + kill_at

    async def watch(session: aiohttp.ClientSession, until: asyncio.Event) -> None:
        while not until.is_set():
            pool = (await sim_pools(session, sim.url)).get(MODEL_ID, {"in_flight": 0})
            leases = (await read_buckets(scenario.redis_url)).leases
            samples.append((loop.time() - killed, leases, pool["in_flight"]))
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(session, done))
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(kill_at)  # the fault's moment in the load, not a wait for readiness
        await eventually(partial(busy, session, gateways[0]), 5, "gateway0 with calls in flight")
        kill_replica(gateways[0])
        killed = loop.time()
        urls.remove(gateways[0].url)  # the load balancer stops sending to it
        seen = await asyncio.wait_for(runner, 60)
        done.set()
        await watcher
        pool = await settled(sim, scenario.redis_url)
        buckets = await read_buckets(scenario.redis_url)
        counts = await gateway_counts(session, gateways[1:])
    report("sigkill", load, buckets, pool, counts)

    dead = buckets.requests - buckets.settled_calls  # admitted, never settled: its leases
    held = [flight for t, _, flight in samples if 0.5 < t < lease_ttl_s - 0.5]
    after = [flight for t, _, flight in samples if lease_ttl_s + 0.5 < t]
    print(f"[sigkill] the dead replica's unsettled calls {dead}; simulator in flight at most "
          f"{max(held)} while their leases held (max_concurrency {concurrency}), "
          f"{max(after)} once they lapsed ({lease_ttl_s:g} s); leases at most "
          f"{max(leases for _, leases, _ in samples)}")  # fmt: skip
    lost = seen["no answer (ServerDisconnectedError)"] + seen["no answer (ClientOSError)"]
    assert set(seen) <= {"200", "429 ThrottlingException", "no answer (ServerDisconnectedError)",
                         "no answer (ClientOSError)"}, seen  # fmt: skip
    assert 2 <= dead <= lost  # it died with calls in flight
    assert seen["200"] >= 0.5 * load.sent
    assert max(leases for _, leases, _ in samples) <= concurrency
    assert max(flight for _, _, flight in samples) <= concurrency  # never over-admitted
    assert max(held) <= concurrency - dead  # the dead replica's leases still count...
    assert max(after) == concurrency  # ...until they lapse: the survivors use them again
    assert pool["throttled"] == 0
    assert buckets.leases == 0
    assert pool["in_flight"] == 0
    assert pool["admitted"] == pool["settled"] == buckets.requests
    # Bedrock finished and charged the dead replica's calls; nobody settled them, so their
    # reservations stay in the window until it slides past them: the safe side.
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

    load = Load([g.url for g in gateways], scenario.keys["load"], job)
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
