"""CPU cost per request of the gateway against a bare Python passthrough.

Three servers are measured in turn, each a separate process in front of the same fast stub
upstream (bench/http_clients.py's, in its own process):

* ``passthrough``: a raw ASGI app that forwards the body with aiohttp and returns the answer:
  the floor any Python proxy on this stack pays;
* ``gateway-memory``: ``bedrock-gateway serve`` with SigV4 authentication, cost estimate, the
  in-memory limiter (admit + settle) and metrics (the access log off, its default);
* ``gateway-redis``: the same with the Redis limiter (a private redis-server).

``--server`` picks the ASGI server(s) the gateway runs under, in turn: ``uvicorn``
(``server.http: h1``, HTTP/1.1 only), ``granian`` (``server.http: auto``, HTTP/1.1 + HTTP/2),
``hypercorn`` (its CLI on the same app factory; not a ``server.http`` choice). The load is
HTTP/1.1 in every case. CPU is summed over the server's process tree (granian and hypercorn
serve from a worker process under a supervisor).

The load generator (this process) signs each request with SigV4 like boto3 does and keeps
``--concurrency`` requests in flight. The figure that matters is the server process's CPU
time per request (user + system, read from /proc), which does not depend on how the machine's
two cores are shared with the client.

Usage::

    .venv/bin/python bench/gateway_overhead.py [--requests 4000] [--concurrency 16] [--rounds 3]
        [--server uvicorn,granian,hypercorn] [--no-passthrough] [--no-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_clients import REQUEST_BODY, upstream_server
from bench.suite import cpu_seconds
from gateway import sigv4
from gateway.limiter.redis_store import parse_redis_url
from gateway.limiter.resp import Pipe
from tests.servers import RedisServer, free_port

KEY_ID, SECRET = "GWBENCHTENANT000001", "bench-tenant-secret"
PASSTHROUGH = """
import aiohttp, uvicorn, sys
UP = sys.argv[2]
state = {}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                state["s"] = aiohttp.ClientSession()
                await send({"type": "lifespan.startup.complete"})
            else:
                await state["s"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, more = b"", True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    async with state["s"].post(UP, data=body, headers={"content-type": "application/json"}) as r:
        payload = await r.read()
        headers = [(k.lower(), v) for k, v in r.raw_headers
                   if k.lower() in (b"content-type", b"x-amzn-requestid")]
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": r.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


def gateway_config(upstream_base: str, redis_url: str | None) -> dict[str, Any]:
    limiter: dict[str, Any] = {"backend": "memory"}
    if redis_url:
        limiter = {"backend": "redis", "redis_url": redis_url}
    return {
        "server": {"host": "127.0.0.1"},
        "limiter": limiter,
        "accounts": {"bench": {"access_key_id_env": "BENCH_KEY", "secret_access_key_env":
                               "BENCH_SECRET", "endpoint_url": upstream_base}},
        "models": {"x": {"model_id": "x", "routes": [
            {"account": "bench", "region": "us-east-1", "tpm": 10**12, "rpm": 10**9}]}},
        "tenants": {"bench": {"access_keys": [{"id": KEY_ID, "secret_env": "BENCH_TENANT"}],
                              "tpm": 10**12}},
    }  # fmt: skip


@contextlib.contextmanager
def serving(argv: list[str], port: int, env: dict[str, str]) -> Iterator[int]:
    proc = subprocess.Popen(argv, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:3]} exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def signed_headers(port: int, keys: sigv4.SigningKeys) -> dict[str, str]:
    headers = {"host": f"127.0.0.1:{port}", "content-type": "application/json"}
    sigv4.sign(sigv4.Credentials(KEY_ID, SECRET), method="POST", raw_path="/model/x/invoke",
               headers=headers, payload_hash=hashlib.sha256(REQUEST_BODY).hexdigest(),
               region="us-east-1", service="bedrock", now=time.time(), keys=keys)  # fmt: skip
    return headers


async def drive(port: int, pid: int, requests: int, concurrency: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/model/x/invoke"
    keys = sigv4.SigningKeys()
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def one() -> None:
            started = time.perf_counter()
            async with http.post(url, data=REQUEST_BODY, headers=signed_headers(port, keys)) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
            latencies.append(time.perf_counter() - started)

        async def worker(n: int) -> None:
            for _ in range(n):
                await one()

        await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm up
        latencies.clear()
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        share = requests // concurrency
        await asyncio.gather(*(worker(share) for _ in range(concurrency)))
        cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - wall0
    latencies.sort()
    n = len(latencies)
    return {
        "cpu_ms": cpu / n * 1000,
        "rps": n / wall,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[int(n * 0.99)] * 1000,
    }


def evalsha_calls(redis_url: str) -> int:
    """EVALSHA calls the Redis server has answered (proof the limiter really used Redis)."""

    async def read() -> int:
        pipe = Pipe(parse_redis_url(redis_url), timeout_s=2)
        info = await pipe.call("INFO", "commandstats")
        pipe.close()
        assert isinstance(info, bytes)
        for line in info.decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    return uvloop.run(read())


def measure(
    name: str, argv: list[str], port: int, env: dict[str, str], args: argparse.Namespace,
    redis_url: str | None = None,
) -> dict[str, float]:  # fmt: skip
    rounds = []
    with serving(argv, port, env) as pid:
        before = evalsha_calls(redis_url) if redis_url else 0
        for _ in range(args.rounds):
            rounds.append(uvloop.run(drive(port, pid, args.requests, args.concurrency)))
        if redis_url:
            sent = args.rounds * (args.requests // args.concurrency + 50) * args.concurrency
            per_request = (evalsha_calls(redis_url) - before) / sent
            if per_request < 1.99:
                raise RuntimeError(f"{name}: only {per_request:.2f} EVALSHA per request")
            name += f" ({per_request:.2f} EVALSHA/request)"
    best = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"| {name} | {best['cpu_ms']:.3f} | {best['rps']:,.0f} | {best['p50_ms']:.2f} | "
          f"{best['p99_ms']:.2f} |", flush=True)  # fmt: skip
    return best


SERVERS = ("uvicorn", "granian", "hypercorn")


def server_argv(server: str, config: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command serving the gateway under ``server``, and the environment it needs."""
    bin_dir = Path(sys.executable).parent
    if server == "hypercorn":
        argv = [str(bin_dir / "hypercorn"), "gateway.api.app:app_from_env()",
                "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop",
                "--log-level", "warning"]  # fmt: skip
        return argv, {"GATEWAY_CONFIG": str(config)}
    http = "h1" if server == "uvicorn" else "auto"
    argv = [str(bin_dir / "bedrock-gateway"), "serve", "--config", str(config), "--port",
            str(port), "--http", http]  # fmt: skip
    return argv, {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default="uvicorn",
                        help=f"comma-separated, from {', '.join(SERVERS)}")  # fmt: skip
    parser.add_argument("--no-passthrough", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    servers = args.server.split(",")
    if not set(servers) <= set(SERVERS):
        parser.error(f"--server takes {', '.join(SERVERS)}")
    env = {"BENCH_KEY": "AKIABENCH", "BENCH_SECRET": "s", "BENCH_TENANT": SECRET}
    print(f"{args.requests} requests x {args.concurrency} in flight, median of {args.rounds} "
          f"rounds; server CPU per request (user+system)\n")  # fmt: skip
    print("| server | CPU ms/request | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    with upstream_server() as invoke_url, tempfile.TemporaryDirectory() as tmp:
        base = invoke_url.rsplit("/model/", 1)[0]
        if not args.no_passthrough:
            port = free_port()
            script = Path(tmp, "passthrough.py")
            script.write_text(PASSTHROUGH)
            measure("passthrough (aiohttp)", [sys.executable, str(script), str(port), invoke_url],
                    port, env, args)  # fmt: skip
        use_redis = shutil.which("redis-server") and not args.no_redis
        redis = RedisServer().start() if use_redis else None
        try:
            limiters = [("memory", None)] + ([("redis", redis.url)] if redis else [])
            for server in servers:
                for limiter, url in limiters:
                    config = Path(tmp, "gw.yaml")
                    config.write_text(yaml.safe_dump(gateway_config(base, url)))
                    port = free_port()
                    argv, extra = server_argv(server, config, port)
                    measure(f"gateway ({server}), {limiter} limiter", argv, port,
                            {**env, **extra}, args, url)  # fmt: skip
        finally:
            if redis:
                redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
