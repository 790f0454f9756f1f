"""Property: the Lua scripts and the Python reference agree on random admit/settle/time steps."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limiter.adaptive import Aimd, State
from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Kind,
    Period,
    Plan,
    Tally,
    lease_bucket,
    period_bucket,
    window_bucket,
)
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from tests.limiter.conftest import fresh_store
from tests.servers import RedisServer

START = 1_798_761_000_000  # 2026-12-31T23:10Z: runs cross midnight, a month and a year
BUCKETS: list[Bucket] = [
    window_bucket("{p}:w1", 300, window_ms=60_000, slot_ms=250, margin_ms=500, label="tokens"),
    window_bucket("{p}:w2", 120, window_ms=10_000, slot_ms=1000, margin_ms=0, label="tokens"),
    window_bucket("{p}:rpm", 4, window_ms=60_000, slot_ms=1000, margin_ms=0, label="requests"),
    period_bucket("{p}:day", 900, Period.DAY, label="tokens"),
    period_bucket("{p}:month", 1500, Period.MONTH, label="tokens"),
    lease_bucket("{p}:conc", 3, ttl_ms=20_000, label="leases"),
    period_bucket("{p}:spend", 4000, Period.MONTH, label="spend"),
]
TALLY_KEYS = ("{p}:usage:a", "{p}:usage:b")


@dataclass(frozen=True)
class Admit:
    common: tuple[int, ...]
    alternatives: tuple[tuple[int, ...], ...]
    cost: int
    advance_ms: int
    watch: bool = False
    """Ask a denial for the slots of the plan's windows (the queue's forecast)."""


@dataclass(frozen=True)
class Settle:
    pick: int
    delta: int
    advance_ms: int
    spend: int = 0
    """The spend charge's correction (micro-dollars), apart from the tokens'."""
    tally: tuple[tuple[int, int, str, int], ...] = ()
    """Usage counters added in the same call: (key index, ttl_ms, field, amount)."""


def _charge(index: int, cost: int) -> Charge:
    bucket = BUCKETS[index]
    if bucket.label == "tokens":
        return Charge(bucket, cost, settles=True)
    if bucket.label == "spend":
        return Charge(bucket, cost * 3, settles=True, spend=True)
    return Charge(bucket, 1)


indices = st.lists(st.integers(0, len(BUCKETS) - 1), max_size=3, unique=True)
admits = st.builds(
    Admit,
    common=indices.map(tuple),
    alternatives=st.lists(indices.map(tuple), max_size=3).map(tuple),
    cost=st.integers(1, 350),
    advance_ms=st.sampled_from([0, 1, 249, 250, 999, 5_000, 30_000, 61_000, 3_600_000]),
    watch=st.booleans(),
)
tally_steps = st.tuples(
    st.integers(0, len(TALLY_KEYS) - 1), st.sampled_from([600_000, 3_600_000]),
    st.sampled_from(["in:m", "out:m", "n:x"]), st.integers(0, 5_000),
)  # fmt: skip
settles = st.builds(
    Settle, pick=st.integers(0, 50), delta=st.integers(-350, 200),
    advance_ms=st.sampled_from([0, 1, 500, 20_000, 70_000]), spend=st.integers(-1000, 600),
    tally=st.lists(tally_steps, max_size=4).map(tuple),
)  # fmt: skip


def _tally(step: Settle) -> Tally | None:
    if not step.tally:
        return None
    return Tally(tuple((TALLY_KEYS[k], ttl, ((field, n),)) for k, ttl, field, n in step.tally))


def _plan(step: Admit, member: str) -> Plan:
    used = set(step.common)
    alternatives = tuple(
        tuple(_charge(i, step.cost) for i in alt if i not in used) for alt in step.alternatives
    )
    common = tuple(_charge(i, step.cost) for i in step.common)
    flat = [c.bucket for group in (common, *alternatives) for c in group]
    watch = tuple(i for i, b in enumerate(flat) if b.kind == Kind.WINDOW) if step.watch else ()
    return Plan(member, common, alternatives, watch)


Tickets = list[tuple[Plan, Admitted]]


async def _step(
    lua: RedisStore, reference: MemoryStore, step: Admit | Settle, n: int, now: int,
    open_tickets: Tickets,
) -> None:  # fmt: skip
    """Run an admission or a settlement on both stores; admissions must agree."""
    if isinstance(step, Admit):
        plan = _plan(step, f"m{n}")
        expected = reference.admit_now(plan, now)
        assert await lua.admit(plan, now) == expected, (n, step)
        if isinstance(expected, Admitted):
            open_tickets.append((plan, expected))
    elif open_tickets:
        plan, admitted = open_tickets.pop(step.pick % len(open_tickets))
        tally = _tally(step)
        await reference.settle(plan, admitted, step.delta, now, spend=step.spend, tally=tally)
        await lua.settle(plan, admitted, step.delta, now, spend=step.spend, tally=tally)


async def _run(url: str, steps: list[Admit | Settle]) -> None:
    lua, reference = await fresh_store(url), MemoryStore()
    now, open_tickets = START, []
    added: dict[str, dict[str, int]] = {}
    try:
        for n, step in enumerate(steps):
            now += step.advance_ms
            settled = len(open_tickets)
            await _step(lua, reference, step, n, now, open_tickets)
            if isinstance(step, Settle) and len(open_tickets) < settled:
                for k, _, field, amount in step.tally:
                    counters = added.setdefault(TALLY_KEYS[k], {})
                    counters[field] = counters.get(field, 0) + amount
        # Redis expires tally hashes by its own clock, not the steps' (far shorter than any
        # ttl here): it holds every addition made. The reference's expiry: test_tallies.py.
        assert await lua.tallies(list(TALLY_KEYS)) == [added.get(k, {}) for k in TALLY_KEYS]
    finally:
        await lua.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(admits, settles), min_size=1, max_size=40))
def test_lua_and_python_agree(redis_server: RedisServer, steps: list[Admit | Settle]) -> None:
    asyncio.run(_run(redis_server.url, steps))


# ---- adapt.lua against Aimd: learned quotas measured on the pool's window ----------------


@dataclass(frozen=True)
class Throttle:
    advance_ms: int
    measured: bool
    """Whether the pool has a per-minute window to measure (a route without tpm has none)."""


throttles = st.builds(
    Throttle, advance_ms=st.sampled_from([0, 1, 1_500, 2_000, 10_000, 61_000, 200_000]),
    measured=st.booleans(),
)  # fmt: skip
aimds = st.builds(
    Aimd, decrease=st.floats(0.3, 0.95), recovery_per_s=st.sampled_from([0.0, 0.002, 0.05]),
    floor=st.sampled_from([0.05, 0.5]), cooldown_s=st.sampled_from([0.0, 2.0]),
    target=st.floats(0.5, 1.0), hold_s=st.sampled_from([0.0, 5.0, 60.0]),
)  # fmt: skip
window_admits = st.builds(
    Admit, common=st.just((0,)), alternatives=st.just(()), cost=st.integers(1, 300),
    advance_ms=st.sampled_from([0, 250, 5_000, 30_000, 61_000]),
)  # fmt: skip


async def _run_adapt(url: str, aimd: Aimd, steps: list[Admit | Settle | Throttle]) -> None:
    lua, reference = await fresh_store(url), MemoryStore()
    window = BUCKETS[0]
    now, open_tickets = START, []
    state: State | None = None
    try:
        for n, step in enumerate(steps):
            now += step.advance_ms
            if isinstance(step, Throttle):
                used = reference.used(window, now) / window.limit if step.measured else None
                expected = aimd.on_throttle(state, now / 1000, used)
                state = await lua.adapt("{p}:adapt", "pool", aimd, window if step.measured
                                        else None, now)  # fmt: skip
                assert state[0] == pytest.approx(expected[0], abs=2e-6), (n, step)
                assert state[1] == pytest.approx(expected[1], abs=2e-6), (n, step)
            else:
                await _step(lua, reference, step, n, now, open_tickets)
    finally:
        await lua.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aimd=aimds, steps=st.lists(st.one_of(window_admits, settles, throttles), min_size=1,
                                  max_size=30))  # fmt: skip
def test_adapt_lua_and_aimd_agree(
    redis_server: RedisServer, aimd: Aimd, steps: list[Admit | Settle | Throttle]
) -> None:
    asyncio.run(_run_adapt(redis_server.url, aimd, steps))
