"""This replica's shares of the quotas, and what it admitted itself in the last window.

The local store of ``failover.py``. Besides the admissions it makes itself while the shared
store is away, it records (``record``, ``correct``) what this replica admitted through the
shared store, on the window buckets only, so that at any moment it holds everything this
replica sent upstream in the last window. That is what makes the local share safe: a share
of quota / replicas counted over *this replica's own* admissions, not over an empty window.
Pure: no I/O, time passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gateway.limiter.core import Bucket, Charge, Denied, Kind, Plan
from gateway.limiter.memory import MemoryStore, wall_ms
from gateway.limiter.memory import _correct_window as correct_window


class ShareStore(MemoryStore):
    name = "local"

    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(clock_ms)
        self._windows: dict[str, Bucket] = {}
        self._full: dict[str, tuple[int, Bucket]] = {}
        """Window buckets the shared store last refused for lack of room: when, and the bucket."""
        self._others: dict[str, tuple[int, int]] = {}
        """Per window bucket, the (slot, amount) set aside for the other replicas' part."""

    def record(self, charges: tuple[Charge, ...], now: int) -> None:
        """Count ``charges`` (admitted elsewhere at ``now``) in their window buckets."""
        for charge in charges:
            bucket = charge.bucket
            if bucket.kind == Kind.WINDOW:
                if bucket.key not in self._windows:
                    self._windows[bucket.key] = bucket
                state = self._state(bucket, now)
                slot = now // bucket.slot_ms
                state.slots[slot] = state.slots.get(slot, 0) + charge.cost
                state.total += charge.cost

    def correct(self, charges: tuple[Charge, ...], admitted_ms: int, delta: int, now: int) -> None:
        """Settle a recorded admission: its window charges corrected by ``delta``."""
        if delta:
            for charge in charges:
                if charge.settles and charge.bucket.kind == Kind.WINDOW:
                    correct_window(self._state(charge.bucket, now), charge.bucket, admitted_ms,
                                   delta, now)  # fmt: skip

    def saw_full(self, bucket: Bucket, now: int) -> None:
        """The shared store refused on ``bucket`` (a window) at ``now``: it was full."""
        self._full[bucket.key] = (now, bucket)

    def set_aside(self, replicas: int, now: int) -> None:
        """The shared store just went away. For each window it refused on in the last span
        (the pool was full) this replica cannot know how the other replicas' parts were spread:
        they may hold all the quota this replica's own part leaves, so that much is set aside,
        counted in the newest slot (the latest it can leave the window). Elsewhere the others
        are taken to hold within their shares (the rest of the whole quota)."""
        for key, (seen, bucket) in self._full.items():
            if now - seen < bucket.slot_ms * bucket.span:
                state = self._state(bucket, now)
                amount = bucket.limit - state.total - bucket.limit // replicas
                if amount > 0:
                    slot = now // bucket.slot_ms
                    state.slots[slot] = state.slots.get(slot, 0) + amount
                    state.total += amount
                    old_slot, old = self._others.get(key, (slot, 0))
                    self._others[key] = (slot, amount + (old if old_slot == slot else 0))
        self._full.clear()

    def windows(self, now: int) -> list[tuple[Bucket, dict[int, int]]]:
        """What this replica itself admitted in each window bucket in the last window, by slot
        (not what it set aside for the others)."""
        seen = []
        for bucket in self._windows.values():
            slots = dict(self._state(bucket, now).slots)
            slot, others = self._others.get(bucket.key, (0, 0))
            if slot in slots:
                slots[slot] -= others
            slots = {s: v for s, v in slots.items() if v > 0}
            if slots:
                seen.append((bucket, slots))
        return seen

    def gate(self, plan: Plan, shares: Plan, now: int) -> Plan | Denied:
        """``plan`` restricted to what this replica's shares (``shares``: the same plan on
        share limits) let through: a denial when the common windows or every alternative's
        windows are out of share; else ``plan`` with each alternative out of share made one
        that can never fit (so the shared store skips it and indices keep their meaning)."""
        common, common_by = self._group_wait(_windows(shares.common), now)
        if common != 0:
            assert common_by is not None
            return Denied(common, common_by)
        waits: list[int | None] = []
        blocked: list[bool] = []
        first_by = None
        for alternative in shares.alternatives:
            wait, by = self._group_wait(_windows(alternative), now)
            blocked.append(wait != 0)
            if wait != 0:
                waits.append(wait)
                first_by = first_by or by
        if not any(blocked):
            return plan
        if all(blocked):
            assert first_by is not None
            finite = [w for w in waits if w is not None]
            return Denied(min(finite) if finite else None, first_by)
        alternatives = tuple(
            tuple(_never(c) for c in alt) if out else alt
            for alt, out in zip(plan.alternatives, blocked, strict=True)
        )
        return replace(plan, alternatives=alternatives)


def _windows(charges: tuple[Charge, ...]) -> tuple[Charge, ...]:
    return tuple(c for c in charges if c.bucket.kind == Kind.WINDOW)


def _never(charge: Charge) -> Charge:
    """A charge no bucket admits (cost above its limit), touching nothing when evaluated."""
    if charge.bucket.kind != Kind.WINDOW:
        return charge
    return replace(charge, cost=charge.bucket.limit + 1)
