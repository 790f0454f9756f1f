"""The in-memory store: the limiter core run in this process (the embedded default).

It is also the reference the Lua scripts are tested against, so it follows them step by step:
expired slots are dropped when a bucket is touched, a bucket idle for a whole span is reset,
and nothing depends on key expiry (Redis uses that only to collect garbage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Decision,
    Denied,
    Kind,
    Plan,
    Tally,
    WindowView,
    combine_waits,
    period_end_ms,
    period_of,
    slot_of,
)

LEASE_WAIT_HINT_MS = 250


@dataclass
class _State:
    total: int = 0
    oldest: int = 0
    slots: dict[int, int] = field(default_factory=dict)
    period: int = -1
    leases: dict[str, int] = field(default_factory=dict)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryStore:
    name = "memory"

    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._clock = clock_ms
        self._states: dict[str, _State] = {}
        self._tallies: dict[str, tuple[int, dict[str, int]]] = {}
        """Tally hashes: when each expires (ms) and its counters."""
        self._tally_sweep = 0

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision:
        return self.admit_now(plan, self._clock() if now_ms is None else now_ms)

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None, *,
        spend: int = 0, tally: Tally | None = None,
    ) -> None:  # fmt: skip
        now = self._clock() if now_ms is None else now_ms
        self.settle_now(plan, admitted, delta, now, spend)
        if tally is not None:
            self.add_tally_now(tally, now)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        now = self._clock()
        found = [self._tallies.get(key) for key in keys]
        return [dict(entry[1]) if entry and entry[0] > now else {} for entry in found]

    async def add_tally(self, tally: Tally) -> None:
        self.add_tally_now(tally, self._clock())

    def add_tally_now(self, tally: Tally, now: int) -> None:
        """Redis's HINCRBY and PEXPIRE: an expired hash starts again from nothing."""
        for key, ttl_ms, fields in tally.counts:
            entry = self._tallies.get(key)
            counters = entry[1] if entry and entry[0] > now else {}
            for name, amount in fields:
                counters[name] = counters.get(name, 0) + amount
            self._tallies[key] = (now + ttl_ms, counters)
        self._tally_sweep += 1
        if self._tally_sweep >= 4096:  # drop expired hashes now and then: memory stays bounded
            self._tally_sweep = 0
            for key in [k for k, (until, _) in self._tallies.items() if until <= now]:
                del self._tallies[key]

    async def ping(self) -> bool:
        return True

    def used(self, bucket: Bucket, now_ms: int | None = None) -> int:
        """What a window or period bucket counts now (the learned quotas' measurement)."""
        return self._state(bucket, self._clock() if now_ms is None else now_ms).total

    async def close(self) -> None:
        return None

    # ---- synchronous core --------------------------------------------------------------

    def admit_now(self, plan: Plan, now: int) -> Decision:
        waits: list[int | None] = []
        blocker: Bucket | None = None
        chosen = -1
        for index, group in enumerate(plan.groups()):
            wait, denied_by = self._group_wait(group, now)
            if index == 0:
                common_wait, common_blocker = wait, denied_by
            elif wait == 0:
                chosen = index
                break
            else:
                waits.append(wait)
                blocker = blocker or denied_by
        if common_wait == 0 and (chosen > 0 or not plan.alternatives):
            alternative = max(chosen, 0)
            for charge in plan.committed(alternative):
                self._add(charge, plan.member, now)
            return Admitted(alternative, now, self._remaining(plan))
        # an alternative that fits now leaves the plan waiting only on its common charges
        wait = common_wait if chosen > 0 else combine_waits(common_wait, waits)
        bucket = common_blocker if common_wait != 0 else blocker
        assert bucket is not None
        used = self._state(bucket, now).total if bucket.kind == Kind.PERIOD else None
        return Denied(wait, bucket, now, self._views(plan, now), used)

    def _views(self, plan: Plan, now: int) -> tuple[WindowView, ...]:
        flat = [c.bucket for group in plan.groups() for c in group]
        views = []
        for index in plan.watch:
            bucket = flat[index]
            state = self._state(bucket, now)
            current = slot_of(now, bucket.slot_ms)
            slots = tuple(state.slots.get(s, 0)
                          for s in range(current - bucket.span + 1, current + 1))  # fmt: skip
            views.append(WindowView(bucket.limit, bucket.slot_ms, bucket.span, slots))
        return tuple(views)

    def _remaining(self, plan: Plan) -> int | None:
        if not plan.common or plan.common[0].bucket.kind == Kind.LEASES:
            return None
        bucket = plan.common[0].bucket
        return max(0, bucket.limit - self._states[bucket.key].total)

    def _group_wait(self, group: tuple[Charge, ...], now: int) -> tuple[int | None, Bucket | None]:
        """0 when every charge fits now; else the longest wait (None: never) and its bucket."""
        worst: int | None = 0
        blocker = None
        for charge in group:
            wait = self._wait(charge, now)
            if wait != 0 and (worst == 0 or wait is None or (worst is not None and wait > worst)):
                worst, blocker = wait, charge.bucket
        return worst, blocker

    def _state(self, bucket: Bucket, now: int) -> _State:
        state = self._states.setdefault(bucket.key, _State())
        if bucket.kind == Kind.WINDOW:
            _advance_window(state, slot_of(now, bucket.slot_ms), bucket.span)
        elif bucket.kind == Kind.PERIOD:
            current = period_of(now, bucket.period)
            if state.period != current:
                state.period, state.total = current, 0
        else:
            state.leases = {m: exp for m, exp in state.leases.items() if exp > now}
        return state

    def _wait(self, charge: Charge, now: int) -> int | None:
        bucket, cost = charge.bucket, charge.cost
        state = self._state(bucket, now)
        if cost > bucket.limit:
            return None
        if bucket.kind == Kind.LEASES:
            if len(state.leases) + cost <= bucket.limit:
                return 0
            return max(1, min(LEASE_WAIT_HINT_MS, min(state.leases.values()) - now))
        if state.total + cost <= bucket.limit:
            return 0
        if bucket.kind == Kind.PERIOD:
            return period_end_ms(now, bucket.period) - now
        return _window_wait(state, bucket, cost, now)

    def _add(self, charge: Charge, member: str, now: int) -> None:
        bucket = charge.bucket
        state = self._states[bucket.key]
        if bucket.kind == Kind.LEASES:
            state.leases[member] = now + bucket.ttl_ms
            return
        state.total += charge.cost
        if bucket.kind == Kind.WINDOW:
            slot = slot_of(now, bucket.slot_ms)
            state.slots[slot] = state.slots.get(slot, 0) + charge.cost

    def settle_now(
        self, plan: Plan, admitted: Admitted, delta: int, now: int, spend: int = 0
    ) -> None:
        for charge in plan.committed(admitted.alternative):
            bucket = charge.bucket
            state = self._state(bucket, now)
            change = charge.delta(delta, spend)
            if bucket.kind == Kind.LEASES:
                state.leases.pop(plan.member, None)
            elif change == 0:
                continue
            elif bucket.kind == Kind.PERIOD:
                if state.period == period_of(admitted.now_ms, bucket.period):
                    state.total = max(0, state.total + change)
            else:
                _correct_window(state, bucket, admitted.now_ms, change, now)


def _advance_window(state: _State, current: int, span: int) -> None:
    first = current - span + 1
    if state.oldest >= first:
        return
    if first - state.oldest >= span:
        state.slots.clear()
        state.total = 0
    else:
        for slot in range(state.oldest, first):
            state.total -= state.slots.pop(slot, 0)
    state.oldest = first


def _window_wait(state: _State, bucket: Bucket, cost: int, now: int) -> int:
    slot_ms, span = bucket.slot_ms, bucket.span
    current = slot_of(now, slot_ms)
    need = state.total + cost - bucket.limit
    freed = 0
    for slot in range(current - span + 1, current + 1):
        freed += state.slots.get(slot, 0)
        if freed >= need:
            return (slot + span) * slot_ms - now
    raise AssertionError("a cost within the limit always fits once the window has passed")


def _correct_window(state: _State, bucket: Bucket, admitted_ms: int, delta: int, now: int) -> None:
    slot = slot_of(admitted_ms, bucket.slot_ms)
    current = slot_of(now, bucket.slot_ms)
    if slot > current - bucket.span and slot in state.slots:
        old = state.slots[slot]
        new = max(0, old + delta)
        state.slots[slot] = new
        state.total += new - old
    elif delta > 0:
        state.slots[current] = state.slots.get(current, 0) + delta
        state.total += delta
