"""``python -m bench``: the gateway against a bare passthrough, in one interleaved run.

It starts, on free loopback ports: the built-in simulator as Bedrock (0 ms latency, quotas far
above the load), a private redis-server, a **bare passthrough** (a few dozen lines: raw ASGI
under uvicorn, the same aiohttp upstream client, no auth, no limiter: the practical floor of a
Python proxy), and the gateway (``bedrock-gateway serve``, Redis limiter) under each
``--server`` (``h1``: uvicorn, ``auto``: granian, HTTP/1.1 + HTTP/2). A load generator in a
process of its own (bench/load.py: aiohttp, SigV4 signed per request or a bearer key) then
calls each variant in turn, A B A B …, ``--rounds`` times, so the machine's drift hits each
alike; it also calls the simulator directly, the baseline for added latency.

Per variant (medians over rounds): throughput; p50 / p90 / p99 latency; p50 added over the
direct call; server CPU per request, user + system summed over the server's process tree
(granian serves from workers under a supervisor), with the range of the rounds, and as a
multiple of the passthrough's in the same round (the median and range of those ratios);
EVALSHA calls per request (the round trips of admission and settlement) and every Redis
command per request (``total_commands_processed``, which counts the commands the Lua scripts
run too), and redis-server's own CPU per request;
the server's RSS at the start and the end of the run. With ``--pin`` (the default on a
machine of 2+ cores) the server and Redis run on core 0, the simulator and the load on the
others, so the CPU that is measured is not shared with the load.

Usage::

    .venv/bin/python -m bench [--quick] [--json] [--rounds 3] [--requests 3000]
        [--concurrency 32 | --rate 500] [--body converse,invoke] [--auth sigv4,bearer]
        [--server h1,auto] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.load import BEARER, KEY_ID, MODEL, SECRET
from gateway.auth import hash_key
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

UPSTREAM_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
BIN = Path(sys.executable).parent

PASSTHROUGH = """
import sys, aiohttp, uvicorn
UP = sys.argv[2].rstrip("/")
state = {}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
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
    url = UP + scope["raw_path"].decode("latin-1")
    async with state["s"].post(url, data=body,
                               headers={"content-type": "application/json"}) as r:
        payload = await r.read()
        headers = [(k.lower(), v) for k, v in r.raw_headers
                   if k.lower() in (b"content-type", b"x-amzn-requestid")]
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": r.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, loop="uvloop", http="httptools")
"""


# ---------------------------------------------------------------- processes and counters


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every live descendant."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat(p)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            total += int(_stat(p)[21]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def _pinned(argv: list[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *argv] if cores and shutil.which("taskset") else argv


def _wait_port(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(argv: list[str], port: int, what: str, env: dict[str, str] | None = None,
            cores: str | None = None) -> Iterator[int]:  # fmt: skip
    proc = subprocess.Popen(_pinned(argv, cores), env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(proc, port, what)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_counters(redis: RedisServer) -> tuple[int, int, float]:
    """(total_commands_processed, EVALSHA calls, redis-server's CPU seconds) of ``redis``."""
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "INFO", "all"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    evalsha = info.get("cmdstat_evalsha", "calls=0,").split("calls=", 1)[1].split(",", 1)[0]
    return (int(info["total_commands_processed"]), int(evalsha),
            float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))  # fmt: skip


# ---------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    url: str
    pid: int | None
    """The server measured (None: the direct call, nothing between)."""
    auth: str
    model: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def gateway_config(upstream: str, redis_url: str, http: str, workers: int) -> dict[str, Any]:
    huge = 10**12
    return {
        "server": {"host": "127.0.0.1", "http": http, "workers": workers},
        "limiter": {"backend": "redis", "redis_url": redis_url, "replicas": 1},
        "accounts": {"bench": {"access_key_id_env": "BENCH_KEY", "secret_access_key_env":
                               "BENCH_SECRET", "endpoint_url": upstream}},
        "models": {MODEL: {"model_id": UPSTREAM_MODEL, "routes": [
            {"account": "bench", "region": "us-east-1", "tpm": huge, "rpm": 10**9}]}},
        "tenants": {"bench": {"access_keys": [{"id": KEY_ID, "secret_env": "BENCH_TENANT"}],
                              "key_sha256": [hash_key(BEARER)], "tpm": huge}},
    }  # fmt: skip


def run_load(variant: Variant, body: str, args: argparse.Namespace, redis: RedisServer,
             cores: str | None) -> dict[str, Any]:  # fmt: skip
    """One timed load against ``variant``: the load's own figures plus the server's CPU, the
    Redis commands and CPU, and the server's RSS, over the timed part only."""
    argv = [sys.executable, "-m", "bench.load", "--url", variant.url, "--model", variant.model,
            "--body", body, "--auth", variant.auth, "--requests", str(args.requests),
            "--warmup", str(args.warmup), "--concurrency", str(args.concurrency),
            "--wait-go"]  # fmt: skip
    if args.rate:
        argv += ["--rate", str(args.rate)]
    load = subprocess.Popen(_pinned(argv, cores), cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert load.stderr is not None
    if load.stderr.readline().strip() != "ready":
        load.wait()
        raise RuntimeError(f"the load did not start: {load.stderr.read()}")
    cpu0 = cpu_seconds(variant.pid) if variant.pid else 0.0
    commands0, evalsha0, redis_cpu0 = redis_counters(redis)
    rss = [rss_mb(variant.pid)] if variant.pid else []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            if variant.pid:
                rss.append(rss_mb(variant.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = load.communicate("go\n", timeout=600)
    done.set()
    sampler.join()
    if load.returncode != 0:
        raise RuntimeError(f"the load failed: {err}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    commands1, evalsha1, redis_cpu1 = redis_counters(redis)
    calls = max(1, result["calls"])
    if variant.pid:
        result["cpu_ms"] = (cpu_seconds(variant.pid) - cpu0) / calls * 1000
        result["rss_mb"] = (rss[0], max(rss), rss_mb(variant.pid))
    result["redis_commands"] = (commands1 - commands0 - 2) / calls  # our own two INFO calls
    result["evalsha"] = (evalsha1 - evalsha0) / calls
    result["redis_cpu_us"] = (redis_cpu1 - redis_cpu0) / calls * 1e6
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def summarize(variants: list[Variant]) -> list[dict[str, Any]]:
    direct = next((v for v in variants if v.pid is None), None)
    passthrough = next((v for v in variants if v.name.startswith("passthrough")), None)
    floor_p50 = _median(direct.runs, "p50_ms") if direct else None
    floor_cpus = [r.get("cpu_ms") for r in passthrough.runs] if passthrough else []
    rows = []
    for v in variants:
        cpu, p50 = _median(v.runs, "cpu_ms"), _median(v.runs, "p50_ms")
        cpus = [r["cpu_ms"] for r in v.runs if "cpu_ms" in r]
        # each round against the passthrough's in the same round: the drift cancels out
        ratios = [r["cpu_ms"] / f for r, f in zip(v.runs, floor_cpus, strict=False)
                  if "cpu_ms" in r and f]  # fmt: skip
        rss = [r["rss_mb"] for r in v.runs if "rss_mb" in r]
        rows.append({
            "variant": v.name, "rps": _median(v.runs, "rps"), "p50_ms": p50,
            "p90_ms": _median(v.runs, "p90_ms"), "p99_ms": _median(v.runs, "p99_ms"),
            "added_p50_ms": None if floor_p50 is None or p50 is None else p50 - floor_p50,
            "cpu_ms": cpu, "cpu_ms_range": (min(cpus), max(cpus)) if cpus else None,
            "cpu_vs_passthrough": statistics.median(ratios) if ratios else None,
            "cpu_vs_passthrough_range": (min(ratios), max(ratios)) if ratios else None,
            "evalsha": _median(v.runs, "evalsha"),
            "redis_commands": _median(v.runs, "redis_commands"),
            "redis_cpu_us": _median(v.runs, "redis_cpu_us"),
            "rss_mb_first_last": (rss[0][0], rss[-1][2]) if rss else None,
            "errors": sum(sum(r["errors"].values()) for r in v.runs),
            "rounds": [{k: r[k] for k in ("rps", "p50_ms", "cpu_ms") if k in r} for r in v.runs],
        })  # fmt: skip
    return rows


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return " → ".join(f"{x:.0f}" for x in value)
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _spread(value: float | None, bounds: tuple[float, float] | None, digits: int) -> str:
    """``0.850 (0.83-0.87)``: a median and the range of the rounds."""
    if value is None or bounds is None:
        return "-"
    low, high = bounds
    return f"{value:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | CPU ms/req (range) | "
             "× passthrough (range) | EVALSHA/req | Redis cmds/req | Redis CPU µs/req | "
             "RSS MB | errors |", "|---|" + "---:|" * 12]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join([
            r["variant"], _cell(r["rps"], 0), _cell(r["p50_ms"]), _cell(r["p90_ms"]),
            _cell(r["p99_ms"]), _cell(r["added_p50_ms"]),
            _spread(r["cpu_ms"], r["cpu_ms_range"], 3),
            _spread(r["cpu_vs_passthrough"], r["cpu_vs_passthrough_range"], 2),
            _cell(r["evalsha"]), _cell(r["redis_commands"]),
            _cell(r["redis_cpu_us"], 0), _cell(r["rss_mb_first_last"]), str(r["errors"]),
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 600 calls")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, help="open loop at this many arrivals a second")
    parser.add_argument("--body", default="converse,invoke")
    parser.add_argument("--auth", default="sigv4,bearer", help="the gateway variants' keys")
    parser.add_argument("--server", default="h1,auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction,
                        default=(os.cpu_count() or 1) >= 2)  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.warmup = 1, 600, 100
        args.body, args.auth = args.body.split(",")[0], args.auth.split(",")[0]
    server_cores = "0" if args.pin else None
    other_cores = f"1-{(os.cpu_count() or 2) - 1}" if args.pin else None
    env = {"BENCH_KEY": "AKIABENCHUPSTREAM01", "BENCH_SECRET": "bench-upstream-secret",
           "BENCH_TENANT": SECRET}  # fmt: skip
    report: dict[str, Any] = {"args": vars(args), "bodies": {}}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        sim_port = free_port()
        stack.enter_context(serving(
            [str(BIN / "bedrock-gateway"), "simulator", "--port", str(sim_port), "--tpm",
             str(10**12), "--ttft-ms", "0", "--token-ms", "0"], sim_port, "the simulator",
            cores=other_cores))  # fmt: skip
        upstream = f"http://127.0.0.1:{sim_port}"
        redis = RedisServer().start()
        stack.callback(redis.stop)
        if server_cores and redis.proc is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", server_cores, str(redis.proc.pid)],
                           check=False, capture_output=True)  # fmt: skip
        variants = [Variant("direct (simulator)", upstream, None, "none", UPSTREAM_MODEL)]
        port = free_port()
        script = Path(tmp, "passthrough.py")
        script.write_text(PASSTHROUGH)
        pid = stack.enter_context(
            serving(
                [sys.executable, str(script), str(port), upstream],
                port,
                "the passthrough",
                cores=server_cores,
            )
        )
        variants.append(Variant("passthrough (raw ASGI + aiohttp)", f"http://127.0.0.1:{port}",
                                pid, "none", UPSTREAM_MODEL))  # fmt: skip
        for http in args.server.split(","):
            config = Path(tmp, f"gw-{http}.yaml")
            config.write_text(yaml.safe_dump(gateway_config(upstream, redis.url, http,
                                                            args.workers)))  # fmt: skip
            port = free_port()
            argv = [str(BIN / "bedrock-gateway"), "serve", "--config", str(config), "--port",
                    str(port)]  # fmt: skip
            pid = stack.enter_context(serving(argv, port, f"the gateway ({http})", env=env,
                                              cores=server_cores))  # fmt: skip
            server = "uvicorn" if http == "h1" else "granian"
            for auth in args.auth.split(","):
                variants.append(Variant(f"gateway {http} ({server}), {auth}",
                                        f"http://127.0.0.1:{port}", pid, auth, MODEL))  # fmt: skip
        for body in args.body.split(","):
            for variant in variants:
                variant.runs = []
            for _ in range(args.rounds):  # interleaved: A B C … A B C …
                for variant in variants:
                    variant.runs.append(run_load(variant, body, args, redis, other_cores))
            rows = summarize(variants)
            report["bodies"][body] = rows
            if not args.json:
                size = variants[0].runs[0]["body_bytes"]
                mode = (f"open loop, {args.rate:g}/s" if args.rate
                        else f"closed loop, {args.concurrency} in flight")  # fmt: skip
                print(f"\n### {body} ({size:,} B body), {mode}, {args.requests} calls x "
                      f"{args.rounds} rounds, medians\n")  # fmt: skip
                print(markdown(rows), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0
