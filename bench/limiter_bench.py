"""The Redis limiter: admissions per second for one process, and Redis round trips per request.

Two measurements, each against its own private redis-server on a free loopback port:

* ``store``: ``RedisStore.admit`` then ``settle`` called directly, as the data plane calls them,
  from K coroutines on uvloop for a fixed number of operations. Each plan is what the gateway
  builds for a tenant with a TPM budget and a route with TPM and RPM (three window buckets),
  with limits high enough that every request is admitted. Reports admit + settle pairs per
  second, the latency of each call, and the CPU per pair of this process and of redis-server
  (``INFO cpu``).
* ``gateway``: ``bedrock-gateway serve`` (one process) in front of the simulator, limiter on
  Redis. After a warm-up (scripts loaded), ``CONFIG RESETSTAT``, M requests through the
  gateway, then ``INFO commandstats``: calls per request of each command. Three runs: with room
  (every request admitted and settled), over quota with the queue off (most refused at once),
  and over quota with requests waiting up to 1 s in the queue (its re-checks cost calls too).

Usage::

    .venv/bin/python bench/limiter_bench.py [--ops 20000] [--rounds 3]
        [--concurrency 1,8,32,128] [--requests 1000] [--queued 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.catalog import Catalog
from gateway.config import LimiterConfig, parse_config
from gateway.limiter.core import Admitted, Plan
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from gateway.limiter.service import Limiter
from gateway.metrics import Metrics
from tests.load.harness import Launcher, gateway_settings, make_bodies
from tests.servers import RedisServer

BIG = 10**12  # limits no benchmark run reaches: every plan is admitted


@dataclass(frozen=True)
class StoreRun:
    concurrency: int
    ops: int
    seconds: float
    admit_ms: list[float]
    settle_ms: list[float]
    client_cpu_s: float
    redis_cpu_s: float


def realistic_plans(n: int) -> list[tuple[Plan, int]]:
    """``n`` (plan, settlement delta) pairs: tenant TPM + one route's TPM and RPM."""
    settings = gateway_settings(0, upstream_url="http://127.0.0.1:1", redis_url="redis://x",
                                tpm=BIG, key="unused")  # fmt: skip
    settings["models"]["claude-haiku"]["routes"][0]["rpm"] = BIG
    settings["tenants"]["load"]["tpm"] = BIG
    config = parse_config(settings)
    target = Catalog(config.models).resolve("claude-haiku")
    assert target is not None
    limiter = Limiter(LimiterConfig(), config.tenants, MemoryStore(), Metrics())
    plans = []
    for i in range(n):
        reserved = 300 + 20 + (i * 37) % 480  # max_tokens 300 + an input of 20-500 tokens
        plan, _ = limiter.plan(f"bench-{i}", "load", target.routes, reserved)
        plans.append((plan, -((i * 53) % 250)))  # output 50-300 of 300: refund 0-249
    return plans


async def redis_cpu(url: str) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def store_run(url: str, concurrency: int, ops: int) -> StoreRun:
    store = RedisStore.from_url(url, timeout_s=5.0)
    plans = realistic_plans(1000)
    admit_ms: list[float] = []
    settle_ms: list[float] = []
    try:
        for plan, delta in plans[:50]:  # connect, load the scripts
            admitted = await store.admit(plan)
            assert isinstance(admitted, Admitted)
            await store.settle(plan, admitted, delta)
        next_op = iter(range(ops))

        async def worker() -> None:
            for i in next_op:
                plan, delta = plans[i % len(plans)]
                start = time.perf_counter()
                admitted = await store.admit(plan)
                middle = time.perf_counter()
                assert isinstance(admitted, Admitted), admitted
                await store.settle(plan, admitted, delta)
                admit_ms.append((middle - start) * 1000)
                settle_ms.append((time.perf_counter() - middle) * 1000)

        redis_before, cpu_before = await redis_cpu(url), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_before
        redis_used = await redis_cpu(url) - redis_before
    finally:
        await store.close()
    return StoreRun(concurrency, ops, seconds, admit_ms, settle_ms, client_cpu, redis_used)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def store_table(rounds: list[list[StoreRun]]) -> str:
    """One row per concurrency: the median round by pairs/s, and every round's pairs/s."""
    lines = [
        "| concurrency | admit+settle pairs/s | admit p50 / p99 (ms) | settle p50 / p99 (ms) "
        "| client CPU (µs/pair) | redis-server CPU (µs/pair) | pairs/s per round |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for runs in rounds:
        ranked = sorted(runs, key=lambda r: r.ops / r.seconds)
        r = ranked[len(ranked) // 2]
        every = " / ".join(f"{x.ops / x.seconds:,.0f}" for x in runs)
        lines.append(
            f"| {r.concurrency} | {r.ops / r.seconds:,.0f} "
            f"| {statistics.median(r.admit_ms):.2f} / {quantile(r.admit_ms, 0.99):.2f} "
            f"| {statistics.median(r.settle_ms):.2f} / {quantile(r.settle_ms, 0.99):.2f} "
            f"| {r.client_cpu_s / r.ops * 1e6:.0f} | {r.redis_cpu_s / r.ops * 1e6:.0f} | {every} |"
        )
    return "\n".join(lines)


# ---- round trips per proxied request --------------------------------------------------------


async def command_calls(url: str) -> Counter[str]:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


async def reset_stats(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.config_resetstat()
    finally:
        await client.aclose()


async def send(gateway: str, key: str, requests: int, concurrency: int = 16) -> Counter[int]:
    bodies = make_bodies(requests, seed=11)
    statuses: Counter[int] = Counter()
    next_body = iter(bodies)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for body in next_body:
                url = f"{gateway}/model/claude-haiku/invoke"
                async with session.post(url, data=body.raw, headers=headers) as reply:
                    await reply.read()
                    statuses[reply.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def round_trips(
    workdir: Path, requests: int, tpm: int, queue_wait_s: float
) -> tuple[Counter[int], Counter[str]]:
    redis = RedisServer().start()
    launcher = Launcher(workdir)
    try:
        sim = launcher.simulator(mode="rolling", tpm=BIG, ttft_ms=0, token_ms=0)
        (gateway,) = launcher.gateways(1, upstream_url=sim.url, redis_url=redis.url, tpm=tpm,
                                       queue={"max_wait_s": queue_wait_s})  # fmt: skip
        warm = await send(gateway.url, launcher.key, 20, concurrency=1)
        assert warm[200] > 0, warm
        await reset_stats(redis.url)
        statuses = await send(gateway.url, launcher.key, requests)
        calls = await command_calls(redis.url)
    finally:
        launcher.stop_all()
        redis.stop()
    return statuses, calls


def script_commands() -> set[str]:
    """Commands the limiter's Lua scripts run (Redis 7 counts them in commandstats too)."""
    lua = resources.files("gateway.limiter").joinpath("lua")
    found: set[str] = set()
    for script in lua.iterdir():
        if script.name.endswith(".lua"):
            text = script.read_text(encoding="utf-8")
            found |= {c.lower() for c in re.findall(r"redis\.call\('(\w+)'", text)}
    return found


def round_trip_table(label: str, statuses: Counter[int], calls: Counter[str]) -> str:
    """Only the rows sent by the gateway are network round trips; a command both the scripts
    and the gateway send is counted as the scripts'."""
    in_scripts = script_commands()
    total = sum(statuses.values())
    own = {"config|resetstat", "info", "hello"}  # this script's own connection
    lines = [
        f"**{label}**: {total} requests, answers {dict(sorted(statuses.items()))}",
        "",
        "| command | calls | per request | sent by |",
        "|---|---:|---:|---|",
    ]
    for name, count in sorted(calls.items(), key=lambda kv: (kv[0] in in_scripts, -kv[1])):
        if name not in own:
            origin = "Lua script" if name in in_scripts else "gateway (round trip)"
            lines.append(f"| {name} | {count} | {count / total:.3f} | {origin} |")
    expected = 2 * statuses[200] + statuses[429]
    lines.append(f"| *EVALSHA if 2 per 200 + 1 per 429* | {expected} "
                 f"| {expected / total:.3f} | |")  # fmt: skip
    return "\n".join(lines)


# ---- the machine ------------------------------------------------------------------------


def machine() -> str:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "-"

    binary = shutil.which("redis-server") or "redis-server"
    words = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    redis_version = next((w[2:] for w in words.stdout.split() if w.startswith("v=")), "?")
    return (f"{os.cpu_count()} cores (nproc), {platform.platform()}, CPython "
            f"{platform.python_version()}, redis-server {redis_version}, uvloop "
            f"{version('uvloop')}, aiohttp {version('aiohttp')}, granian {version('granian')}, "
            f"uvicorn {version('uvicorn')}")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    print(f"Machine: {machine()}; event loop {type(asyncio.get_running_loop()).__module__}\n")
    redis = RedisServer().start()
    try:
        rounds: list[list[StoreRun]] = [[] for _ in args.concurrency]
        for _ in range(args.rounds):  # interleaved, so a busy spell hits every row alike
            for runs, k in zip(rounds, args.concurrency, strict=True):
                runs.append(await store_run(redis.url, k, args.ops))
    finally:
        redis.stop()
    print(f"### RedisStore.admit + settle, one process, {args.ops} pairs per round, "
          f"median of {args.rounds} rounds\n")  # fmt: skip
    print(store_table(rounds) + "\n")
    print(f"### Redis commands per request through the gateway ({args.requests} requests)\n")
    with tempfile.TemporaryDirectory(prefix="limiter-bench-") as tmp:
        roomy = await round_trips(Path(tmp), args.requests, tpm=BIG, queue_wait_s=0)
        print(round_trip_table("with room", *roomy) + "\n")
        full = await round_trips(Path(tmp), args.requests, tpm=10_000, queue_wait_s=0)
        print(round_trip_table("over quota (TPM 10,000), queue off", *full) + "\n")
        queued = await round_trips(Path(tmp), args.queued, tpm=10_000, queue_wait_s=1.0)
        print(round_trip_table("over quota (TPM 10,000), 1 s in the queue", *queued) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="admit+settle pairs per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency")
    parser.add_argument("--concurrency", default="1,8,32,128",
                        help="comma-separated coroutine counts")  # fmt: skip
    parser.add_argument("--requests", type=int, default=1000, help="requests through the gateway")
    parser.add_argument("--queued", type=int, default=200,
                        help="requests through the gateway that wait 1 s in the queue")  # fmt: skip
    args = parser.parse_args()
    args.concurrency = [int(k) for k in args.concurrency.split(",")]
    return args


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
