"""Time to first frame of a ConverseStream call: through the gateway against straight to the
simulator, the gateway under each ASGI server.

The simulator (its own process, ``--ttft-ms 0``) starts each stream at once, so what is left
is transport and the gateway's own work: authentication, estimate, admission, the upstream
request, and relaying the first frame. One client (this process, aiohttp over HTTP/1.1) sends
``--requests`` calls one after another (no queueing in the numbers) and times, for each, from
sending the request to receiving the first body bytes, then reads the stream to its end.

Usage::

    .venv/bin/python bench/stream_ttfb.py [--requests 2000] [--server uvicorn,granian]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import uvloop
import yaml
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_overhead import SERVERS, server_argv, serving
from gateway import sigv4
from tests.servers import free_port

KEY_ID, SECRET = "GWBENCHTENANT000001", "bench-tenant-secret"
MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
PATH = f"/model/{MODEL.replace(':', '%3A')}/converse-stream"
BODY = orjson.dumps(
    {
        "messages": [{"role": "user", "content": [{"text": "Hello [sim:output_tokens=16]"}]}],
        "inferenceConfig": {"maxTokens": 64},
    }
)


def gateway_config(simulator: str) -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1"},
        "accounts": {"bench": {"access_key_id_env": "BENCH_KEY", "secret_access_key_env":
                               "BENCH_SECRET", "endpoint_url": simulator}},
        "models": {"sonnet": {"model_id": MODEL, "routes": [
            {"account": "bench", "region": "us-east-1", "tpm": 10**12}]}},
        "tenants": {"bench": {"access_keys": [{"id": KEY_ID, "secret_env": "BENCH_TENANT"}]}},
    }  # fmt: skip


def signed(port: int, keys: sigv4.SigningKeys) -> dict[str, str]:
    headers = {"host": f"127.0.0.1:{port}", "content-type": "application/json"}
    sigv4.sign(sigv4.Credentials(KEY_ID, SECRET), method="POST", raw_path=PATH, headers=headers,
               payload_hash=hashlib.sha256(BODY).hexdigest(), region="us-east-1",
               service="bedrock", now=time.time(), keys=keys)  # fmt: skip
    return headers


async def first_frames(port: int, requests: int) -> list[float]:
    """Seconds to the first body bytes of each of ``requests`` sequential streams."""
    keys = sigv4.SigningKeys()
    url = URL(f"http://127.0.0.1:{port}{PATH}", encoded=True)  # as signed: keep the %3A
    times: list[float] = []
    async with aiohttp.ClientSession() as http:
        for i in range(requests + 100):  # the first 100 warm up connections and caches
            headers = signed(port, keys)
            started = time.perf_counter()
            async with http.post(url, data=BODY, headers=headers) as reply:
                first = await reply.content.readany()
                elapsed = time.perf_counter() - started
                rest = await reply.read()
            if reply.status != 200 or b"metadata" not in first + rest:
                raise RuntimeError(f"HTTP {reply.status}: {first[:200]!r}")
            if i >= 100:
                times.append(elapsed)
    return sorted(times)


def report(name: str, times: list[float], direct: list[float] | None) -> None:
    p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
    added = ""
    if direct is not None:
        d50, d99 = direct[len(direct) // 2] * 1000, direct[int(len(direct) * 0.99)] * 1000
        added = f" {p50 - d50:+.2f} | {p99 - d99:+.2f} |"
    else:
        added = " – | – |"
    print(f"| {name} | {p50:.2f} | {p99:.2f} |{added}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--server", default="uvicorn,granian",
                        help=f"comma-separated, from {', '.join(SERVERS)}")  # fmt: skip
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    env = {"BENCH_KEY": "AKIABENCH", "BENCH_SECRET": "s", "BENCH_TENANT": SECRET}
    sim_port = free_port()
    simulator = [str(bin_dir / "bedrock-gateway"), "simulator", "--port", str(sim_port),
                 "--ttft-ms", "0", "--token-ms", "0", "--tpm", str(10**12)]  # fmt: skip
    print(f"{args.requests} sequential ConverseStream calls (16 output tokens, 7 frames); "
          f"time to the first body bytes\n")  # fmt: skip
    print("| path | p50 ms | p99 ms | added p50 ms | added p99 ms |\n|---|---:|---:|---:|---:|")
    with serving(simulator, sim_port, {}), tempfile.TemporaryDirectory() as tmp:
        direct = uvloop.run(first_frames(sim_port, args.requests))
        report("direct to the simulator", direct, None)
        config = Path(tmp, "gw.yaml")
        config.write_text(yaml.safe_dump(gateway_config(f"http://127.0.0.1:{sim_port}")))
        for server in args.server.split(","):
            port = free_port()
            argv, extra = server_argv(server, config, port)
            with serving(argv, port, {**env, **extra}):
                report(f"through the gateway ({server})",
                       uvloop.run(first_frames(port, args.requests)), direct)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
