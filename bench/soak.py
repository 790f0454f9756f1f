"""Soak: a steady load at a share of a pool's quota for minutes; what grows is a leak.

The simulator as Bedrock with realistic latency (``--ttft-ms``, ``--token-ms`` per output
token) and a rolling-minute quota of ``--tpm``; a private Redis; the gateway (Redis limiter,
``--server``). Two open-loop loads from processes of their own, Converse and ConverseStream
(read to the end) in equal parts, together offering ``--share`` of the quota in the quota
tokens the gateway reserves per call. Every ``--every`` seconds it samples the gateway's RSS
(its process tree), its open sockets, ``gateway_asyncio_tasks`` and the Redis keys (the usage
ledger's apart: it adds a hash per tenant and minute by design, each kept
``usage.retain_minutes_h``); at the end it prints the samples and, after the warm-up, each
series' first, last, min and max, and checks the simulator throttled nothing.

Usage::

    .venv/bin/python -m bench.soak [--minutes 10] [--share 0.8] [--tpm 400000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.load import MODEL, SECRET
from bench.suite import BIN, ROOT, UPSTREAM_MODEL, gateway_config, rss_mb, serving
from tests.servers import RedisServer, free_port

RESERVED_PER_CALL = 422 + 64
"""bench.load's Converse body: its input estimate, and max_tokens x burndown 1."""


def sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def scrape(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def redis_keys(redis: RedisServer) -> tuple[int, int]:
    """(every key, the usage ledger's): the ledger adds one hash per tenant and minute (and
    per pool and hour) by design, each expiring after its retention (``usage:``)."""
    cli = ["redis-cli", "-p", str(redis.port)]
    total = subprocess.run([*cli, "DBSIZE"], capture_output=True, text=True, check=True)
    usage = subprocess.run([*cli, "--scan", "--pattern", "*:usage:*"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    return int(total.stdout.strip()), len(usage.stdout.split())


def simulator_throttled(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_simulator/stats", timeout=5) as reply:
        return sum(p["throttled"] for p in json.loads(reply.read())["pools"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.8)
    parser.add_argument("--tpm", type=int, default=400_000)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--token-ms", type=float, default=10.0)
    parser.add_argument("--server", choices=("h1", "auto"), default="h1")
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=90.0)
    args = parser.parse_args()
    rate = args.share * args.tpm / 60 / RESERVED_PER_CALL  # calls a second, both loads
    calls = int(rate / 2 * args.minutes * 60)
    env = {"BENCH_KEY": "AKIABENCHUPSTREAM01", "BENCH_SECRET": "bench-upstream-secret",
           "BENCH_TENANT": SECRET}  # fmt: skip
    samples: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        sim_port = free_port()
        stack.enter_context(serving(
            [str(BIN / "bedrock-gateway"), "simulator", "--port", str(sim_port), "--tpm",
             str(args.tpm), "--ttft-ms", str(args.ttft_ms), "--token-ms", str(args.token_ms)],
            sim_port, "the simulator"))  # fmt: skip
        upstream = f"http://127.0.0.1:{sim_port}"
        redis = RedisServer().start()
        stack.callback(redis.stop)
        config = gateway_config(upstream, redis.url, args.server, 1)
        config["models"][MODEL]["routes"][0].update(tpm=args.tpm, rpm=None)
        Path(tmp, "gw.yaml").write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        pid = stack.enter_context(serving(
            [str(BIN / "bedrock-gateway"), "serve", "--config", str(Path(tmp, "gw.yaml")),
             "--port", str(port)], port, "the gateway", env=env))  # fmt: skip
        loads = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.load",
                    "--url",
                    url,
                    "--model",
                    MODEL,
                    "--body",
                    body,
                    "--auth",
                    "bearer",
                    "--requests",
                    str(calls),
                    "--warmup",
                    "0",
                    "--rate",
                    f"{rate / 2:.3f}",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for body in ("converse", "converse-stream")
        ]
        started = time.monotonic()
        while any(load.poll() is None for load in loads):
            samples.append({"s": round(time.monotonic() - started), "rss_mb": rss_mb(pid),
                            "sockets": sockets(pid),
                            "tasks": scrape(url, "gateway_asyncio_tasks"),
                            "redis_keys": redis_keys(redis)[0] - redis_keys(redis)[1],
                            "usage_keys": redis_keys(redis)[1]})  # fmt: skip
            time.sleep(args.every)
        results = [json.loads(load.communicate()[0].strip().splitlines()[-1]) for load in loads]
        throttled = simulator_throttled(upstream)
    print(f"{args.minutes:g} min, {rate:.1f} calls/s ({args.share:.0%} of {args.tpm:,} TPM in "
          f"reserved quota tokens), Converse + ConverseStream, upstream ttft {args.ttft_ms:g} "
          f"ms + {args.token_ms:g} ms/token; model {UPSTREAM_MODEL}")  # fmt: skip
    for body, result in zip(("converse", "converse-stream"), results, strict=True):
        print(f"  {body}: {result['calls']} answered, errors {result['errors']}, p50 "
              f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms")  # fmt: skip
    print(f"  simulator throttled {throttled}")
    print(
        "\n| s | RSS MB | sockets | asyncio tasks | Redis keys (limiter, tenants) | usage "
        "ledger keys |\n|---:|---:|---:|---:|---:|---:|"
    )
    for s in samples:
        print(f"| {s['s']} | {s['rss_mb']:.1f} | {s['sockets']} | {s['tasks']:.0f} | "
              f"{s['redis_keys']} | {s['usage_keys']} |")  # fmt: skip
    steady = [s for s in samples if s["s"] >= args.warmup_s]
    if steady:
        print("\nafter the warm-up (first, last, min, max):")
        for key in ("rss_mb", "sockets", "tasks", "redis_keys", "usage_keys"):
            values = [s[key] for s in steady]
            print(f"  {key}: {values[0]:.1f}, {values[-1]:.1f}, {min(values):.1f}, "
                  f"{max(values):.1f}")  # fmt: skip
    return 0 if throttled == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
