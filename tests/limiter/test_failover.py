"""FailoverStore and its shares: the rolling-minute bound through an outage and a rejoin.

A manual clock and an in-memory "Redis" that can go away and come back empty (a restart);
nothing sleeps.
"""

from __future__ import annotations

from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Decision,
    Denied,
    Plan,
    Tally,
    window_bucket,
)
from gateway.limiter.failover import FailoverStore
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import StoreUnavailable
from gateway.limiter.shares import ShareStore

T0 = 1_700_000_000_000
TPM = 1000


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def wall(self) -> int:
        return self.ms

    def mono(self) -> float:
        return self.ms / 1000


class Redis:
    """A shared store that can be killed and restarted empty, counting its admissions."""

    name = "redis"

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.store = MemoryStore(clock.wall)
        self.up = True
        self.admits = 0
        self.seeded: list[tuple[Bucket, dict[int, int]]] = []

    def restart(self) -> None:
        self.store, self.up = MemoryStore(self._clock.wall), True

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision:
        if not self.up:
            raise StoreUnavailable("down")
        self.admits += 1
        return await self.store.admit(plan)

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None, *,
        spend: int = 0, tally: Tally | None = None,
    ) -> None:  # fmt: skip
        if not self.up:
            raise StoreUnavailable("down")
        await self.store.settle(plan, admitted, delta, spend=spend, tally=tally)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        if not self.up:
            raise StoreUnavailable("down")
        return await self.store.tallies(keys)

    async def add_tally(self, tally: Tally) -> None:
        if not self.up:
            raise StoreUnavailable("down")
        await self.store.add_tally(tally)

    async def seed(self, windows: list[tuple[Bucket, dict[int, int]]]) -> int:
        if not self.up:
            raise StoreUnavailable("down")
        self.seeded = windows
        for bucket, slots in windows:
            for slot, amount in slots.items():
                self.store.settle_now(
                    Plan("", (Charge(bucket, 0, settles=True),)),
                    Admitted(0, slot * bucket.slot_ms),
                    amount,
                    slot * bucket.slot_ms,
                )
        return len(windows)

    async def ping(self) -> bool:
        return self.up

    async def close(self) -> None:
        return None


class Listener:
    def __init__(self) -> None:
        self.failures = 0
        self.states: list[bool] = []

    def store_failed(self, operation: str) -> None:
        self.failures += 1

    def degraded(self, on: bool) -> None:
        self.states.append(on)


def tpm(key: str = "{t}:pool:a:tpm", limit: int = TPM) -> Charge:
    bucket = window_bucket(key, limit, window_ms=60_000, slot_ms=250, margin_ms=500, label=key)
    return Charge(bucket, 0, settles=True)


def plan(cost: int, *routes: str) -> Plan:
    keys = routes or ("{t}:pool:a:tpm",)
    return Plan("m", (), tuple((Charge(tpm(k).bucket, cost, settles=True),) for k in keys))


def failover(clock: Clock, redis: Redis) -> tuple[FailoverStore, Listener]:
    listener = Listener()
    store = FailoverStore(redis, mode="local", replicas=2, retry_after_s=1.0, listener=listener,
                          window_s=60.5, clock=clock.mono, wall_ms=clock.wall)  # fmt: skip
    return store, listener


async def admit(store: FailoverStore, cost: int, *routes: str) -> tuple[Decision, str]:
    decision, used = await store.admit(plan(cost, *routes))
    return decision, used.name


async def test_the_local_share_counts_what_this_replica_admitted_through_redis() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, listener = failover(clock, redis)
    for _ in range(4):
        assert isinstance((await admit(store, 100))[0], Admitted)
    redis.up = False
    clock.ms += 1000
    first, used = await admit(store, 100)  # own 400 + 100 fits the share of 500
    assert (isinstance(first, Admitted), used) == (True, "local")
    second, _ = await admit(store, 100)
    assert isinstance(second, Denied)
    assert second.bucket.limit == TPM // 2
    assert listener.states == [True]


async def test_a_refund_through_redis_gives_the_share_back() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, _ = failover(clock, redis)
    decision, _ = await store.admit(plan(500))
    assert isinstance(decision, Admitted)
    await store.settle(redis, plan(500), decision, -500)  # throttled upstream: never counted
    redis.up = False
    clock.ms += 1000
    assert isinstance((await admit(store, 500))[0], Admitted)


async def test_own_admissions_leave_the_share_once_their_window_has_passed() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, _ = failover(clock, redis)
    assert isinstance((await admit(store, 500))[0], Admitted)
    redis.up = False
    clock.ms += 1000
    assert isinstance((await admit(store, 1))[0], Denied)
    clock.ms += 60_000
    assert isinstance((await admit(store, 500))[0], Admitted)


async def test_a_restarted_empty_redis_is_gated_by_the_share_for_a_window() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, listener = failover(clock, redis)
    assert isinstance((await admit(store, 300))[0], Admitted)
    redis.up = False
    clock.ms += 1000
    assert (await admit(store, 200))[1] == "local"
    redis.restart()  # empty: it knows nothing of the 500 this replica sent
    clock.ms += 2000
    before = redis.admits
    decision, used = await admit(store, 100)
    assert isinstance(decision, Denied)
    assert (used, redis.admits) == ("local", before)  # refused before any round trip
    assert listener.states == [True, False]
    assert [sum(slots.values()) for _, slots in redis.seeded] == [500]  # what it sent, in Redis
    clock.ms += 59_000  # the first 300 left the window: the share has room, Redis admits
    decision, used = await admit(store, 300)
    assert (isinstance(decision, Admitted), used) == (True, "redis")
    clock.ms += 3_000  # a window and the retry interval after the rejoin: Redis alone
    assert not store.rejoining
    decision, used = await admit(store, 600)
    assert (isinstance(decision, Admitted), used) == (True, "redis")


async def test_the_gate_keeps_routes_in_order_and_skips_those_out_of_share() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, _ = failover(clock, redis)
    assert isinstance((await admit(store, 500, "{t}:pool:a:tpm")), tuple)
    redis.up = False
    clock.ms += 1000
    await admit(store, 1, "{t}:pool:a:tpm")
    redis.restart()
    clock.ms += 2000
    decision, used = await admit(store, 100, "{t}:pool:a:tpm", "{t}:pool:b:tpm")
    assert isinstance(decision, Admitted)
    assert (decision.alternative, used) == (2, "redis")


def test_gate_denies_when_no_alternative_is_within_share() -> None:
    shares = ShareStore(lambda: T0)
    whole = plan(400, "{t}:pool:a:tpm", "{t}:pool:b:tpm")
    shares.record(whole.committed(1) + whole.committed(2), T0)
    half = Plan("m", (), tuple((Charge(tpm(k, TPM // 2).bucket, 400, settles=True),)
                               for k in ("{t}:pool:a:tpm", "{t}:pool:b:tpm")))  # fmt: skip
    gated = shares.gate(whole, half, T0 + 1000)
    assert isinstance(gated, Denied)
    assert gated.retry_after_ms == 60_500 + 250 - 1000


def test_correct_moves_only_window_charges_of_a_recorded_admission() -> None:
    shares = ShareStore(lambda: T0)
    charges = plan(400).committed(1)
    shares.record(charges, T0)
    shares.correct(charges, T0, -150, T0 + 500)
    assert shares.used(charges[0].bucket, T0 + 500) == 250


async def test_a_pool_seen_full_sets_aside_what_the_others_may_hold() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, _ = failover(clock, redis)
    await redis.store.admit(plan(550))  # the other replica took 550 of the shared 1000
    assert isinstance((await admit(store, 400))[0], Admitted)  # this one took 400: 50 left
    assert isinstance((await admit(store, 100))[0], Denied)  # Redis: full
    redis.up = False
    clock.ms += 1000
    # Its own 400 leaves 100 of its share of 500, but the other may hold 550 (over its share):
    # all the quota not its own is set aside, so nothing fits until its own 400 leaves.
    assert isinstance((await admit(store, 50))[0], Denied)
    clock.ms += 60_000
    assert isinstance((await admit(store, 400))[0], Admitted)


async def test_what_is_set_aside_is_not_seeded_into_a_restarted_redis() -> None:
    clock = Clock()
    redis = Redis(clock)
    store, _ = failover(clock, redis)
    await redis.store.admit(plan(550))
    await admit(store, 400)
    await admit(store, 100)
    redis.up = False
    clock.ms += 1000
    await admit(store, 50)
    redis.restart()
    clock.ms += 2000
    await admit(store, 50)
    assert [slots for _, slots in redis.seeded] == [{T0 // 250: 400}]


def test_the_timed_redis_store_is_still_seedable() -> None:
    from gateway.limiter.failover import Seedable
    from gateway.limiter.redis_store import RedisStore
    from gateway.storewatch import TimedStore

    timed = TimedStore(RedisStore.from_url("redis://127.0.0.1:1/0", 0.1), lambda *_: None)
    assert isinstance(timed, Seedable)  # else a restarted Redis is never seeded
