"""The store seam: what the limiter asks of wherever quota state lives, in one place.

``Store`` is one store (``MemoryStore`` in process, ``RedisStore`` shared): admit a plan,
settle an admission, add to and read usage tallies. What the limiter holds is a ``Stores``:
``FailoverStore`` (a shared store with this replica's share to fall back on) or ``Direct``
(one store as it is, the memory store of a single process), so callers need not ask which.
``StoreUnavailable`` is how any store says it did not answer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.limiter.adaptive import Aimd, State
from gateway.limiter.core import Admitted, Bucket, Decision, Plan, Tally


class StoreUnavailable(Exception):
    """The shared store did not answer; the limiter decides what that means."""


class Store(Protocol):
    name: str

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision: ...

    async def settle(
        self,
        plan: Plan,
        admitted: Admitted,
        delta: int,
        now_ms: int | None = None,
        *,
        spend: int = 0,
        tally: Tally | None = None,
    ) -> None: ...

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]: ...

    async def add_tally(self, tally: Tally) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class SharedState(Protocol):
    """What the learned quotas and the estimate calibration keep in the shared store (Redis):
    one script call each, read and written by every replica."""

    async def adapt(
        self, key: str, pool: str, aimd: Aimd, window: Bucket | None, now_ms: int | None = None
    ) -> State: ...

    async def learned(self, key: str) -> dict[str, State]: ...

    async def calibrate(
        self, keys: list[str], pending: list[dict[int, int]], slot_ms: int, retain_slots: int,
        now_ms: int | None = None,
    ) -> tuple[int, list[dict[int, dict[int, int]]]]: ...  # fmt: skip


@runtime_checkable
class Seedable(Protocol):
    async def seed(self, windows: list[tuple[Bucket, dict[int, int]]]) -> int: ...


class Stores(Protocol):
    """What the limiter admits through: the store an admission used comes back with it, and
    its settlement goes there."""

    name: str
    primary: Store

    @property
    def degraded(self) -> bool:
        """Serving on this replica's share, the shared store not answering."""
        ...

    @property
    def rejoining(self) -> bool: ...

    async def admit(self, plan: Plan) -> tuple[Decision, Store]: ...

    async def settle(
        self, store: Store, plan: Plan, admitted: Admitted, delta: int, *, spend: int = 0,
        tally: Tally | None = None,
    ) -> None: ...  # fmt: skip

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]: ...

    async def add_tally(self, tally: Tally) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class Direct:
    """One store used as it is: nothing to fall back on, never degraded."""

    degraded = False
    rejoining = False

    def __init__(self, store: Store) -> None:
        self.primary = store
        self.name = store.name

    async def admit(self, plan: Plan) -> tuple[Decision, Store]:
        return await self.primary.admit(plan), self.primary

    async def settle(
        self, store: Store, plan: Plan, admitted: Admitted, delta: int, *, spend: int = 0,
        tally: Tally | None = None,
    ) -> None:  # fmt: skip
        await store.settle(plan, admitted, delta, spend=spend, tally=tally)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        return await self.primary.tallies(keys)

    async def add_tally(self, tally: Tally) -> None:
        await self.primary.add_tally(tally)

    async def ping(self) -> bool:
        return await self.primary.ping()

    async def close(self) -> None:
        await self.primary.close()
