"""One behaviour suite, run against the in-memory store and the Redis (Lua) store.

Every call passes an explicit time in ms, so window edges are exact and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.limiter.core import (
    Admitted,
    Charge,
    Denied,
    Period,
    Plan,
    lease_bucket,
    period_bucket,
    window_bucket,
)
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore

Store = MemoryStore | RedisStore
T0 = 1_800_000_000_000  # an arbitrary instant, in ms


def tpm(limit: int = 100, key: str = "{t}:tpm", margin_ms: int = 0) -> object:
    return window_bucket(key, limit, window_ms=60_000, slot_ms=1000, margin_ms=margin_ms,
                         label="tokens/minute")  # fmt: skip


def plan(*charges: Charge, alternatives: tuple[tuple[Charge, ...], ...] = (),
         member: str = "r1") -> Plan:  # fmt: skip
    return Plan(member, tuple(charges), alternatives)


def tokens(bucket: object, cost: int) -> Charge:
    assert not isinstance(bucket, str)
    return Charge(bucket, cost, settles=True)  # type: ignore[arg-type]


async def test_window_admits_up_to_the_limit_then_says_when(store: Store) -> None:
    bucket = tpm()
    assert isinstance(await store.admit(plan(tokens(bucket, 60)), T0), Admitted)
    assert isinstance(await store.admit(plan(tokens(bucket, 40)), T0 + 10_000), Admitted)
    denied = await store.admit(plan(tokens(bucket, 10)), T0 + 20_000)
    assert isinstance(denied, Denied)
    # slot T0 leaves a 61-slot span when the current slot is T0's + 61
    assert denied.retry_after_ms == 61_000 - 20_000
    assert denied.bucket == bucket


async def test_window_edge_is_exact(store: Store) -> None:
    bucket = tpm()
    await store.admit(plan(tokens(bucket, 100)), T0)
    assert isinstance(await store.admit(plan(tokens(bucket, 1)), T0 + 60_999), Denied)
    assert isinstance(await store.admit(plan(tokens(bucket, 100)), T0 + 61_000), Admitted)


async def test_idle_then_burst_never_exceeds_the_limit_in_any_rolling_minute(store: Store) -> None:
    bucket = tpm(limit=1000)
    admitted: list[tuple[int, int]] = []
    for step in range(0, 200_000, 700):  # a request every 0.7 s for 200 s, after a long idle
        now = T0 + 10 * 86_400_000 + step
        decision = await store.admit(plan(tokens(bucket, 37), member=f"m{step}"), now)
        if isinstance(decision, Admitted):
            admitted.append((now, 37))
    for start, _ in admitted:
        in_window = sum(c for t, c in admitted if start <= t < start + 60_000)
        assert in_window <= 1000
    assert sum(c for _, c in admitted) >= 3 * 1000 * 0.95  # and it fills: ~3 minutes of quota


async def test_refund_at_settlement_frees_capacity(store: Store) -> None:
    bucket = tpm()
    the_plan = plan(tokens(bucket, 100))
    admitted = await store.admit(the_plan, T0)
    assert isinstance(admitted, Admitted)
    await store.settle(the_plan, admitted, -70, T0 + 1000)
    assert isinstance(await store.admit(plan(tokens(bucket, 71), member="b"), T0 + 2000), Denied)
    assert isinstance(await store.admit(plan(tokens(bucket, 70), member="c"), T0 + 2000), Admitted)


async def test_over_charge_at_settlement_holds_capacity(store: Store) -> None:
    bucket = tpm()
    the_plan = plan(tokens(bucket, 50))
    admitted = await store.admit(the_plan, T0)
    assert isinstance(admitted, Admitted)
    await store.settle(the_plan, admitted, +30, T0 + 1000)
    denied = await store.admit(plan(tokens(bucket, 21), member="b"), T0 + 2000)
    assert isinstance(denied, Denied)
    assert denied.retry_after_ms == 61_000 - 2000
    assert isinstance(await store.admit(plan(tokens(bucket, 20), member="c"), T0 + 2000), Admitted)


async def test_settlement_after_the_slot_expired(store: Store) -> None:
    bucket = tpm()
    the_plan = plan(tokens(bucket, 50))
    admitted = await store.admit(the_plan, T0)
    assert isinstance(admitted, Admitted)
    await store.settle(the_plan, admitted, +30, T0 + 90_000)  # over-charge lands now
    later = T0 + 90_000
    assert isinstance(await store.admit(plan(tokens(bucket, 71), member="b"), later), Denied)
    assert isinstance(await store.admit(plan(tokens(bucket, 70), member="c"), later), Admitted)


async def test_a_cost_above_the_limit_is_never_admitted(store: Store) -> None:
    denied = await store.admit(plan(tokens(tpm(), 101)), T0)
    assert isinstance(denied, Denied)
    assert denied.retry_after_ms is None


async def test_all_or_nothing(store: Store) -> None:
    tenant, pool = tpm(key="{t}:tenant"), tpm(limit=10, key="{t}:pool")
    denied = await store.admit(plan(tokens(tenant, 50), tokens(pool, 20)), T0)
    assert isinstance(denied, Denied)
    assert denied.bucket == pool
    # the tenant bucket spent nothing: its whole limit is still there
    assert isinstance(await store.admit(plan(tokens(tenant, 100)), T0), Admitted)


async def test_first_alternative_that_fits_is_taken(store: Store) -> None:
    tenant = tpm(key="{t}:tenant")
    full, roomy = tpm(limit=10, key="{t}:pool-a"), tpm(limit=100, key="{t}:pool-b")
    decision = await store.admit(
        plan(tokens(tenant, 20), alternatives=((tokens(full, 20),), (tokens(roomy, 20),))), T0
    )
    assert decision == Admitted(2, T0, remaining=80)  # the tenant bucket: 100 - 20
    # only the chosen alternative was charged
    assert isinstance(await store.admit(plan(tokens(full, 10), member="x"), T0), Admitted)
    assert isinstance(await store.admit(plan(tokens(roomy, 81), member="y"), T0), Denied)


async def test_denied_alternatives_report_the_soonest(store: Store) -> None:
    a, b = tpm(limit=10, key="{t}:a"), tpm(limit=10, key="{t}:b")
    await store.admit(plan(tokens(a, 10), member="1"), T0)
    await store.admit(plan(tokens(b, 10), member="2"), T0 + 5000)
    denied = await store.admit(
        plan(alternatives=((tokens(a, 5),), (tokens(b, 5),)), member="3"), T0 + 10_000
    )
    assert isinstance(denied, Denied)
    assert denied.retry_after_ms == 61_000 - 10_000


async def test_leases_limit_concurrency_and_expire(store: Store) -> None:
    leases = lease_bucket("{t}:conc", 2, ttl_ms=30_000, label="concurrent requests")
    first = plan(Charge(leases, 1), member="a")
    decision = await store.admit(first, T0)
    assert isinstance(decision, Admitted)
    assert isinstance(await store.admit(plan(Charge(leases, 1), member="b"), T0), Admitted)
    assert isinstance(await store.admit(plan(Charge(leases, 1), member="c"), T0), Denied)
    await store.settle(first, decision, 0, T0 + 100)
    assert isinstance(await store.admit(plan(Charge(leases, 1), member="c"), T0 + 100), Admitted)
    # b and c never settle (a replica died): their leases lapse after the ttl
    assert isinstance(await store.admit(plan(Charge(leases, 1), member="d"), T0 + 200), Denied)
    assert isinstance(await store.admit(plan(Charge(leases, 1), member="d"), T0 + 30_101), Admitted)


def _ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


async def test_day_budget_resets_at_utc_midnight(store: Store) -> None:
    day = period_bucket("{t}:day", 100, Period.DAY, label="tokens/day")
    late = _ms(2026, 11, 22, 23, 59, 59)
    assert isinstance(await store.admit(plan(tokens(day, 100)), late), Admitted)
    denied = await store.admit(plan(tokens(day, 1), member="b"), late)
    assert isinstance(denied, Denied)
    assert denied.retry_after_ms == 1000
    assert isinstance(await store.admit(plan(tokens(day, 100), member="c"), late + 1000), Admitted)


@pytest.mark.parametrize(
    ("now", "end"),
    [((2026, 11, 22, 12), (2026, 12, 1)), ((2026, 12, 31, 23), (2027, 1, 1)),
     ((2028, 2, 28, 0), (2028, 3, 1)), ((2026, 1, 1, 0), (2026, 2, 1))],
)  # fmt: skip
async def test_month_budget_waits_until_the_first_of_next_month(
    store: Store, now: tuple[int, ...], end: tuple[int, ...]
) -> None:
    month = period_bucket("{t}:month", 10, Period.MONTH, label="tokens/month")
    assert isinstance(await store.admit(plan(tokens(month, 10)), _ms(*now)), Admitted)
    denied = await store.admit(plan(tokens(month, 1), member="b"), _ms(*now))
    assert isinstance(denied, Denied)
    assert denied.retry_after_ms == _ms(*end) - _ms(*now)


async def test_settling_a_day_budget(store: Store) -> None:
    day = period_bucket("{t}:day", 100, Period.DAY, label="tokens/day")
    the_plan = plan(tokens(day, 80))
    admitted = await store.admit(the_plan, T0)
    assert isinstance(admitted, Admitted)
    await store.settle(the_plan, admitted, -50, T0 + 10)
    assert isinstance(await store.admit(plan(tokens(day, 70), member="b"), T0 + 20), Admitted)


async def test_request_counts_are_not_corrected(store: Store) -> None:
    rpm = window_bucket("{t}:rpm", 2, window_ms=60_000, slot_ms=1000, margin_ms=0, label="rpm")
    the_plan = plan(Charge(rpm, 1))
    admitted = await store.admit(the_plan, T0)
    assert isinstance(admitted, Admitted)
    await store.settle(the_plan, admitted, -1000, T0 + 1)
    assert isinstance(await store.admit(plan(Charge(rpm, 1), member="b"), T0 + 2), Admitted)
    assert isinstance(await store.admit(plan(Charge(rpm, 1), member="c"), T0 + 3), Denied)


async def test_hundred_concurrent_admissions_at_a_limit_of_five(redis_store: RedisStore) -> None:
    bucket = window_bucket("{t}:five", 5, window_ms=60_000, slot_ms=1000, margin_ms=0, label="r")
    decisions = await asyncio.gather(
        *(redis_store.admit(plan(Charge(bucket, 1), member=f"m{i}")) for i in range(100))
    )
    assert sum(isinstance(d, Admitted) for d in decisions) == 5
