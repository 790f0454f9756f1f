"""Calibration factors shared through the store: the same behaviour in memory and on Redis.

Time is injected (the Redis script takes it as an argument in tests), so nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gateway.calibration import CalibrationPolicy
from gateway.limiter.calibrating import Calibrations, family
from gateway.limiter.redis_store import RedisStore, StoreUnavailable
from tests.limiter.conftest import fresh_store
from tests.servers import RedisServer

KEY = ("claude", "converse")
KEYS = [KEY, ("claude", "invoke")]
POLICY = CalibrationPolicy()
Make = Callable[[], Calibrations]


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
async def make(
    request: pytest.FixtureRequest, redis_server: RedisServer, clock: Clock
) -> AsyncIterator[Make]:
    """``make()`` → a replica's Calibrations; on Redis, every replica shares one store."""
    stores: list[RedisStore] = []
    shared: list[Calibrations] = []

    def build() -> Calibrations:
        if request.param == "memory":
            if not shared:  # one process: one in-memory histogram, as with the memory store
                shared.append(Calibrations(POLICY, KEYS, None, "bgw", clock_ms=clock))
            return shared[0]
        return Calibrations(POLICY, KEYS, stores[-1], "bgw", clock_ms=clock)

    if request.param == "redis":
        stores.append(await fresh_store(redis_server.url))
    yield build
    for store in stores:
        await store.close()


async def test_starts_from_the_initial_factor_until_enough_answers(make: Make) -> None:
    replica = make()
    for _ in range(POLICY.min_samples - 1):
        replica.observe(KEY, 1000, 1300)
    await replica.refresh()
    assert replica.factor(KEY) == POLICY.initial
    replica.observe(KEY, 1000, 1300)
    await replica.refresh()
    assert replica.factor(KEY) == pytest.approx(1.30, abs=0.014)
    assert replica.factor(("claude", "invoke")) == POLICY.initial  # families apart


async def test_a_new_replica_takes_the_learned_factor_before_its_first_answer(make: Make) -> None:
    first = make()
    for _ in range(40):
        first.observe(KEY, 1000, 950)
    await first.refresh()
    late = make()
    await late.refresh()
    assert late.factor(KEY) == first.factor(KEY)
    assert late.factor(KEY) == pytest.approx(0.95, abs=0.011)
    assert late.status()[0] == {"model": "claude", "family": "converse",
                                "factor": round(first.factor(KEY), 4), "samples": 40}  # fmt: skip


async def test_the_factor_follows_the_upstream_within_a_minute(make: Make, clock: Clock) -> None:
    replica = make()
    for _ in range(10):  # two minutes of answers counted 20 % over the estimate
        for _ in range(5):
            replica.observe(KEY, 1000, 1200)
        await replica.refresh()
        clock.ms += 12_000
    assert replica.factor(KEY) == pytest.approx(1.20, abs=0.013)
    for _ in range(6):  # then the upstream counts 10 % under, for a minute
        for _ in range(5):
            replica.observe(KEY, 1000, 900)
        await replica.refresh()
        clock.ms += 12_000
    clock.ms -= 12_000
    await replica.refresh()
    assert replica.factor(KEY) == pytest.approx(0.90, abs=0.011)


async def test_unknown_models_are_not_kept(make: Make) -> None:
    replica = make()
    for _ in range(50):
        replica.observe(("not-configured", "converse"), 1000, 2000)
    await replica.refresh()
    assert [s["samples"] for s in replica.status()] == [0, 0]


async def test_samples_wait_while_redis_is_away(redis_server: RedisServer, clock: Clock) -> None:
    down = RedisStore.from_url("redis://127.0.0.1:1/0", timeout_s=0.2)
    replica = Calibrations(POLICY, KEYS, down, "bgw", clock_ms=clock)
    for _ in range(30):
        replica.observe(KEY, 1000, 1100)
    with pytest.raises(StoreUnavailable):
        await replica.refresh()
    assert replica.factor(KEY) == POLICY.initial  # the last factor stays
    up = await fresh_store(redis_server.url)
    replica._shared = up  # Redis is back (same replica, same pending samples)
    await replica.refresh()
    assert replica.factor(KEY) == pytest.approx(1.10, abs=0.012)
    await up.close()
    await down.close()


def test_families() -> None:
    assert family("converse-stream") == family("converse") == "converse"
    assert family("invoke-with-response-stream") == family("invoke") == "invoke"
