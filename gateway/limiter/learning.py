"""Learned quotas: each pool's factor from upstream 429s, shared by every replica.

A 429 from Bedrock on a route means its pool's real quota is below the configured one. The
replica that saw it records the throttle in the shared store (``adapt.lua``: atomic, on Redis
time, measuring the pool's window there, one decrease per cooldown however many replicas
report the same burst) and takes the result at once; every replica reads all factors back once
per ``refresh_s``: one round trip a second, whatever the traffic. Without Redis (or while it is
away) the same arithmetic runs here, on this process's own window. Recovery needs no writes:
``Aimd`` computes the factor from (factor, since) and the time, so it climbs back on its own
while no 429 comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.limiter.adaptive import Aimd, State
from gateway.limiter.core import Bucket
from gateway.limiter.store import SharedState, StoreUnavailable

log = logging.getLogger("gateway.limiter")


class LearnedQuotas:
    def __init__(
        self,
        aimd: Aimd,
        shared: SharedState | None,
        key: str,
        *,
        local_use: Callable[[Bucket], int] | None = None,
        refresh_s: float = 1.0,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[str, float], None] | None = None,
    ) -> None:
        self.aimd = aimd
        self._shared = shared
        self._key = key
        self._local_use = local_use
        """What a window holds in this process's own store (the in-memory backend)."""
        self._refresh_s = refresh_s
        self._wall = wall
        self._on_change = on_change
        self._states: dict[str, State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    def factor(self, pool: str) -> float:
        state = self._states.get(pool)
        return 1.0 if state is None else self.aimd.factor(state, self._wall())

    def states(self) -> dict[str, State]:
        return dict(self._states)

    def throttled(self, pool: str, window: Bucket | None = None) -> None:
        """Bedrock throttled a call on ``pool``, whose per-minute token window is ``window``:
        lower its factor, everywhere when the store is shared."""
        if self._shared is not None:
            task = asyncio.get_running_loop().create_task(self._record(pool, window))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        used = None
        if window is not None and self._local_use is not None:
            used = self._local_use(window) / window.limit
        self._learn(pool, self.aimd.on_throttle(self._states.get(pool), self._wall(), used))

    async def _record(self, pool: str, window: Bucket | None) -> None:
        assert self._shared is not None
        try:
            state = await self._shared.adapt(self._key, pool, self.aimd, window)
        except StoreUnavailable:  # learn here alone, on the configured step, until it is back
            state = self.aimd.on_throttle(self._states.get(pool), self._wall())
        self._learn(pool, state)

    def _learn(self, pool: str, state: State) -> None:
        if self._states.get(pool) != state:
            self._states[pool] = state
            log.warning("upstream throttled pool %s: its quota factor is now %.3f", pool,
                        state[0])  # fmt: skip
            self._changed(pool)

    async def refresh(self) -> None:
        """Read every pool's shared factor (one round trip)."""
        if self._shared is None:
            return
        shared = await self._shared.learned(self._key)
        for pool, state in shared.items():
            if self._states.get(pool) != state:
                self._states[pool] = state
                self._changed(pool)

    def _changed(self, pool: str) -> None:
        if self._on_change is not None:
            self._on_change(pool, self.factor(pool))

    def start(self) -> None:
        if self._shared is not None and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
