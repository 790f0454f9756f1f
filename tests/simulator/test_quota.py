"""Quota pools with a manual clock: rolling-window edges, token bucket, RPM, tokens per day."""

from __future__ import annotations

import pytest

from gateway.simulator.quota import Denial, Limit, Limits, Mode, QuotaPool, Reservation


def rolling(tpm: int, rpm: int | None = None, tpd: int | None = None) -> QuotaPool:
    return QuotaPool(Limits(tpm, rpm, tpd), Mode.ROLLING, now=0.0)


def bucket(tpm: int, rpm: int | None = None) -> QuotaPool:
    return QuotaPool(Limits(tpm, rpm), Mode.BUCKET, now=0.0)


def admitted(outcome: Reservation | Denial) -> Reservation:
    assert isinstance(outcome, Reservation), outcome
    return outcome


def denied(outcome: Reservation | Denial, limit: Limit) -> None:
    assert isinstance(outcome, Denial), outcome
    assert outcome.limit is limit
    assert not outcome.never


# --- rolling window ----------------------------------------------------------------------


def test_rolling_window_is_open_at_exactly_60_seconds() -> None:
    pool = rolling(100)
    admitted(pool.try_reserve(0.0, 0, 100))
    denied(pool.try_reserve(59.999, 0, 1), Limit.TOKENS_PER_MINUTE)
    # (now - 60, now] excludes a start at exactly now - 60.
    admitted(pool.try_reserve(60.0, 0, 100))
    denied(pool.try_reserve(60.0, 0, 1), Limit.TOKENS_PER_MINUTE)


def test_idle_then_burst_admits_only_tpm_in_any_minute() -> None:
    pool = rolling(1000)
    # A long idle spell earns nothing, unlike a bucket's stored capacity.
    results = [pool.try_reserve(600.0 + i * 0.5, 0, 100) for i in range(40)]
    assert sum(isinstance(r, Reservation) for r in results) == 10
    assert all(isinstance(r, Reservation) for r in results[:10])
    admitted(pool.try_reserve(660.0, 0, 100))  # the first one (t=600) left the window
    assert pool.stats(700.0).max_rolling_60s_tokens == 1000


def test_refunds_at_settle_let_more_in() -> None:
    pool = rolling(1000)
    first = admitted(pool.try_reserve(0.0, 0, 500))
    admitted(pool.try_reserve(1.0, 0, 500))
    denied(pool.try_reserve(2.0, 0, 400), Limit.TOKENS_PER_MINUTE)
    pool.settle(first, 3.0, 100)
    admitted(pool.try_reserve(4.0, 0, 400))
    denied(pool.try_reserve(5.0, 0, 1), Limit.TOKENS_PER_MINUTE)


def test_in_flight_requests_count_at_their_reservation() -> None:
    pool = rolling(1000)
    admitted(pool.try_reserve(0.0, 0, 800))  # never settled
    denied(pool.try_reserve(30.0, 0, 201), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(30.0, 0, 200))
    assert pool.stats(30.0).in_flight == 2
    assert pool.stats(30.0).window_tokens == 1000


def test_corrections_apply_at_the_start_time() -> None:
    pool = rolling(1000)
    long_call = admitted(pool.try_reserve(0.0, 0, 500))
    admitted(pool.try_reserve(50.0, 0, 500))
    # Settled at t=70, after its start left the window: it must not free room now.
    pool.settle(long_call, 70.0, 10)
    denied(pool.try_reserve(70.0, 0, 501), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(70.0, 0, 500))


def test_over_charge_at_settle_blocks_later_requests() -> None:
    pool = rolling(1000)
    call = admitted(pool.try_reserve(0.0, 0, 100))
    pool.settle(call, 1.0, 900)
    denied(pool.try_reserve(2.0, 0, 101), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(2.0, 0, 100))


def test_settle_is_idempotent() -> None:
    pool = rolling(1000)
    call = admitted(pool.try_reserve(0.0, 0, 600))
    pool.settle(call, 1.0, 100)
    pool.settle(call, 2.0, 900)
    stats = pool.stats(3.0)
    assert (stats.settled, stats.tokens, stats.window_tokens) == (1, 100, 100)


def test_reservation_over_tpm_is_never_admitted() -> None:
    pool = rolling(1000)
    outcome = pool.try_reserve(0.0, 0, 1001)
    assert outcome == Denial(Limit.TOKENS_PER_MINUTE, never=True)
    stats = pool.stats(0.0)
    assert (stats.rejected, stats.throttled, stats.requests) == (1, 0, 1)


# --- token bucket ------------------------------------------------------------------------


def test_bucket_admits_its_capacity_at_once_after_idle() -> None:
    pool = bucket(600)  # capacity 600, refills 10 tokens/s
    for _ in range(6):
        admitted(pool.try_reserve(100.0, 0, 100))
    denied(pool.try_reserve(100.0, 0, 1), Limit.TOKENS_PER_MINUTE)
    # ...and 60 s later another full minute's worth: twice the TPM in about one minute.
    for _ in range(6):
        admitted(pool.try_reserve(160.0, 0, 100))


def test_bucket_refills_at_tpm_per_minute() -> None:
    pool = bucket(600)
    admitted(pool.try_reserve(0.0, 0, 600))
    denied(pool.try_reserve(1.0, 0, 11), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(1.0, 0, 10))
    denied(pool.try_reserve(1.5, 0, 6), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(1.5, 0, 5))


def test_bucket_refunds_at_settle_up_to_capacity() -> None:
    pool = bucket(600)
    call = admitted(pool.try_reserve(0.0, 0, 600))
    pool.settle(call, 0.0, 100)
    admitted(pool.try_reserve(0.0, 0, 500))
    denied(pool.try_reserve(0.0, 0, 1), Limit.TOKENS_PER_MINUTE)


def test_bucket_goes_negative_after_an_over_charge() -> None:
    pool = bucket(600)
    call = admitted(pool.try_reserve(0.0, 0, 600))
    pool.settle(call, 0.0, 900)  # level -300: 30 s of refill before anything fits
    denied(pool.try_reserve(29.9, 0, 1), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(30.2, 0, 1))


# --- requests per minute and tokens per day ----------------------------------------------


@pytest.mark.parametrize("mode", [Mode.ROLLING, Mode.BUCKET])
def test_rpm_denial_names_requests(mode: Mode) -> None:
    pool = QuotaPool(Limits(10_000, rpm=2), mode, now=0.0)
    admitted(pool.try_reserve(0.0, 0, 1))
    admitted(pool.try_reserve(0.0, 0, 1))
    denied(pool.try_reserve(0.0, 0, 1), Limit.REQUESTS_PER_MINUTE)
    admitted(pool.try_reserve(60.0, 0, 1))
    assert pool.stats(60.0).throttled_by == {
        "tokens_per_minute": 0,
        "requests_per_minute": 1,
        "tokens_per_day": 0,
    }


def test_tokens_per_day_denial_and_new_day() -> None:
    pool = rolling(1000, tpd=1000)
    first = admitted(pool.try_reserve(0.0, 7, 600))
    denied(pool.try_reserve(61.0, 7, 600), Limit.TOKENS_PER_DAY)
    pool.settle(first, 62.0, 200)  # refunds the day too
    admitted(pool.try_reserve(63.0, 7, 600))
    denied(pool.try_reserve(200.0, 7, 300), Limit.TOKENS_PER_DAY)
    admitted(pool.try_reserve(200.0, 8, 900))  # a new UTC day starts from zero
    assert pool.stats(200.0).day_tokens == 900


def test_zero_daily_quota_throttles_everything() -> None:
    pool = rolling(1000, tpd=0)
    denied(pool.try_reserve(0.0, 0, 1), Limit.TOKENS_PER_DAY)


# --- runtime changes and stats -----------------------------------------------------------


def test_lowering_the_quota_counts_existing_usage() -> None:
    pool = rolling(1000)
    admitted(pool.try_reserve(0.0, 0, 400))
    pool.set_limits(Limits(500), Mode.ROLLING, 1.0)
    denied(pool.try_reserve(1.0, 0, 101), Limit.TOKENS_PER_MINUTE)
    admitted(pool.try_reserve(1.0, 0, 100))


def test_switching_to_bucket_starts_full() -> None:
    pool = rolling(600)
    admitted(pool.try_reserve(0.0, 0, 600))
    pool.set_limits(Limits(600), Mode.BUCKET, 1.0)
    admitted(pool.try_reserve(1.0, 0, 600))


def test_stats_counters() -> None:
    pool = rolling(1000)
    a = admitted(pool.try_reserve(0.0, 0, 300))
    admitted(pool.try_reserve(1.0, 0, 300))
    denied(pool.try_reserve(2.0, 0, 500), Limit.TOKENS_PER_MINUTE)
    pool.settle(a, 3.0, 120)
    stats = pool.stats(4.0, timeline_offset=1000.0)
    assert stats.admitted == 2
    assert stats.throttled == 1
    assert stats.requests == 3
    assert stats.settled == 1
    assert stats.tokens == 120
    assert stats.in_flight == 1
    assert stats.max_rolling_60s_tokens == 420
    assert stats.max_rolling_60s_requests == 2
    assert stats.timeline == [(1000, 120, 1)]  # settled only, by start second
