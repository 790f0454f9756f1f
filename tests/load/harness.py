"""Load-test harness: the simulator and gateway replicas as real processes, and a client.

``Launcher`` starts ``bedrock-gateway simulator`` and ``bedrock-gateway serve`` as
subprocesses (as in production), writes their YAML configs, waits on their health endpoints and
stops every process it started. ``OpenLoop`` offers requests at a constant rate, whatever the
answers, spread round-robin over the gateways, bounded in duration, in flight and per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import hash_key
from gateway.simulator.tokens import input_tokens
from tests.servers import RedisServer, free_port

MODEL = "claude-haiku"
MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"  # output burndown 1 on both sides
REGION = "us-east-1"
ROUTE_LABEL = f"sim/{REGION}/{MODEL_ID}"
POOL_PREFIX = "{bgw}:pool:"
TENANT = "load"
UPSTREAM_ENV = {"LOADTEST_AWS_KEY": "AKIALOADTEST00000001", "LOADTEST_AWS_SECRET": "load-secret"}
_EXE = Path(sys.executable).with_name("bedrock-gateway")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """Runs in the child before exec: a killed test run does not leave servers behind."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ---- processes ----------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``check`` until it holds; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ready(process: Process, path: str) -> bool:
    if process.proc.poll() is not None:
        raise RuntimeError(f"{process.name} exited ({process.proc.returncode}):\n{process.tail()}")
    try:
        return http_get(process.url + path, timeout=1.0)[0] == 200
    except OSError:
        return False


def simulator_settings(
    port: int, *, mode: str, tpm: int, ttft_ms: float = 50.0, token_ms: float = 0.2,
    counting: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``counting``: how the simulator's input counts stray from its tokenizer's (scale …)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "mode": mode,
        "default_quota": {"tpm": tpm},
        "latency": {"ttft_ms": ttft_ms, "per_output_token_ms": token_ms},
        "counting": counting or {},
    }


def gateway_settings(
    port: int,
    *,
    upstream_url: str,
    redis_url: str,
    tpm: int,
    key: str,
    queue: dict[str, Any] | None = None,
    **limiter: Any,
) -> dict[str, Any]:
    """One account (static keys from the environment) calling ``upstream_url``, one model
    with one on-demand route of ``tpm``, one bearer tenant without budgets. ``queue``: the
    overflow queue's settings (default: the gateway's own)."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "upstream": {"connect_timeout_s": 2, "read_timeout_s": 10},
        "queue": queue or {},
        "limiter": {"backend": "redis", "redis_url": redis_url, **limiter},
        "accounts": {
            "sim": {
                "access_key_id_env": "LOADTEST_AWS_KEY",
                "secret_access_key_env": "LOADTEST_AWS_SECRET",
                "endpoint_url": upstream_url,
            }
        },
        "models": {
            MODEL: {
                "model_id": MODEL_ID,
                "output_burndown": 1,
                "routes": [{"account": "sim", "region": REGION, "tpm": tpm}],
            }
        },
        "tenants": {TENANT: {"key_sha256": hash_key(key)}},
    }


class Launcher:
    """Starts processes under ``workdir`` and stops every one of them in ``stop_all``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = "gwk-load-" + os.urandom(12).hex()
        self.processes: list[Process] = []

    def _spawn(self, name: str, args: list[str], port: int) -> Process:
        log = self.workdir / f"{name}.log"
        env = {**os.environ, **UPSTREAM_ENV, "PYTHONUNBUFFERED": "1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(_EXE), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,  # only a prctl call before exec
            )
        process = Process(name, proc, port, log)
        self.processes.append(process)
        return process

    def _write(self, name: str, settings: dict[str, Any]) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        return path

    def simulator(
        self, *, mode: str, tpm: int, counting: dict[str, Any] | None = None, **latency: float
    ) -> Process:
        port = free_port()
        settings = simulator_settings(port, mode=mode, tpm=tpm, counting=counting, **latency)
        config = self._write("sim.yaml", settings)
        process = self._spawn("simulator", ["simulator", "--config", str(config),
                                            "--port", str(port), "--mode", mode], port)  # fmt: skip
        wait_until(partial(_ready, process, "/health"), 30, "simulator ready")
        return process

    def gateways(
        self,
        n: int,
        *,
        upstream_url: str,
        redis_url: str,
        tpm: int,
        queue: dict[str, Any] | None = None,
        first: int = 0,
        **limiter: Any,
    ) -> list[Process]:
        """``n`` replicas sharing one Redis (``limiter.replicas`` = n unless given), numbered
        from ``first`` (to add replicas to a running set)."""
        limiter.setdefault("replicas", n)
        started = []
        for i in range(first, first + n):
            port = free_port()
            settings = gateway_settings(port, upstream_url=upstream_url, redis_url=redis_url,
                                        tpm=tpm, key=self.key, queue=queue, **limiter)  # fmt: skip
            config = self._write(f"gw{i}.yaml", settings)
            started.append(self._spawn(f"gateway{i}", ["serve", "--config", str(config),
                                                       "--port", str(port)], port))  # fmt: skip
        for process in started:  # started together, so the imports overlap
            wait_until(partial(_ready, process, "/health/ready"), 30, f"{process.name} ready")
        return started

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def kill_redis(server: RedisServer) -> None:
    """SIGTERM the redis-server but keep its port and directory for ``restart_redis``."""
    assert server.proc is not None
    server.proc.terminate()
    server.proc.wait(timeout=10)
    server.proc = None


def restart_redis(server: RedisServer) -> None:
    """A new, empty redis-server on the same port."""
    Path(server.dir).mkdir(parents=True, exist_ok=True)
    server.start()


# ---- request bodies -----------------------------------------------------------------------

_VOCABULARY = (
    "quota window token request gateway model region account tenant budget latency replica "
    "redis bucket slot minute throttle settle reserve admit forward stream the a of to and in "
    "is for on with as by at from that this it be are was"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True, slots=True)
class Body:
    raw: bytes
    cost: int
    """Quota tokens the simulator will charge it: input + output (burndown 1)."""


def make_bodies(
    n: int, *, seed: int = 7, words: tuple[int, int] = (20, 400), max_tokens: int = 300,
    output: tuple[int, int] = (50, 250),
) -> list[Body]:  # fmt: skip
    """Anthropic Messages bodies of varied prompt length, each asking the simulator for an
    output of ``output`` tokens (never above ``max_tokens``)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        text = " ".join(rng.choices(_WORDS, k=rng.randint(*words)))
        out = rng.randint(output[0], min(output[1], max_tokens))
        document = {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"{text}. [sim:output_tokens={out}]"}],
        }
        bodies.append(Body(orjson.dumps(document), input_tokens("invoke", document) + out))
    return bodies


def rate_for(bodies: Sequence[Body], tpm: int, multiple: float) -> float:
    """Requests per second that offer ``multiple`` × ``tpm`` in the bodies' real cost."""
    mean = sum(b.cost for b in bodies) / len(bodies)
    return multiple * tpm / 60 / mean


# ---- the load generator -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    sent: float
    """Monotonic seconds (this process's clock) when the request was sent."""
    wall: float
    gateway: int
    status: int
    """0: no HTTP answer; ``error`` says why."""
    error_type: str
    retry_after_ms: str | None
    route: str | None
    latency: float
    error: str = ""


@dataclass
class OpenLoop:
    """Offers ``rate`` requests per second for ``duration_s`` (or until ``stop``), round-robin
    over ``urls``, whatever the answers. A request that would exceed ``max_in_flight`` is not
    sent and counted in ``not_sent``."""

    urls: Sequence[str]
    key: str
    bodies: Sequence[Body]
    rate: float
    duration_s: float
    max_in_flight: int = 200
    timeout_s: float = 10.0
    model: str = MODEL
    outcomes: list[Outcome] = field(default_factory=list)
    not_sent: int = 0
    in_flight: int = 0
    started_wall: float = 0.0
    ended_wall: float = 0.0

    async def run(self, stop: asyncio.Event | None = None) -> OpenLoop:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            asyncio.TaskGroup() as group,  # exits first: every request answered or timed out
        ):
            await self._offer(session, group, stop)
        return self

    async def _offer(
        self, session: aiohttp.ClientSession, group: asyncio.TaskGroup, stop: asyncio.Event | None
    ) -> None:
        loop = asyncio.get_running_loop()
        start, self.started_wall = loop.time(), time.time()
        for i in range(int(self.rate * self.duration_s)):
            delay = start + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            if self.in_flight >= self.max_in_flight:
                self.not_sent += 1
                continue
            self.in_flight += 1
            group.create_task(self._one(session, i))
        self.ended_wall = time.time()

    async def _one(self, session: aiohttp.ClientSession, i: int) -> None:
        loop = asyncio.get_running_loop()
        gateway = i % len(self.urls)
        url = f"{self.urls[gateway]}/model/{self.model}/invoke"
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json",
                   "accept": "application/json"}  # fmt: skip
        sent, wall = loop.time(), time.time()
        try:
            async with session.post(url, data=self.bodies[i % len(self.bodies)].raw,
                                    headers=headers) as reply:  # fmt: skip
                await reply.read()
                outcome = Outcome(sent, wall, gateway, reply.status,
                                  reply.headers.get("x-amzn-ErrorType", ""),
                                  reply.headers.get("x-amz-retry-after"),
                                  reply.headers.get("x-gateway-route"),
                                  loop.time() - sent)  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = Outcome(sent, wall, gateway, 0, "", None, None, loop.time() - sent, repr(exc))
        finally:
            self.in_flight -= 1
        self.outcomes.append(outcome)

    def statuses(self, outcomes: Iterable[Outcome] | None = None) -> Counter[int]:
        return Counter(o.status for o in (self.outcomes if outcomes is None else outcomes))


def describe(load: OpenLoop) -> str:
    counts = load.statuses()
    total = sum(counts.values())
    ok = sorted(o.latency for o in load.outcomes if o.status == 200)
    p50 = ok[len(ok) // 2] * 1000 if ok else 0.0
    p99 = ok[int(len(ok) * 0.99)] * 1000 if ok else 0.0
    span = load.ended_wall - load.started_wall
    return (f"{total} requests at {load.rate:.1f}/s over {span:.0f} s, "
            f"statuses {dict(sorted(counts.items()))}, 429 share "
            f"{counts[429] / max(1, total):.1%}, not sent {load.not_sent}, "
            f"200 latency p50 {p50:.0f} ms p99 {p99:.0f} ms")  # fmt: skip


# ---- what the servers say -----------------------------------------------------------------


async def get_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
        return await reply.text()


async def simulator_pool(session: aiohttp.ClientSession, sim_url: str) -> dict[str, Any]:
    """The simulator's stats of the one pool the load uses, with its per-second timeline."""
    stats = orjson.loads(await get_text(session, f"{sim_url}/_simulator/stats?timeline=1"))
    pools = [p for p in stats["pools"] if p["model"] == MODEL_ID and p["region"] == REGION]
    assert len(pools) == 1, stats["pools"]
    return dict(pools[0])


def metric(exposition: str, name: str) -> float:
    """Sum of every sample called ``name`` (all label sets)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    )


def rolling_sums(
    timeline: Iterable[dict[str, int]], first: int, last: int, window: int = 60
) -> Iterator[tuple[int, int]]:
    """(start second, tokens) of every ``window``-second span inside seconds [first, last)."""
    per_second = {entry["second"]: entry["tokens"] for entry in timeline}
    for start in range(first, last - window + 1):
        yield start, sum(per_second.get(s, 0) for s in range(start, start + window))


async def invoke_once(
    session: aiohttp.ClientSession, url: str, key: str, body: Body
) -> tuple[int, str, bytes]:
    """One InvokeModel call: (status, x-amzn-ErrorType, body)."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with session.post(f"{url}/model/{MODEL}/invoke", data=body.raw, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=10)) as reply:  # fmt: skip
        return reply.status, reply.headers.get("x-amzn-ErrorType", ""), await reply.read()


async def redis_probe(url: str) -> tuple[int, int]:
    """(limiter pool keys, EVALSHA calls) of the Redis at ``url``, on a fresh connection."""
    client = aioredis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = [key async for key in client.scan_iter(match=POOL_PREFIX + "*")]
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return len(keys), int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll the async ``check`` until it holds; the seconds it took. TimeoutError after
    ``within`` seconds, naming ``what``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > within:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.05)
    return loop.time() - start
