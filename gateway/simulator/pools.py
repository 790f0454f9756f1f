"""The simulator's quota pools, one per (region, model id), made on first use.

Owns the runtime quota overrides (``PUT /_simulator/pools``), reset, and the stats document.
"""

from __future__ import annotations

from typing import Any

from gateway.simulator.config import PoolOverride, SimulatorConfig, burndown_for, resolve
from gateway.simulator.quota import PoolStats, QuotaPool

PoolKey = tuple[str, str]  # (region, model id as decoded from the path)


class PoolRegistry:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.overrides: tuple[PoolOverride, ...] = config.pools
        self._pools: dict[PoolKey, QuotaPool] = {}
        self._burndown: dict[str, int] = {}

    def pool(self, region: str, model: str, now: float) -> QuotaPool:
        found = self._pools.get((region, model))
        if found is None:
            limits, mode = resolve(self.config, self.overrides, region, model)
            found = QuotaPool(
                limits,
                mode,
                now,
                horizon=self.config.history_seconds,
                max_entries=self.config.history_max_entries,
            )
            self._pools[(region, model)] = found
        return found

    def burndown(self, model: str) -> int:
        factor = self._burndown.get(model)
        if factor is None:
            factor = self._burndown[model] = burndown_for(self.config, model)
        return factor

    def replace_overrides(self, overrides: tuple[PoolOverride, ...], now: float) -> None:
        """Swap the override list; existing pools keep their usage under the new limits."""
        self.overrides = overrides
        for (region, model), pool in self._pools.items():
            limits, mode = resolve(self.config, overrides, region, model)
            pool.set_limits(limits, mode, now)

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget every pool and its stats; optionally drop runtime overrides too."""
        self._pools.clear()
        if restore_config:
            self.overrides = self.config.pools

    def stats(self, now: float, timeline_offset: float | None = None) -> dict[str, Any]:
        """The ``GET /_simulator/stats`` document."""
        pools = [
            _pool_json(
                region,
                model,
                self.burndown(model),
                pool.stats(now, timeline_offset=timeline_offset),
            )
            for (region, model), pool in sorted(self._pools.items())
        ]
        return {"mode": str(self.config.mode), "pools": pools}


def _pool_json(region: str, model: str, burndown: int, stats: PoolStats) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "region": region,
        "model": model,
        "mode": str(stats.mode),
        "tpm": stats.limits.tpm,
        "rpm": stats.limits.rpm,
        "tokens_per_day": stats.limits.tokens_per_day,
        "burndown": burndown,
        "admitted": stats.admitted,
        "throttled": stats.throttled,
        "throttled_by": stats.throttled_by,
        "rejected": stats.rejected,
        "requests": stats.requests,
        "settled": stats.settled,
        "tokens": stats.tokens,
        "in_flight": stats.in_flight,
        "window_tokens": stats.window_tokens,
        "window_requests": stats.window_requests,
        "day_tokens": stats.day_tokens,
        "max_rolling_60s_tokens": stats.max_rolling_60s_tokens,
        "max_rolling_60s_requests": stats.max_rolling_60s_requests,
    }
    if stats.timeline is not None:
        doc["timeline"] = [
            {"second": second, "tokens": tokens, "requests": requests}
            for second, tokens, requests in stats.timeline
        ]
    return doc
