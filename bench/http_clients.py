"""Upstream HTTP client benchmark: aiohttp vs httpx against a local Bedrock-like server.

The gateway forwards every request to Bedrock Runtime, so the upstream client's throughput,
latency and CPU cost per request bound what one gateway process can do. This script measures
them for ``aiohttp.ClientSession`` and ``httpx.AsyncClient`` under the same load:

* a fast upstream (raw ASGI app, uvicorn + httptools + uvloop) runs in a separate process on a
  free loopback port and answers ``POST /model/x/invoke`` with a ~400-byte JSON body and
  ``X-Amzn-Bedrock-*`` headers, like InvokeModel does;
* the client side runs on uvloop (as the gateway does), warms up, then sends ``--requests``
  POSTs of a ~1 KB JSON body from ``--concurrency`` workers, reading each full response body;
* each client is measured for ``--rounds`` rounds (order alternating) and the median is reported.

Client CPU is ``time.process_time()`` of this process only; the server's CPU is not included.

Usage::

    .venv/bin/python bench/http_clients.py [--requests 5000] [--concurrency 32] [--rounds 3]
                                           [--warmup 200] [--connections 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Final

import aiohttp
import aiohttp.http_parser
import httpx
import uvicorn
import uvloop

HOST: Final = "127.0.0.1"
INVOKE_PATH: Final = "/model/x/invoke"
SERVER_STARTUP_TIMEOUT_S: Final = 20.0
REQUEST_TIMEOUT_S: Final = 30.0

# What InvokeModel returns for a short Anthropic completion (~400 bytes).
RESPONSE_BODY: Final[bytes] = json.dumps(
    {
        "id": "msg_bdrk_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20241022",
        "content": [
            {
                "type": "text",
                "text": "The gateway forwarded this request upstream and the model answered "
                "with a short completion of roughly the size a chat turn would produce.",
            }
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 241, "output_tokens": 35},
    },
    separators=(",", ":"),
).encode()

RESPONSE_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(RESPONSE_BODY)).encode()),
    (b"x-amzn-requestid", b"6f1c2a4e-8d3b-4c5a-9e7f-0a1b2c3d4e5f"),
    (b"x-amzn-bedrock-invocation-latency", b"412"),
    (b"x-amzn-bedrock-input-token-count", b"241"),
    (b"x-amzn-bedrock-output-token-count", b"35"),
)

NOT_FOUND_BODY: Final = b'{"message":"not found"}'

# A ~1 KB InvokeModel request body, as the gateway would forward it.
REQUEST_BODY: Final[bytes] = json.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 512,
        "temperature": 0.2,
        "system": "You are a concise assistant. Answer in plain prose.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Summarise the following notes. " * 28}],
            }
        ],
    },
    separators=(",", ":"),
).encode()

REQUEST_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    (
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    ),
    ("X-Amz-Date", "20250101T000000Z"),
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),
)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
SendOne = Callable[[], Awaitable[None]]
ClientFactory = Callable[[str, int], contextlib.AbstractAsyncContextManager[SendOne]]


# --------------------------------------------------------------------------- upstream server


async def upstream_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Raw ASGI app standing in for Bedrock Runtime: drain the body, answer canned JSON."""
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        message = await receive()
        more_body = message["type"] == "http.request" and message.get("more_body", False)
    if scope["method"] == "POST" and scope["path"] == INVOKE_PATH:
        status, headers, body = 200, list(RESPONSE_HEADERS), RESPONSE_BODY
    else:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(NOT_FOUND_BODY)).encode()),
        ]
        status, body = 404, NOT_FOUND_BODY
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve_while_parent_lives(server: uvicorn.Server, parent_pid: int) -> None:
    """Run the server; exit on SIGTERM (uvicorn) or as soon as the parent process is gone."""

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != parent_pid:  # reparented: the benchmark died without cleanup
                server.should_exit = True
                return

    watchdog = asyncio.create_task(watch_parent())
    try:
        await server.serve()
    finally:
        watchdog.cancel()


def run_upstream(port: int, parent_pid: int) -> None:
    """Entry point of the server process."""
    config = uvicorn.Config(
        upstream_app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_while_parent_lives(uvicorn.Server(config), parent_pid))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(proc: multiprocessing.process.BaseProcess, port: int, timeout: float) -> None:
    """Poll until the server accepts connections; fail fast if its process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"upstream server exited early (exit code {proc.exitcode})")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"upstream server not listening on {HOST}:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def upstream_server() -> Iterator[str]:
    """Start the upstream in its own process; yield its invoke URL; always stop it."""
    port = _free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=run_upstream, args=(port, os.getpid()), name="bench-upstream", daemon=True
    )
    proc.start()
    try:
        _wait_for_port(proc, port, SERVER_STARTUP_TIMEOUT_S)
        yield f"http://{HOST}:{port}{INVOKE_PATH}"
    finally:
        proc.terminate()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --------------------------------------------------------------------------- clients


def _check_response(status: int, body: bytes) -> None:
    if status != 200 or len(body) != len(RESPONSE_BODY):
        raise RuntimeError(f"unexpected upstream response: HTTP {status}, {len(body)} bytes")


@contextlib.asynccontextmanager
async def aiohttp_client(url: str, connections: int) -> AsyncIterator[SendOne]:
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    headers = dict(REQUEST_HEADERS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send_one() -> None:
            async with session.post(url, data=REQUEST_BODY, headers=headers) as resp:
                _check_response(resp.status, await resp.read())

        yield send_one


@contextlib.asynccontextmanager
async def httpx_client(url: str, connections: int) -> AsyncIterator[SendOne]:
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=30
    )
    headers = dict(REQUEST_HEADERS)
    async with httpx.AsyncClient(
        limits=limits, http1=True, http2=False, timeout=REQUEST_TIMEOUT_S, trust_env=False
    ) as client:

        async def send_one() -> None:
            resp = await client.post(url, content=REQUEST_BODY, headers=headers)
            _check_response(resp.status_code, resp.content)

        yield send_one


CLIENTS: Final[tuple[tuple[str, ClientFactory], ...]] = (
    ("aiohttp", aiohttp_client),
    ("httpx", httpx_client),
)


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class BenchConfig:
    requests: int
    concurrency: int
    rounds: int
    warmup: int
    connections: int


@dataclass(frozen=True)
class RoundResult:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    wall_s: float


@dataclass(frozen=True)
class ClientSummary:
    client: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    rounds: list[RoundResult]


async def _drive(send_one: SendOne, requests: int, concurrency: int) -> list[int]:
    """Send ``requests`` requests from ``concurrency`` workers; return latencies in ns."""
    latencies: list[int] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            start = time.perf_counter_ns()
            await send_one()
            latencies.append(time.perf_counter_ns() - start)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, requests)):
            group.create_task(worker())
    return latencies


def _percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in milliseconds."""
    rank = max(1, math.ceil(round(len(sorted_ns) * fraction, 9)))
    return sorted_ns[rank - 1] / 1e6


async def measure_round(factory: ClientFactory, url: str, cfg: BenchConfig) -> RoundResult:
    """One round with a fresh client: warm up, then a timed run."""
    async with factory(url, cfg.connections) as send_one:
        await _drive(send_one, cfg.warmup, cfg.concurrency)
        gc.collect()
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        latencies = await _drive(send_one, cfg.requests, cfg.concurrency)
        wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
    latencies.sort()
    return RoundResult(
        rps=cfg.requests / wall,
        p50_ms=_percentile_ms(latencies, 0.50),
        p99_ms=_percentile_ms(latencies, 0.99),
        cpu_us_per_req=cpu / cfg.requests * 1e6,
        wall_s=wall,
    )


def _summarise(client: str, rounds: list[RoundResult]) -> ClientSummary:
    return ClientSummary(
        client=client,
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        cpu_us_per_req=statistics.median(r.cpu_us_per_req for r in rounds),
        rounds=rounds,
    )


async def run_benchmark(url: str, cfg: BenchConfig) -> tuple[str, list[ClientSummary]]:
    """Measure every client ``cfg.rounds`` times, alternating the order between rounds."""
    loop = asyncio.get_running_loop()
    loop_name = f"{type(loop).__module__}.{type(loop).__qualname__}"
    per_client: dict[str, list[RoundResult]] = {name: [] for name, _ in CLIENTS}
    for round_no in range(cfg.rounds):
        order = CLIENTS if round_no % 2 == 0 else CLIENTS[::-1]
        for name, factory in order:
            per_client[name].append(await measure_round(factory, url, cfg))
    return loop_name, [_summarise(name, rounds) for name, rounds in per_client.items()]


# --------------------------------------------------------------------------- reporting


def environment(loop_name: str) -> dict[str, Any]:
    packages = ("aiohttp", "httpx", "httpcore", "h11", "uvicorn", "uvloop", "httptools")
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "client_loop": loop_name,
        "aiohttp_parser": aiohttp.http_parser.HttpResponseParser.__module__,
        "versions": {name: metadata.version(name) for name in packages},
    }


def render_markdown(cfg: BenchConfig, env: dict[str, Any], results: list[ClientSummary]) -> str:
    versions = ", ".join(f"{name} {ver}" for name, ver in env["versions"].items())
    lines = [
        f"{cfg.requests} requests x {cfg.concurrency} workers, {cfg.connections} connections, "
        f"warmup {cfg.warmup}, median of {cfg.rounds} rounds",
        f"{env['python']} on {env['platform']}, {env['cpus_usable']}/{env['cpus']} CPUs; "
        f"client loop {env['client_loop']}; aiohttp parser {env['aiohttp_parser']}",
        versions,
        "",
        "| client | req/s | p50 (ms) | p99 (ms) | client CPU (µs/req) | req/s per round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_round = " / ".join(f"{x.rps:.0f}" for x in r.rounds)
        lines.append(
            f"| {r.client} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.cpu_us_per_req:.0f} | {per_round} |"
        )
    return "\n".join(lines)


def render_json(cfg: BenchConfig, env: dict[str, Any], results: list[ClientSummary]) -> str:
    payload = {
        "config": asdict(cfg),
        "environment": env,
        "results": [asdict(r) for r in results],
    }
    return json.dumps(payload, indent=2)


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=_positive_int, default=5000, help="timed requests")
    parser.add_argument("--concurrency", type=_positive_int, default=32, help="workers")
    parser.add_argument("--rounds", type=_positive_int, default=3, help="rounds per client")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per round")
    parser.add_argument("--connections", type=_positive_int, default=64, help="pool size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    cfg = BenchConfig(
        requests=args.requests,
        concurrency=args.concurrency,
        rounds=args.rounds,
        warmup=args.warmup,
        connections=args.connections,
    )
    return cfg, args.json


def main(argv: Sequence[str] | None = None) -> int:
    cfg, as_json = parse_args(argv)
    with (
        upstream_server() as url,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        loop_name, results = runner.run(run_benchmark(url, cfg))
    env = environment(loop_name)
    print(render_json(cfg, env, results) if as_json else render_markdown(cfg, env, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
