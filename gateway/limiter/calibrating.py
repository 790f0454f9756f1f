"""Calibration factors of the input estimate, learned from Bedrock's answers, shared by replicas.

The hot path only reads a factor (a dict lookup) and records a sample (a bin and a counter).
Once per ``refresh_s`` this replica sends its new samples to Redis and reads every histogram
back (``calibrate.lua``: one round trip a second, whatever the traffic), so every replica scales
by the same factor, a restarted or new replica starts from what the others learned, and the
factor survives restarts. With the memory store the histograms live in this process. While
Redis is away samples wait (merged into bins, so bounded) and the last factors stay.
The arithmetic is ``gateway.calibration``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from gateway import calibration
from gateway.calibration import CalibrationPolicy, Histogram
from gateway.limiter.store import SharedState, StoreUnavailable

log = logging.getLogger("gateway.limiter")

Key = tuple[str, str]
"""(model name, body family): ``converse`` or ``invoke``."""

_FAMILY = {"converse": "converse", "converse-stream": "converse", "invoke": "invoke",
           "invoke-with-response-stream": "invoke"}  # fmt: skip


def family(operation: str) -> str:
    """Converse and InvokeModel bodies differ in shape, so each is calibrated on its own."""
    return _FAMILY[operation]


class Calibrations:
    def __init__(
        self,
        policy: CalibrationPolicy,
        keys: Iterable[Key],
        shared: SharedState | None,
        prefix: str,
        *,
        refresh_s: float = 1.0,
        clock_ms: Callable[[], int] | None = None,
        on_change: Callable[[Key, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self._keys = list(keys)
        self._known = frozenset(self._keys)
        self._redis_keys = [f"{{{prefix}}}:calib:{model}:{fam}" for model, fam in self._keys]
        self._shared = shared
        self._refresh_s = refresh_s
        self._clock_ms = clock_ms
        """Time for the slots (tests); None: this process's clock, or Redis TIME when shared."""
        self._on_change = on_change
        self._factors: dict[Key, float] = {}
        self._samples: dict[Key, int] = {}
        self._pending: dict[Key, dict[int, int]] = {}
        self._local: dict[Key, Histogram] = {}
        self._refresher: asyncio.Task[None] | None = None

    def factor(self, key: Key) -> float:
        return self._factors.get(key, self.policy.initial)

    def observe(self, key: Key, estimated: int, actual: int) -> None:
        """One answer: ``estimated`` input tokens (before scaling) against Bedrock's count."""
        bin_ = calibration.bin_of(self.policy, estimated, actual)
        if bin_ is None or key not in self._known:  # only configured models: bounded state
            return
        bins = self._pending.setdefault(key, {})
        bins[bin_] = bins.get(bin_, 0) + 1

    def status(self) -> list[dict[str, object]]:
        """Per (model, family): the factor in use and the samples it stands on."""
        return [{"model": model, "family": fam, "factor": round(self.factor((model, fam)), 4),
                 "samples": self._samples.get((model, fam), 0)}
                for model, fam in self._keys]  # fmt: skip

    async def refresh(self) -> None:
        """Share this replica's new samples and take up every key's current factor."""
        pending, self._pending = self._pending, {}
        slot_ms = int(self.policy.slot_s * 1000)
        if self._shared is None:
            now_ms = self._clock_ms() if self._clock_ms is not None else int(time.time() * 1000)
            now_slot = now_ms // slot_ms
            for key, bins in pending.items():
                for bin_, count in bins.items():
                    calibration.add(self._local.setdefault(key, {}), now_slot, bin_, count)
            histograms = [self._local.get(key, {}) for key in self._keys]
            for histogram in histograms:
                calibration.prune(self.policy, histogram, now_slot)
        else:
            try:
                now_slot, histograms = await self._shared.calibrate(
                    self._redis_keys, [pending.get(key, {}) for key in self._keys], slot_ms,
                    self.policy.retain_slots, None if self._clock_ms is None else self._clock_ms(),
                )  # fmt: skip
            except StoreUnavailable:
                for key, bins in pending.items():  # keep them for the next round
                    mine = self._pending.setdefault(key, {})
                    for bin_, count in bins.items():
                        mine[bin_] = mine.get(bin_, 0) + count
                raise
        for key, histogram in zip(self._keys, histograms, strict=True):
            self._update(key, histogram, now_slot)

    def _update(self, key: Key, histogram: Histogram, now_slot: int) -> None:
        self._samples[key] = sum(sum(bins.values()) for bins in histogram.values())
        found = calibration.factor(self.policy, histogram, now_slot)
        if found is None or self._factors.get(key) == found:
            return
        before = self._factors.get(key)
        self._factors[key] = found
        if before is None or abs(found - before) >= 0.05 * before:
            log.info("input estimates of %s %s now scaled x%.3f", key[0], key[1], found)
        if self._on_change is not None:
            self._on_change(key, found)

    def start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            with contextlib.suppress(StoreUnavailable):
                await self.refresh()

    async def close(self) -> None:
        """Stop refreshing; share what is pending one last time (best effort)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(self.refresh(), timeout=1.0)
