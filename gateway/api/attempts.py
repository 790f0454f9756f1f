"""Upstream attempts: retry throttling, 5xx answers and failed connections, elsewhere if possible.

An attempt is one admitted call upstream that settles its own ticket (a refused or failed call
gives its reservation back). After a retryable failure the request waits a capped exponential
backoff with full jitter, is admitted again with the failed route tried last, so another route
with room takes it, and tries again: never past the request's deadline, never for a validation
error. A route whose daily token quota is spent is not tried again for this request (nor
taught a lower per-minute quota). If every attempt fails, the client gets the last upstream
error as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.asgi import Headers
from gateway.catalog import Route
from gateway.errors import ServiceUnavailable, Throttled
from gateway.limiter.service import Ticket
from gateway.retry import RetryPolicy, daily_quota_spent, retryable

Answer = tuple[int, Headers, bytes] | None
"""An answer to send, or None when a stream was already relayed to the client."""

Attempt = Callable[[Ticket, int], Awaitable[Answer]]
Readmit = Callable[[tuple[Route, ...], float, int], Awaitable[Ticket]]


def error_type(headers: Headers) -> str | None:
    for name, value in headers:
        if name == b"x-amzn-errortype":
            return value.decode("latin-1")
    return None


@dataclass
class Attempts:
    policy: RetryPolicy
    on_throttled: Callable[[Route], None]
    """Told of every upstream 429: the route's pool has less quota than configured."""
    clock: Callable[[], float] = time.monotonic
    draw: Callable[[], float] = field(default=random.random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_retry: Callable[[str, Route, str], None] = lambda model, route, reason: None
    """Told of every retry: the model, the route that failed and why (the retries metric)."""

    async def run(
        self, ticket: Ticket, routes: tuple[Route, ...], deadline: float,
        attempt: Attempt, readmit: Readmit, model: str = "",
    ) -> tuple[Answer, int]:  # fmt: skip
        """The final answer and the number of attempts made."""
        number = 1
        while True:
            failure: ServiceUnavailable | None = None
            try:
                answer = await attempt(ticket, number)
            except ServiceUnavailable as exc:  # no connection, or it broke: nothing came back
                answer, failure = None, exc
            else:
                if answer is None or not retryable(answer[0], error_type(answer[1])):
                    return answer, number
                if answer[0] == 429 and daily_quota_spent(answer[2]):
                    # not a per-minute signal, and this route will not recover in time
                    routes = tuple(r for r in routes if r != ticket.route)
                elif answer[0] == 429:
                    self.on_throttled(ticket.route)
            delay = self.policy.delay(number, self.draw(), deadline - self.clock())
            next_ticket = None
            if delay is not None and routes:
                await self.sleep(delay)
                others = tuple(sorted(routes, key=lambda r: r == ticket.route))  # it goes last
                # no capacity left before the deadline: the upstream's answer stands
                with contextlib.suppress(Throttled):
                    next_ticket = await readmit(others, deadline - self.clock(), number + 1)
            if next_ticket is None:
                if failure is not None:
                    raise failure
                return answer, number
            self.on_retry(model, ticket.route, _reason(answer, failure))
            ticket, number = next_ticket, number + 1


def _reason(answer: Answer, failure: ServiceUnavailable | None) -> str:
    if failure is not None or answer is None:
        return "connection"
    return "throttled" if answer[0] == 429 else "upstream_5xx"
