"""Where the gateway's CPU goes under load: py-spy samples ``bedrock-gateway serve``.

The same parts as ``python -m bench`` (the simulator at 0 ms, a private Redis, the gateway
with the Redis limiter, the load from a process of its own), one server (``--server h1`` or
``auto``), one body; py-spy (a sampling profiler that attaches from outside, so the gateway
runs unmodified; ``pip install py-spy``) records the server's process tree while the load
runs, and the top frames are printed by self time (the function itself) and by total time
(with what it calls), as shares of all samples.

Usage::

    .venv/bin/python -m bench.profile [--server h1] [--body converse] [--requests 20000]
        [--top 25] [--raw stacks.txt]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.load import MODEL, SECRET
from bench.suite import BIN, ROOT, gateway_config, serving
from tests.servers import RedisServer, free_port


def top_frames(stacks: str, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self, total) shares of the ``top`` frames of py-spy's collapsed ``stacks``."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in stacks.splitlines():
        path, _, count = line.rpartition(" ")
        if not path or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].split(":", 1)[0] + ")"
                  if " (" in f else f for f in path.split(";")[1:]]  # fmt: skip
        samples += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    share = max(1, samples)
    return ([(f, n / share) for f, n in own.most_common(top)],
            [(f, n / share) for f, n in total.most_common(top)])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--server", choices=("h1", "auto"), default="h1")
    parser.add_argument("--body", choices=("converse", "invoke"), default="converse")
    parser.add_argument("--auth", choices=("sigv4", "bearer"), default="sigv4")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", help="also write py-spy's collapsed stacks here")
    args = parser.parse_args()
    if shutil.which("py-spy") is None and not (BIN / "py-spy").exists():
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    env = {"BENCH_KEY": "AKIABENCHUPSTREAM01", "BENCH_SECRET": "bench-upstream-secret",
           "BENCH_TENANT": SECRET}  # fmt: skip
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        sim_port = free_port()
        stack.enter_context(serving(
            [str(BIN / "bedrock-gateway"), "simulator", "--port", str(sim_port), "--tpm",
             str(10**12), "--ttft-ms", "0", "--token-ms", "0"], sim_port, "the simulator",
            cores="1"))  # fmt: skip
        upstream = f"http://127.0.0.1:{sim_port}"
        redis = RedisServer().start()
        stack.callback(redis.stop)
        config = Path(tmp, "gw.yaml")
        config.write_text(yaml.safe_dump(gateway_config(upstream, redis.url, args.server, 1)))
        port = free_port()
        pid = stack.enter_context(serving(
            [str(BIN / "bedrock-gateway"), "serve", "--config", str(config), "--port",
             str(port)], port, "the gateway", env=env, cores="0"))  # fmt: skip
        out = Path(tmp, "stacks.txt")
        spy = subprocess.Popen(
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(out),
                "--subprocesses",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load = subprocess.run([sys.executable, "-m", "bench.load", "--url",
                               f"http://127.0.0.1:{port}", "--model", MODEL, "--body", args.body,
                               "--auth", args.auth, "--requests", str(args.requests),
                               "--concurrency", str(args.concurrency)],
                              cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
        spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        spy.wait(timeout=60)
        stacks = out.read_text()
        if args.raw:
            Path(args.raw).write_text(stacks)
    print(f"load: {load.stdout.strip().splitlines()[-1]}")
    own, total = top_frames(stacks, args.top)
    for title, rows in (("self time", own), ("total time (with callees)", total)):
        print(f"\n| {title} | share |\n|---|---:|")
        for frame, share in rows:
            print(f"| `{frame}` | {share:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
