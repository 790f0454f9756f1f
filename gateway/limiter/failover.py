"""Store failover: Redis when it answers, this replica's share of each quota when it does not.

``on_store_failure: local`` admits against this replica's share of each quota (quota /
replicas) on a local store; ``deny`` refuses instead. Either way the failure is counted and
logged once per outage, and Redis is tried again ``retry_after_s`` after each failure. Never
silent.

Why the bound (P1) holds through an outage and the rejoin. What the upstream's rolling minute
holds is what every replica sent it in that minute, through Redis or not, and each replica
knows exactly its own part. So the local store records every admission this replica makes
through Redis as well (window buckets only, corrected at settlement: a few dictionary updates,
no round trip), and a share counts *this replica's* admissions of the last window:

* **Outage.** A replica admits locally only while its own last window (what it admitted
  through Redis before the outage, plus its local admissions since) stays within its share.
  The replicas' parts add up to the upstream's minute, so it stays within the quota, even
  though Redis's own window is gone.
* **Rejoin.** A restarted Redis is empty: it knows nothing of the last minute. The first call
  after an outage adds what this replica admitted in the last window to it (``seed.lua``, one
  round trip per outage, each replica its own part), and for one window (plus
  ``retry_after_s``, the time every replica with traffic takes to come back) an admission
  needs room in Redis *and* in the replica's own share, the latter checked in process before
  the round trip. Once that window has passed, everything the upstream's minute holds went
  through Redis, which is exact again. (A Redis that did not restart gets a replica's Redis
  admissions twice: more conservative, for one window.)

Where knowledge is missing this errs on the safe side: an upstream outcome never known (a
settlement that could not be sent) stays charged in full here too. What no replica knows is
how the *other* replicas' parts were spread in the minute before the outage, and a replica
that took more than its share through Redis cannot give the excess back. So when Redis had
refused this replica on a window in the last span (the pool was full), the whole quota its own
part leaves is set aside for the others, in the newest slot: it serves locally only what its
own admissions free as they age (with two replicas; none for a minute with more). Where Redis
had not refused it, the others are taken to hold within their shares, as they do when a load
balancer spreads the calls: that is the one assumption left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal, Protocol

from gateway.errors import ServiceUnavailable
from gateway.limiter import memory
from gateway.limiter.core import Admitted, Bucket, Charge, Decision, Denied, Kind, Plan, Tally
from gateway.limiter.shares import ShareStore
from gateway.limiter.store import Seedable, Store, StoreUnavailable

log = logging.getLogger("gateway.limiter")


class FailoverListener(Protocol):
    def store_failed(self, operation: str) -> None: ...

    def degraded(self, on: bool) -> None: ...


class FailoverStore:
    """Wraps the shared store; admissions report which store they used via ``last_store``."""

    def __init__(
        self,
        primary: Store,
        *,
        mode: Literal["local", "deny"],
        replicas: int,
        retry_after_s: float,
        listener: FailoverListener,
        window_s: float = 60.5,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = memory.wall_ms,
    ) -> None:
        self.primary = primary
        self.local = ShareStore(wall_ms)
        self._wall_ms = wall_ms
        self._mode = mode
        self._replicas = replicas
        self._retry_after_s = retry_after_s
        self._rejoin_s = window_s + retry_after_s
        self._listener = listener
        self._clock = clock
        self._down_until = 0.0
        self._shared_until = 0.0
        """Until then, after a rejoin, admissions need room in the own share as well."""
        self._shares: dict[str, tuple[int, Bucket]] = {}
        """Per bucket key: the whole limit and the share bucket made from it."""
        self._held: Tally | None = None
        """Usage counts the shared store could not take yet: added when it answers again."""
        self.name = primary.name

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    @property
    def rejoining(self) -> bool:
        """Back on Redis less than a window ago: the own share still gates admissions."""
        return self._clock() < self._shared_until

    async def admit(self, plan: Plan) -> tuple[Decision, Store]:
        if not self.degraded:
            try:
                if self._down_until:  # retrying after an outage
                    await self._rejoin()
                return await self._admit_shared(plan)
            except StoreUnavailable as exc:
                self._failed("admit", exc)
        if self._mode == "deny":
            raise ServiceUnavailable("The gateway's quota store is unavailable; try again soon.")
        return await self.local.admit(self._local_plan(plan)), self.local

    async def _admit_shared(self, plan: Plan) -> tuple[Decision, Store]:
        shared = plan
        if self.rejoining:  # the own share first, in process: no round trip when it is full
            gated = self.local.gate(plan, self._local_plan(plan), self._wall_ms())
            if isinstance(gated, Denied):
                return gated, self.local
            shared = gated
        decision = await self.primary.admit(shared)
        if isinstance(decision, Admitted):
            self.local.record(plan.committed(decision.alternative), decision.now_ms)
        elif decision.bucket.kind == Kind.WINDOW:
            self.local.saw_full(decision.bucket, self._wall_ms())
        return decision, self.primary

    async def _rejoin(self) -> None:
        """Back on Redis: add what this replica admitted in the last window to it (a restarted
        Redis knows nothing of it), then gate by the own share for a window."""
        if isinstance(self.primary, Seedable):
            await self.primary.seed(self.local.windows(self._wall_ms()))
        if self._held is not None:
            await self.primary.add_tally(self._held)
            self._held = None
        self._down_until = 0.0
        self._shared_until = self._clock() + self._rejoin_s
        self._listener.degraded(False)
        log.warning("limiter store %s answers again; back to shared quotas, gated by the "
                    "local share for %.1f s", self.name, self._rejoin_s)  # fmt: skip

    async def settle(
        self, store: Store, plan: Plan, admitted: Admitted, delta: int, *, spend: int = 0,
        tally: Tally | None = None,
    ) -> None:  # fmt: skip
        if store is self.local:  # the usage counts wait for the shared store
            await store.settle(plan, admitted, delta, spend=spend)
            self._hold(tally)
            return
        # the own record of an admission made through Redis
        self.local.correct(plan.committed(admitted.alternative), admitted.now_ms, delta,
                           self._wall_ms())  # fmt: skip
        try:
            await store.settle(plan, admitted, delta, spend=spend, tally=tally)
        except StoreUnavailable as exc:
            # The reservation stays charged in full and lapses with its window: the safe side.
            self._hold(tally)
            self._failed("settle", exc)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        """Read from the shared store (raises ``StoreUnavailable`` when it does not answer)."""
        return await self.primary.tallies(keys)

    async def add_tally(self, tally: Tally) -> None:
        if self.degraded:
            self._hold(tally)
            return
        try:
            await self.primary.add_tally(tally)
        except StoreUnavailable as exc:
            self._hold(tally)
            self._failed("tally", exc)

    def _hold(self, tally: Tally | None) -> None:
        if tally is not None:
            self._held = tally.merged(self._held)

    def _failed(self, operation: str, exc: Exception) -> None:
        self._listener.store_failed(operation)
        if not self._down_until:  # the first failure of an outage, not each retry during it
            log.error("limiter store %s failed (%s); %s for %.1f s", self.name, exc,
                      "local share" if self._mode == "local" else "denying",
                      self._retry_after_s)  # fmt: skip
            self._listener.degraded(True)
            self.local.set_aside(self._replicas, self._wall_ms())
        self._down_until = self._clock() + self._retry_after_s

    def _local_plan(self, plan: Plan) -> Plan:
        def share(charge: Charge) -> Charge:
            whole, bucket = self._shares.get(charge.bucket.key, (0, charge.bucket))
            if whole != charge.bucket.limit:  # new, or a learned quota moved it
                limit = max(1, charge.bucket.limit // self._replicas)
                bucket = replace(charge.bucket, limit=limit)
                self._shares[charge.bucket.key] = (charge.bucket.limit, bucket)
            return replace(charge, bucket=bucket)

        return Plan(
            plan.member,
            tuple(share(c) for c in plan.common),
            tuple(tuple(share(c) for c in alt) for alt in plan.alternatives),
        )

    async def ping(self) -> bool:
        return await self.primary.ping()

    async def close(self) -> None:
        await self.primary.close()
