"""The fault suite's client and its readings of the buckets (tests/load/test_faults.py).

``Load`` offers jobs at a constant rate round-robin over gateway replicas and counts what each
client saw: an answer's status and Bedrock error type, how a stream ended, or that the client
walked away (``Job.leave_after_s``, ``leave_after_frames``). ``read_buckets`` reads what Redis
holds for the pool and the tenant; ``settled`` waits until nothing is in flight any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateway.eventstream import EventStreamDecoder
from tests.load.harness import MODEL, TENANT, Process, get_text, metric, simulator_pool
from tests.load.scenarios import labelled

STREAM = "invoke-with-response-stream"


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


# ---- the client ---------------------------------------------------------------------------


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
    rate: float
    duration_s: float
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
        usage: dict[Any, Any] = {}
        async for key in client.scan_iter(match=f"{{bgw}}:usage:{TENANT}:d:*"):
            usage.update(await client.hgetall(key))
    finally:
        await client.aclose()
    return Buckets(window, total, requests, leases, int(usage.get(f"n:{MODEL}", 0)),
                   int(usage.get(f"q:{MODEL}", 0)))  # fmt: skip


async def read_leases(redis_url: str) -> dict[str, int]:
    """The pool's concurrency leases not yet lapsed: request id -> the Redis time (ms) it lapses."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2, decode_responses=True)
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        keys = [key async for key in client.scan_iter(match="{bgw}:pool:*:conc")]
        pool = keys[0] if keys else "{bgw}:pool:none:conc"
        members: list[Any] = await client.zrangebyscore(pool, f"({now_ms}", "+inf", withscores=True)
    finally:
        await client.aclose()
    return {member: int(score) for member, score in members}


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
    outcomes: dict[str, float]
    """``gateway_requests_total`` by outcome."""
    withdrawn: int = 0
    """Admissions handed back because their waiter had gone as they came (never sent)."""


async def gateway_counts(session: aiohttp.ClientSession, gateways: list[Process]) -> Counts:
    admissions, errors, retries, outcomes = 0, Counter[str](), Counter[str](), Counter[str]()
    withdrawn = 0
    for gateway in gateways:
        exposition = await get_text(session, f"{gateway.url}/metrics")
        admissions += int(metric(exposition, "gateway_admissions_total"))
        withdrawn += int(metric(exposition, "gateway_admissions_withdrawn_total"))
        errors.update(labelled(exposition, "gateway_upstream_errors_total", "error"))
        retries.update(labelled(exposition, "gateway_retries_total", "reason"))
        outcomes.update(labelled(exposition, "gateway_requests_total", "outcome"))
    return Counts(admissions, dict(errors), dict(retries), dict(outcomes), withdrawn)


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
