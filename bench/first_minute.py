"""First-minute fill: how much of a quota a burst from an empty window gets in its first 60 s.

A burst of ``--overload`` × TPM (in the tokens the simulator charges) starts against an idle
pool, and the figure is the simulator's settled tokens of the requests that started in one
rolling minute of whole seconds, over its TPM: the minute that starts with the burst, or with
``--offset`` s, the minute that starts that long after it (its first seconds' tokens leave the
upstream's window before that minute ends; how soon they may be replaced is the question).
Two targets, each with a fresh simulator in ``rolling`` mode (a strict rolling 60 s window,
the reserve-then-settle rule):

* ``gateway``: ``bedrock-gateway serve`` replicas on a private redis-server, route TPM = the
  simulator's TPM, the overflow queue on (``--max-wait`` s). Every 0.25 s the script also reads
  the pool's per-minute window from Redis (what the gateway counts: settled tokens plus the
  reservations still in flight), so the gap to TPM can be split into room never used and
  tokens held by reservations.
* ``direct``: the same load straight to the simulator, as a client without a gateway; what the
  upstream refuses is simply refused (the baseline: as full as a strict upstream allows).

Usage::

    flock /tmp/bgw-load.lock .venv/bin/python bench/first_minute.py --target gateway
    flock /tmp/bgw-load.lock .venv/bin/python bench/first_minute.py --target direct

Each run takes about 70-80 s (61 s of load, then the answers). Flags: ``--tpm`` (120000),
``--overload`` (4.0), ``--replicas`` (1), ``--max-wait`` (10), ``--seed`` (7), ``--json``;
``--offset`` (0 s, below 1), ``--max-tokens`` (300; outputs stay 50-250), ``--ttft-ms`` (50)
and ``--token-ms`` (0.2): the simulator's latency; ``--slot-ms`` / ``--margin-ms`` override the
gateway's limiter settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.load.harness import (
    MODEL_ID,
    POOL_PREFIX,
    Launcher,
    make_bodies,
    rate_for,
    simulator_pool,
)
from tests.load.scenarios import Loop
from tests.servers import RedisServer

MEASURED_S = 60
LOAD_S = 61.0
MARKS = (5, 10, 15, 20, 30, 45, 60)


@dataclass
class Result:
    target: str
    tpm: int
    overload: float
    rate: float
    fill: float
    """Settled tokens of the requests started in the first 60 s, over TPM."""
    cumulative: dict[int, float]
    """The same after 5, 10, … s."""
    filled_at_s: float | None
    """When the settled first-minute tokens first came within 2 % of their final total."""
    admitted: int
    mean_cost: float
    """Mean settled tokens of those requests."""
    max_rolling_60s_tokens: int
    throttled: int
    statuses: dict[int, int]
    window_at_60: int | None = None
    """Gateway only: the pool's window in Redis at the last sample before 60 s."""
    window_max: int | None = None
    """Gateway only: the most the window held in the first 60 s."""
    offset: float = 0.0
    slot_ms: int | None = None
    margin_ms: int | None = None


async def _sample_window(redis_url: str, start: float, out: list[tuple[float, int]]) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        while time.time() < start + MEASURED_S + 1:
            totals = 0
            async for key in client.scan_iter(match=POOL_PREFIX + "*:tpm"):
                totals += int(await client.hget(key, "t") or 0)
            out.append((time.time() - start, totals))
            await asyncio.sleep(0.25)
    finally:
        await client.aclose()


async def _run(args: argparse.Namespace, launcher: Launcher, redis_url: str | None) -> Result:
    sim = launcher.simulator(mode="rolling", tpm=args.tpm, ttft_ms=args.ttft_ms,
                             token_ms=args.token_ms)  # fmt: skip
    limiter: dict[str, Any] = {}
    if args.slot_ms is not None:
        limiter["slot_ms"] = args.slot_ms
    if args.margin_ms is not None:
        limiter["margin_ms"] = args.margin_ms
    if args.target == "gateway":
        assert redis_url is not None
        gateways = launcher.gateways(args.replicas, upstream_url=sim.url, redis_url=redis_url,
                                     tpm=args.tpm, queue={"max_wait_s": args.max_wait},
                                     **limiter)  # fmt: skip
        urls, model = [g.url for g in gateways], "claude-haiku"
    else:
        urls, model = [sim.url], MODEL_ID
    shape = {"seed": args.seed, "max_tokens": args.max_tokens}
    rate = rate_for(make_bodies(2000, **shape), args.tpm, args.overload)
    bodies = make_bodies(math.ceil(rate * LOAD_S), **shape)
    load = Loop(urls, launcher.key, bodies, rate=rate, duration_s=LOAD_S, max_in_flight=800,
                timeout_s=args.max_wait + 15, model=model)  # fmt: skip
    start = math.floor(time.time()) + 2.0  # the measured minute starts on a whole second
    await asyncio.sleep(start - args.offset + 0.02 - time.time())  # the burst, offset s before
    samples: list[tuple[float, int]] = []
    sampler = None
    if redis_url is not None and args.target == "gateway":
        sampler = asyncio.create_task(_sample_window(redis_url, start, samples))
    try:
        await load.run()
    finally:
        if sampler is not None:
            await sampler
    async with aiohttp.ClientSession() as session:
        pool = await simulator_pool(session, sim.url)
    first = int(start)
    per_second = {e["second"]: (e["tokens"], e["requests"]) for e in pool["timeline"]}
    seconds = [per_second.get(first + s, (0, 0)) for s in range(MEASURED_S)]
    tokens = sum(t for t, _ in seconds)
    requests = sum(r for _, r in seconds)
    running, cumulative, filled_at = 0, {}, None
    for s, (t, _) in enumerate(seconds, 1):
        running += t
        if s in MARKS:
            cumulative[s] = running / args.tpm
        if filled_at is None and running >= 0.98 * tokens:
            filled_at = float(s)
    before_60 = [v for at, v in samples if at < MEASURED_S]
    return Result(
        target=args.target, tpm=args.tpm, overload=args.overload, rate=rate,
        fill=tokens / args.tpm, cumulative=cumulative, filled_at_s=filled_at,
        admitted=requests, mean_cost=tokens / max(1, requests),
        max_rolling_60s_tokens=pool["max_rolling_60s_tokens"], throttled=pool["throttled"],
        statuses=dict(sorted(load.statuses().items())),
        window_at_60=before_60[-1] if before_60 else None,
        window_max=max(before_60) if before_60 else None,
        offset=args.offset, slot_ms=args.slot_ms, margin_ms=args.margin_ms,
    )  # fmt: skip


def _print(result: Result) -> None:
    marks = ", ".join(f"{s} s {f:.1%}" for s, f in result.cumulative.items())
    print(f"[{result.target}] TPM {result.tpm}, {result.overload:g}x offered "
          f"({result.rate:.1f} requests/s) from an empty window, the minute from "
          f"{result.offset:g} s after the burst's start")  # fmt: skip
    print(f"[{result.target}] first-60-s fill {result.fill:.2%} ({result.admitted} requests, "
          f"mean {result.mean_cost:.0f} tokens); reached within 2 % of it at "
          f"{result.filled_at_s} s; cumulative: {marks}")  # fmt: skip
    print(f"[{result.target}] simulator: max_rolling_60s_tokens {result.max_rolling_60s_tokens}, "
          f"throttled {result.throttled}; client statuses {result.statuses}")  # fmt: skip
    if result.window_at_60 is not None:
        print(f"[{result.target}] gateway window: {result.window_at_60} just before 60 s, "
              f"max {result.window_max} (of {result.tpm})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("gateway", "direct"), required=True)
    parser.add_argument("--tpm", type=int, default=120_000)
    parser.add_argument("--overload", type=float, default=4.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-wait", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--offset", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--token-ms", type=float, default=0.2)
    parser.add_argument("--slot-ms", type=int, default=None)
    parser.add_argument("--margin-ms", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 0 <= args.offset < 1:
        parser.error("--offset is in [0, 1)")
    redis = RedisServer().start() if args.target == "gateway" else None
    with tempfile.TemporaryDirectory(prefix="first-minute-") as workdir:
        launcher = Launcher(Path(workdir))
        try:
            result = asyncio.run(_run(args, launcher, redis.url if redis else None))
        finally:
            launcher.stop_all()
            if redis is not None:
                redis.stop()
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        _print(result)


if __name__ == "__main__":
    main()
