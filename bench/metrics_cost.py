"""What the Prometheus metrics and the access log add to each request's CPU on the hot path.

One successful non-streaming request makes these metric calls: the admission, the queue wait,
the store's admit and settle latencies, the upstream's first byte and end, the tokens by kind,
the settlement, and the request itself (counter, duration, overhead). Measured with ``timeit``
(best of ``--rounds``) against the same calls on a listener that does nothing: the difference
is what metrics cost per request. Scrapes and the background usage refresh are not per request.

The access log (``logging.access_log``) is measured the same way: with it on, one request
builds its line's fields and writes them through the gateway's own logging setup (the JSON
formatter, a stream handler) to ``/dev/null``; with it off, the request pays the one test of
the flag. A WARNING-level setup measures what a line costs when the level filters it out.

Usage::

    .venv/bin/python bench/metrics_cost.py [--number 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import timeit
from typing import Any

from gateway import logs
from gateway.catalog import Route
from gateway.config import LoggingConfig
from gateway.cost import Usage
from gateway.metrics import Metrics

ROUTE = Route("prod", "us-east-1", "anthropic.claude-sonnet-4-20250514-v1:0", "on-demand",
              "anthropic.claude-sonnet-4-20250514-v1:0", 200_000, None, None, None)  # fmt: skip
USAGE = Usage(1200, 300, 0, 0)


def _nothing(*args: Any) -> None:
    return None


class Nothing:
    """The same interface, doing nothing: what the calls themselves cost."""

    admitted = store_call = waited = upstream_answered = upstream_done = staticmethod(_nothing)
    used_tokens = settled = request = staticmethod(_nothing)


def one_request(m: Any) -> None:
    m.admitted(ROUTE.label, "search")
    m.store_call("admit", 0.0004)
    m.waited("claude-sonnet", "interactive", 0.0)
    m.upstream_answered(ROUTE, 200, 0.35)
    m.upstream_done(ROUTE, 1.2)
    m.used_tokens("search", "claude-sonnet", USAGE, 2700)
    m.settled(ROUTE.label, "search", 2700, -300)
    m.store_call("settle", 0.0003)
    m.request("search", "claude-sonnet", ROUTE.label, "Converse", "success", 1.21, 0.0012)


def per_request_us(target: Any, number: int, rounds: int) -> float:
    best = min(timeit.repeat(lambda: one_request(target), number=number, repeat=rounds))
    return best / number * 1e6


FIELDS = {
    "request_id": "8f14e45f-ceea-467a-9575-2a3c1b0e1d11",
    "gateway_request_id": "8f14e45f-ceea-467a-9575-2a3c1b0e1d11", "tenant": "search",
    "model": "claude-sonnet", "route": ROUTE.label, "operation": "Converse",
    "priority": "interactive", "status": 200, "outcome": "success", "streamed": False,
    "latency_ms": 1210.25, "overhead_ms": 0.412, "queue_ms": 0, "attempts": 1,
    "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 0, "cache_write_tokens": 0,
}  # fmt: skip


def access_log_us(enabled: bool, number: int, rounds: int) -> float:
    """One request's access-log work: the flag's test, and with it on the line (its fields
    built as ``dataplane`` builds them, formatted and written)."""

    def one() -> None:
        if enabled:
            logs.access(dict(FIELDS))

    best = min(timeit.repeat(one, number=number, repeat=rounds))
    return best / number * 1e6


def configure(level: str, sink: Any) -> None:
    """The gateway's logging setup (``gateway.logs``), writing to ``sink``."""
    logs.configure(LoggingConfig(level=level))  # type: ignore[arg-type]
    for handler in logging.getLogger().handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    on = per_request_us(Metrics(), args.number, args.rounds)
    off = per_request_us(Nothing(), args.number, args.rounds)
    print(f"metric calls per request: {on:.2f} µs with metrics, {off:.2f} µs with a no-op "
          f"listener: {on - off:.2f} µs per request")  # fmt: skip
    with open(os.devnull, "w", encoding="utf-8") as sink:
        configure("INFO", sink)
        logged = access_log_us(True, args.number // 4, args.rounds)
        configure("WARNING", sink)
        filtered = access_log_us(True, args.number, args.rounds)
    quiet = access_log_us(False, args.number, args.rounds)
    print(f"access log per request: {logged:.2f} µs on (a JSON line to /dev/null), "
          f"{quiet:.3f} µs off; {filtered:.2f} µs on but below logging.level: "
          f"{logged - quiet:.2f} µs per request when on")  # fmt: skip


if __name__ == "__main__":
    main()
