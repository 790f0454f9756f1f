"""What the metrics watch in the quota store: how long its calls take (``TimedStore``), and
what each pool's rolling minute and each tenant's budgets hold (``BucketUsage``).

Usage is read by one background task every ``refresh_s`` (5 s by default), never on the request
path: a scrape only reads the last values. With Redis that is one read per watched bucket per
refresh, whatever the traffic; while the store is away the last values stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.limiter.core import Admitted, Bucket, Decision, Plan, Tally
from gateway.limiter.redis_store import RedisStore
from gateway.limiter.store import StoreUnavailable

log = logging.getLogger("gateway.metrics")

Reader = Callable[[Bucket], Awaitable[int]]


class TimedStore:
    """The Redis store, each admit and settle timed (failed calls too) for the metrics."""

    def __init__(self, inner: RedisStore, observe: Callable[[str, float], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self._observe = observe

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision:
        started = time.perf_counter()
        try:
            return await self.inner.admit(plan, now_ms)
        finally:
            self._observe("admit", time.perf_counter() - started)

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None, *,
        spend: int = 0, tally: Tally | None = None,
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        try:
            await self.inner.settle(plan, admitted, delta, now_ms, spend=spend, tally=tally)
        finally:
            self._observe("settle", time.perf_counter() - started)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        """Forwarded untimed, like ``seed``: not a request's call."""
        return await self.inner.tallies(keys)

    async def add_tally(self, tally: Tally) -> None:
        await self.inner.add_tally(tally)

    async def seed(self, windows: list[tuple[Bucket, dict[int, int]]]) -> int:
        """Forwarded untimed: once per outage, not a request's call (failover.py's rejoin)."""
        return await self.inner.seed(windows)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class BucketUsage:
    def __init__(self, read: Reader, refresh_s: float = 5.0) -> None:
        self._read = read
        self._refresh_s = refresh_s
        self._buckets: dict[str, Bucket] = {}
        self._used: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.before_refresh: list[Callable[[], None]] = []
        """Called at the start of every refresh (to change what is watched)."""

    def watch(self, bucket: Bucket) -> Callable[[], int]:
        """Watch ``bucket``; the returned function reads its last refreshed total."""
        self._buckets[bucket.key] = bucket
        return lambda: self._used.get(bucket.key, 0)

    def unwatch(self, bucket: Bucket) -> None:
        self._buckets.pop(bucket.key, None)
        self._used.pop(bucket.key, None)

    async def refresh(self) -> None:
        for hook in self.before_refresh:
            hook()
        for key, bucket in list(self._buckets.items()):
            self._used[key] = await self._read(bucket)

    def start(self) -> None:
        if self._task is None and (self._buckets or self.before_refresh):
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.refresh(), self._refresh_s)
            except (StoreUnavailable, TimeoutError):
                pass  # the last values stay; store failures are counted where they happen
            except Exception:
                log.exception("reading pool usage for the metrics failed")
            await asyncio.sleep(self._refresh_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
