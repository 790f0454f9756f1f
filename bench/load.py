"""The load generator of ``python -m bench``: one process, its own event loop, one target.

Closed loop (``--concurrency`` calls always in flight) or open loop (``--rate`` arrivals a
second, however slow the answers), for ``--requests`` calls after a warm-up; realistic bodies
(a Converse call with a system prompt and a few turns, about 2 KB, the same as a ConverseStream
read to its end, or an InvokeModel call of about 100 input tokens); SigV4 signed per request as
boto3 does, or a bearer key, or nothing. Prints one JSON object: calls, wall seconds,
throughput, latency percentiles, errors.

Run by bench/suite.py in a process of its own, so its CPU is not the server's (from the
repository root)::

    .venv/bin/python -m bench.load --url http://127.0.0.1:8080 --body converse --auth sigv4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import uvloop

from gateway import sigv4

KEY_ID, SECRET = "GWBENCHTENANT000001", "bench-tenant-secret-0123456789"
BEARER = "gwk-bench-bearer-key-0123456789"
MODEL = "bench-model"

SYSTEM = ("You are a careful assistant for an online bookshop. Answer in two short paragraphs, "
          "cite the order number when you refer to one, never invent a delivery date, and say "
          "so plainly when the answer is not in the conversation. ") * 3  # fmt: skip
TURNS = [
    ("user", "Hello, I ordered three paperbacks last Tuesday, order 48213, and only two have "
             "arrived. The parcel looked intact. What should I do about the missing one?"),
    ("assistant", "Thank you for telling us. Order 48213 shipped in two parcels: the third "
                  "book, a reprint, left our warehouse a day later than the others. It should "
                  "arrive separately; the tracking link in your confirmation shows both."),
    ("user", "I see only one tracking number in the email. Could you check whether the second "
             "parcel exists at all, and if it does not, send the book again or refund it? I "
             "would prefer the book, it is a present."),
    ("assistant", "I have checked: the second parcel exists and is with the carrier. Its "
                  "number was added after the email went out, which is why you do not see it."),
    ("user", "Great. Can you tell me roughly when it will arrive, and what happens if it does "
             "not arrive by the weekend? The birthday is on Monday."),
]  # fmt: skip


def converse_body() -> bytes:
    messages = [{"role": role, "content": [{"text": text}]} for role, text in TURNS]
    return json.dumps({"system": [{"text": SYSTEM}], "messages": messages,
                       "inferenceConfig": {"maxTokens": 64}}).encode()  # fmt: skip


def invoke_body() -> bytes:
    text = " ".join(text for _, text in TURNS[:3])  # about 100 tokens
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                       "messages": [{"role": "user", "content": text}]}).encode()  # fmt: skip


BODIES = {"converse": (converse_body, "converse"), "invoke": (invoke_body, "invoke"),
          "converse-stream": (converse_body, "converse-stream")}  # fmt: skip


class Signer:
    def __init__(self, auth: str, host: str, path: str, body: bytes) -> None:
        self.auth, self.host, self.path = auth, host, path
        self.payload_hash = hashlib.sha256(body).hexdigest()
        self.keys = sigv4.SigningKeys()

    def headers(self) -> dict[str, str]:
        headers = {"host": self.host, "content-type": "application/json"}
        if self.auth == "bearer":
            headers["authorization"] = f"Bearer {BEARER}"
        elif self.auth == "sigv4":
            sigv4.sign(sigv4.Credentials(KEY_ID, SECRET), method="POST", raw_path=self.path,
                       headers=headers, payload_hash=self.payload_hash, region="us-east-1",
                       service="bedrock", now=time.time(), keys=self.keys)  # fmt: skip
        return headers


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    make, operation = BODIES[args.body]
    body = make()
    path = f"/model/{args.model}/{operation}"
    host = args.url.split("://", 1)[1].rstrip("/")
    signer = Signer(args.auth, host, path, body)
    url = args.url.rstrip("/") + path
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(record: bool) -> None:
            started = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=signer.headers()) as reply:
                    await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                return
            if status != 200:
                errors[str(status)] += 1
            elif record:
                latencies.append(time.perf_counter() - started)

        async def closed(n: int, record: bool) -> None:
            async def worker(count: int) -> None:
                for _ in range(count):
                    await one(record)

            share, extra = divmod(n, args.concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(args.concurrency)))

        async def opened(n: int, record: bool) -> None:
            loop, tasks = asyncio.get_running_loop(), []
            start = loop.time()
            for i in range(n):
                delay = start + i / args.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(record)))
            await asyncio.gather(*tasks)

        drive = closed if args.rate is None else opened
        await drive(args.warmup, False)
        errors.clear()
        print("ready", file=sys.stderr, flush=True)
        if args.wait_go:  # until the suite has read the counters it compares against
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.perf_counter()
        await drive(args.requests, True)
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "calls": len(latencies), "wall_s": wall, "rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.5) * 1000, "p90_ms": percentile(latencies, 0.9) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000, "errors": dict(errors),
        "body_bytes": len(body),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--body", choices=sorted(BODIES), default="converse")
    parser.add_argument("--auth", choices=("sigv4", "bearer", "none"), default="sigv4")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, help="open loop: arrivals per second")
    parser.add_argument("--wait-go", action="store_true",
                        help="after the warm-up, wait for a line on stdin")  # fmt: skip
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
