"""The upstream attempt loop with a manual clock, fixed jitter draws and a recorded sleep."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.attempts import Answer, Attempts
from gateway.asgi import Headers
from gateway.catalog import Route
from gateway.errors import ModelTimeout, ServiceUnavailable, Throttled
from gateway.retry import RetryPolicy

A = Route("acct", "us-east-1", "m", "on-demand", "m", None, None, None, None)
B = Route("acct", "us-east-1", "us.m", "geo", "m", None, None, None, None)


class FakeTicket:
    def __init__(self, route: Route) -> None:
        self.route = route


def answer(
    status: int, error: str | None = None, body: bytes = b"{}"
) -> tuple[int, Headers, bytes]:
    headers = [(b"x-amzn-errortype", error.encode())] if error else []
    return status, headers, body


DAY_SPENT = b'{"message":"Too many tokens per day, please wait before trying again."}'


class Script:
    """Plays back one outcome per attempt and records what the loop did."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.tried: list[tuple[str, int]] = []
        self.sleeps: list[float] = []
        self.throttled: list[Route] = []
        self.now = 0.0
        self.readmits: list[tuple[Route, ...]] = []

    async def attempt(self, ticket: Any, number: int) -> Answer:
        self.tried.append((ticket.route.upstream_id, number))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    async def readmit(self, routes: tuple[Route, ...], wait_s: float, number: int) -> Any:
        self.readmits.append(routes)
        if wait_s <= 0:
            raise Throttled("no room", 100)
        return FakeTicket(routes[0])

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def loop(self, policy: RetryPolicy | None = None) -> Attempts:
        return Attempts(policy or RetryPolicy(3, 0.1, 2.0), self.throttled.append,
                        clock=lambda: self.now, draw=lambda: 0.5, sleep=self.sleep)  # fmt: skip


async def run(
    script: Script, routes: tuple[Route, ...] = (A,), deadline: float = 30.0,
    policy: RetryPolicy | None = None,
) -> tuple[int, int]:  # fmt: skip
    """The final status and the number of attempts."""
    result, attempts = await script.loop(policy).run(
        FakeTicket(A),  # type: ignore[arg-type]
        routes, deadline, script.attempt, script.readmit,
    )  # fmt: skip
    assert result is not None
    return result[0], attempts


async def test_a_throttled_call_is_retried_on_another_route() -> None:
    script = Script(answer(429, "ThrottlingException"), answer(200))
    status, attempts = await run(script, (A, B))
    assert status == 200
    assert attempts == 2
    assert script.tried == [("m", 1), ("us.m", 2)]
    assert script.readmits == [(B, A)]  # the failed route goes last
    assert script.throttled == [A]
    assert script.sleeps == [pytest.approx(0.05)]  # 0.5 x min(2, 0.1 x 2^0)


async def test_backoff_grows_and_the_last_answer_stands() -> None:
    script = Script(*(answer(503, "ServiceUnavailableException") for _ in range(3)))
    status, attempts = await run(script)
    assert status == 503
    assert attempts == 3
    assert script.sleeps == [pytest.approx(0.05), pytest.approx(0.1)]


@pytest.mark.parametrize("status", [400, 403, 404, 424])
async def test_final_errors_are_not_retried(status: int) -> None:
    script = Script(answer(status, "ValidationException"))
    status, attempts = await run(script, (A, B))
    assert status == status
    assert attempts == 1
    assert script.sleeps == []


async def test_failed_connections_are_retried_and_raise_when_they_persist() -> None:
    refused = ServiceUnavailable("refused")
    status, attempts = await run(Script(refused, answer(200)))
    assert (status, attempts) == (200, 2)
    with pytest.raises(ServiceUnavailable):
        await run(Script(refused, refused, refused))


async def test_timeouts_are_not_retried() -> None:
    script = Script(ModelTimeout("slow"))
    with pytest.raises(ModelTimeout):
        await run(script)
    assert script.sleeps == []


async def test_no_retry_past_the_deadline() -> None:
    script = Script(answer(503, "ServiceUnavailableException"))
    # the 5 s backoff (0.5 x 10 s) would overrun the 4 s left
    status, attempts = await run(script, deadline=4.0, policy=RetryPolicy(5, 10, 60))
    assert (status, attempts, script.sleeps) == (503, 1, [])


async def test_no_capacity_for_a_retry_keeps_the_upstream_answer() -> None:
    script = Script(answer(429, "ThrottlingException"))
    script.now = 29.99  # the backoff leaves no time to be admitted again
    assert await run(script) == (429, 1)


async def test_a_spent_daily_quota_is_tried_elsewhere_and_teaches_no_per_minute_quota() -> None:
    script = Script(answer(429, "ThrottlingException", DAY_SPENT), answer(200))
    status, attempts = await run(script, (A, B))
    assert (status, attempts) == (200, 2)
    assert script.readmits == [(B,)]  # the spent route is not offered again
    assert script.throttled == []  # its per-minute quota is not to blame


async def test_a_spent_daily_quota_on_the_only_route_is_answered_at_once() -> None:
    script = Script(answer(429, "ThrottlingException", DAY_SPENT))
    assert await run(script, (A,)) == (429, 1)
    assert script.sleeps == []
    assert script.throttled == []
