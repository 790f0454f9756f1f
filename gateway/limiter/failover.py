"""Store failover: Redis when it answers, this replica's share of each quota when it does not.

``on_store_failure: local`` admits against an in-memory store whose limits are the configured
quota divided by the number of replicas, so the replicas together stay within the quota while
Redis is away; ``deny`` refuses instead. Either way the failure is counted and logged once per
outage, and Redis is tried again ``retry_after_s`` after each failure. Never silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal, Protocol

from gateway.errors import ServiceUnavailable
from gateway.limiter.core import Admitted, Bucket, Charge, Decision, Plan
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import StoreUnavailable

log = logging.getLogger("gateway.limiter")


class Store(Protocol):
    name: str

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision: ...

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None
    ) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.local = MemoryStore()
        self._mode = mode
        self._replicas = replicas
        self._retry_after_s = retry_after_s
        self._listener = listener
        self._clock = clock
        self._down_until = 0.0
        self._shares: dict[str, Bucket] = {}
        self.name = primary.name

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    async def admit(self, plan: Plan) -> tuple[Decision, Store]:
        if not self.degraded:
            try:
                decision = await self.primary.admit(plan)
            except StoreUnavailable as exc:
                self._failed("admit", exc)
            else:
                if self._down_until:
                    self._down_until = 0.0
                    self._listener.degraded(False)
                    log.warning("limiter store %s answers again; back to shared quotas", self.name)
                return decision, self.primary
        if self._mode == "deny":
            raise ServiceUnavailable("The gateway's quota store is unavailable; try again soon.")
        return await self.local.admit(self._local_plan(plan)), self.local

    async def settle(self, store: Store, plan: Plan, admitted: Admitted, delta: int) -> None:
        try:
            await store.settle(plan, admitted, delta)
        except StoreUnavailable as exc:
            # The reservation stays charged in full and lapses with its window: the safe side.
            self._failed("settle", exc)

    def _failed(self, operation: str, exc: Exception) -> None:
        self._listener.store_failed(operation)
        if not self._down_until:  # the first failure of an outage, not each retry during it
            log.error("limiter store %s failed (%s); %s for %.1f s", self.name, exc,
                      "local share" if self._mode == "local" else "denying",
                      self._retry_after_s)  # fmt: skip
            self._listener.degraded(True)
        self._down_until = self._clock() + self._retry_after_s

    def _local_plan(self, plan: Plan) -> Plan:
        def share(charge: Charge) -> Charge:
            bucket = self._shares.get(charge.bucket.key)
            if bucket is None:
                limit = max(1, charge.bucket.limit // self._replicas)
                bucket = self._shares[charge.bucket.key] = replace(charge.bucket, limit=limit)
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
