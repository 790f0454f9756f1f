"""seed.lua against its reference: a replica's own record (shares.py) added to a Redis window.

A restarted Redis seeded with what one replica recorded must then admit and deny exactly as
that record does (same totals, same waits), on explicit times: nothing sleeps.
"""

from __future__ import annotations

from gateway.limiter.core import Admitted, Charge, Denied, Plan, window_bucket
from gateway.limiter.redis_store import RedisStore
from gateway.limiter.shares import ShareStore

T0 = 1_800_000_000_000


def tpm(key: str, limit: int = 1000) -> Charge:
    bucket = window_bucket(key, limit, window_ms=60_000, slot_ms=1000, margin_ms=0, label=key)
    return Charge(bucket, 0, settles=True)


def one(charge: Charge, cost: int) -> Plan:
    return Plan("m", (Charge(charge.bucket, cost, settles=True),))


async def test_a_seeded_redis_window_counts_what_the_record_holds(
    redis_store: RedisStore,
) -> None:
    a, b = tpm("{t}:a"), tpm("{t}:b", 500)
    record = ShareStore(lambda: T0)
    for at, charge, cost in ((0, a, 300), (20_000, a, 200), (30_000, b, 400), (59_000, a, 100)):
        record.record(one(charge, cost).common, T0 + at)
    now = T0 + 61_500  # a's first slot has left the window
    seeded = record.windows(now)
    assert await redis_store.seed(seeded, now) == 3
    for charge, fits in ((a, 700), (b, 100)):
        reference = record.admit_now(one(charge, fits + 1), now)
        denied = await redis_store.admit(one(charge, fits + 1), now)
        assert isinstance(reference, Denied)
        assert isinstance(denied, Denied)
        assert denied.retry_after_ms == reference.retry_after_ms
        assert isinstance(await redis_store.admit(one(charge, fits), now), Admitted)


async def test_seeding_adds_to_what_redis_already_holds(redis_store: RedisStore) -> None:
    a = tpm("{t}:a")
    assert isinstance(await redis_store.admit(one(a, 600), T0), Admitted)
    record = ShareStore(lambda: T0)
    record.record(one(a, 300).common, T0 + 1000)
    await redis_store.seed(record.windows(T0 + 2000), T0 + 2000)
    assert isinstance(await redis_store.admit(one(a, 101), T0 + 2000), Denied)
    assert isinstance(await redis_store.admit(one(a, 100), T0 + 2000), Admitted)
