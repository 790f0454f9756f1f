"""What the status page shows, read from state the gateway keeps anyway.

Nothing here runs on a request's path. Counts come from the metrics' own counters (read with
``collect()``), pool usage and tenant budgets from the values the gauges' background task
refreshes every ``metrics.refresh_s`` (``gateway.storewatch.BucketUsage``: no extra Redis
read), learned quotas from ``LearnedQuotas``, queue depth from its gauge, store health from the
failover store's flags.
One task samples the per-pool totals every ``interval_s`` into a bounded deque; a poll reads
the deque and one fresh sample.

The counts are this process's (one worker per container: this replica's); pool usage, learned
quotas and budgets are the shared store's, all replicas together.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway.catalog import Catalog
from gateway.config import GatewayConfig
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.service import Limiter
from gateway.limiter.store import Stores
from gateway.metrics import Metrics, pool_name
from gateway.storewatch import BucketUsage

log = logging.getLogger("gateway.statuspage")

COUNTS = ("admitted", "queued", "refused", "upstream_throttled")
"""What is counted per pool (see ``StatusHistory.totals``)."""

WINDOW_S = 60.0
"""The page's counts are per minute: what the 60 s before each point added."""

Totals = dict[str, dict[str, int]]


@dataclass(frozen=True)
class PoolWatch:
    """A configured pool as its gauges read it: no I/O (``used`` is the last refreshed value)."""

    pool: str
    """The ``pool`` label (``gateway.metrics.pool_name``)."""
    key: str
    """The limiter's key for it (what learned quotas are stored under)."""
    tpm: int | None
    factor: Callable[[], float]
    used: Callable[[], int]


@dataclass(frozen=True)
class BudgetWatch:
    """One budget of a tenant, read the same way (``gateway.api.observability.TenantBudgets``)."""

    tenant: str
    budget: str
    limit: int
    used: Callable[[], int]


@dataclass(frozen=True)
class Sample:
    at: float
    """Wall-clock seconds."""
    totals: Totals
    """Per pool label, each of ``COUNTS`` since this process started."""
    used: dict[str, int]
    """Per pool label, quota tokens in its rolling minute (all replicas)."""
    learned_tpm: dict[str, float | None]


def _samples(metric: Any, suffix: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of ``metric`` whose name ends with ``suffix``."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


class StatusHistory:
    def __init__(
        self,
        catalog: Catalog,
        metrics: Metrics,
        pools: tuple[PoolWatch, ...],
        budgets: Callable[[], Iterable[BudgetWatch]],
        learned: LearnedQuotas,
        store: Stores,
        *,
        backend: str,
        on_store_failure: str,
        interval_s: float = 5.0,
        keep_s: float = 600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._pools = {watch.pool: watch for watch in pools}
        self._budgets = budgets
        self._learned = learned
        self._store = store
        self._backend = backend
        self._on_store_failure = on_store_failure
        self.interval_s = interval_s
        self.keep_s = keep_s
        self._wall = wall
        self._route_pool: dict[str, str] = {}
        """Route label → pool label."""
        self._model_pool: dict[str, str] = {}
        """Model name → the pool of its first route (where its queued requests are shown)."""
        self._pool_models: dict[str, list[str]] = {name: [] for name in self._pools}
        self._pool_routes: dict[str, list[str]] = {name: [] for name in self._pools}
        for target in catalog.targets():
            if pool_name(target.routes[0]) in self._pools:
                self._model_pool[target.model.name] = pool_name(target.routes[0])
            for route in target.routes:
                pool = pool_name(route)
                if pool not in self._pools:
                    continue
                self._route_pool[route.label] = pool
                if target.model.name not in self._pool_models[pool]:
                    self._pool_models[pool].append(target.model.name)
                if route.label not in self._pool_routes[pool]:
                    self._pool_routes[pool].append(route.label)
        # the minute before the oldest point shown is kept too, to count that point's minute
        self._history: deque[Sample] = deque(maxlen=int((keep_s + WINDOW_S) / interval_s) + 2)
        self.started_at = wall()
        self._origin: Sample | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def watching(
        cls, config: GatewayConfig, catalog: Catalog, store: Stores,
        limiter: Limiter, learned: LearnedQuotas, metrics: Metrics, usage: BucketUsage,
        budgets: Callable[[], Iterable[BudgetWatch]],
    ) -> StatusHistory:  # fmt: skip
        """The status page of these parts. Pool windows are watched through ``usage``, the
        gauges' own reader: a bucket the gauges watch too is read once per refresh for both;
        ``budgets`` gives every tenant's budgets as they are now. ``usage`` must not have
        started yet."""
        pools: dict[str, PoolWatch] = {}
        for target in catalog.targets():
            for route in target.routes:
                window, key = limiter.tpm_window(route), limiter.pool_of(route)
                used = usage.watch(window) if window is not None else (lambda: 0)
                watch = PoolWatch(pool_name(route), key, route.tpm, partial(learned.factor, key),
                                  used)  # fmt: skip
                pools.setdefault(watch.pool, watch)
        return cls(catalog, metrics, tuple(pools.values()), budgets, learned, store,
                   backend=config.limiter.backend,
                   on_store_failure=config.limiter.on_store_failure)  # fmt: skip

    # ---- sampling ---------------------------------------------------------------------------

    def totals(self) -> tuple[Totals, dict[str, int]]:
        """Per pool, since this process started: ``admitted`` (limiter admissions on its
        routes, a retry's included), ``queued`` (admissions that waited for capacity longer
        than the queue-wait histogram's first bucket, 1 ms, shown under the pool of the
        model's first route: the queue is per model), ``refused`` (local 429s a pool's limit
        gave) and ``upstream_throttled`` (Bedrock's own 429s on its routes). And the local
        429s that no pool gave (a tenant's budget, a full queue, draining), by reason."""
        totals: Totals = {pool: dict.fromkeys(COUNTS, 0) for pool in self._pools}
        outside: dict[str, int] = {}
        m = self._metrics
        for labels, value in _samples(m.admissions, "_total"):
            pool = self._route_pool.get(labels["route"])
            if pool is not None:
                totals[pool]["admitted"] += int(value)
        for labels, value in _samples(m.upstream_throttles, "_total"):
            pool = self._route_pool.get(labels["route"])
            if pool is not None:
                totals[pool]["upstream_throttled"] += int(value)
        for labels, value in _samples(m.queue_refusals, "_total"):
            if labels["pool"] in totals:
                totals[labels["pool"]]["refused"] += int(value)
            else:
                outside[labels["reason"]] = outside.get(labels["reason"], 0) + int(value)
        counts: dict[tuple[str, str], float] = {}
        first: dict[tuple[str, str], tuple[float, float]] = {}
        for labels, value in _samples(m.queue_wait, "_count"):
            counts[labels["model"], labels["priority"]] = value
        for labels, value in _samples(m.queue_wait, "_bucket"):
            key, le = (labels["model"], labels["priority"]), float(labels["le"])
            if key not in first or le < first[key][0]:
                first[key] = (le, value)
        for key, count in counts.items():
            pool = self._model_pool.get(key[0])
            if pool is not None:
                totals[pool]["queued"] += int(count - first.get(key, (0.0, 0.0))[1])
        return totals, outside

    def sample(self, totals: Totals | None = None) -> Sample:
        totals = self.totals()[0] if totals is None else totals
        used = {name: watch.used() for name, watch in self._pools.items()}
        learned = {name: None if watch.tpm is None else watch.tpm * watch.factor()
                   for name, watch in self._pools.items()}  # fmt: skip
        return Sample(self._wall(), totals, used, learned)

    def record(self) -> None:
        sample = self.sample()
        if self._origin is None:
            self._origin = sample
        self._history.append(sample)

    def start(self) -> None:
        if self._task is None:
            self.record()  # the origin: what the counters held when serving began
            self._task = asyncio.get_running_loop().create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.record()
            except Exception:
                log.exception("sampling the status page's history failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- what the page polls ----------------------------------------------------------------

    def _minute_before(self, points: list[Sample], times: list[float], index: int) -> Sample | None:
        """The latest point at least a minute before ``points[index]`` (``times``: their
        times, ascending); the origin when the process is younger than that; None when that
        minute is no longer kept."""
        earlier = bisect.bisect_right(times, points[index].at - WINDOW_S, 0, index) - 1
        if earlier >= 0:
            return points[earlier]
        if points[0] is self._origin:
            return self._origin
        return None

    def snapshot(self) -> dict[str, Any]:
        totals, outside = self.totals()
        now = self.sample(totals)
        points = [*self._history, now]
        at = [point.at for point in points]
        shown = [i for i, p in enumerate(points) if p.at >= now.at - self.keep_s]
        series: dict[str, dict[str, list[float | None]]] = {
            pool: {kind: [] for kind in (*COUNTS, "utilization")} for pool in self._pools
        }
        times: list[float] = []
        for index in shown:
            base = self._minute_before(points, at, index)
            if base is None:
                continue
            point = points[index]
            times.append(round(point.at, 3))
            for pool, kinds in series.items():
                for kind in COUNTS:
                    kinds[kind].append(point.totals[pool][kind] - base.totals[pool][kind])
                learned = point.learned_tpm[pool]
                kinds["utilization"].append(
                    None if learned is None else round(point.used[pool] / max(1.0, learned), 4)
                )
        last = points[-1]
        base = self._minute_before(points, at, len(points) - 1)
        states, hold_s = self._learned.states(), self._learned.aimd.hold_s
        depth: dict[str, int] = {}
        for labels, value in _samples(self._metrics.queue_depth, "depth"):
            primary = self._model_pool.get(labels["model"])
            if primary is not None:
                depth[primary] = depth.get(primary, 0) + int(value)
        pools = []
        for name, watch in self._pools.items():
            factor = watch.factor()
            learned_tpm = None if watch.tpm is None else int(watch.tpm * factor)
            since = states[watch.key][1] if watch.key in states else None
            minute = None if base is None else {
                kind: last.totals[name][kind] - base.totals[name][kind] for kind in COUNTS
            }  # fmt: skip
            pools.append({
                "pool": name, "models": self._pool_models[name], "routes": self._pool_routes[name],
                "totals": totals[name], "last_minute": minute,
                "queue_depth": depth.get(name, 0),
                "tpm": watch.tpm, "learned_tpm": learned_tpm, "quota_factor": round(factor, 4),
                "used_tokens": last.used[name],
                "utilization": None if learned_tpm is None
                else round(last.used[name] / max(1, learned_tpm), 4),
                "throttled_at": since, "holds_until": None if since is None else since + hold_s,
            })  # fmt: skip
        return {
            "generated_at": round(now.at, 3),
            "started_at": round(self.started_at, 3),
            "replica": {"host": socket.gethostname(), "pid": os.getpid()},
            "interval_s": self.interval_s,
            "window_s": WINDOW_S,
            "pools": pools,
            "history": {"t": times, "pools": series},
            "refused_outside_pools": outside,
            "requests": self._requests(),
            "tenants": [self._budget(watch) for watch in self._budgets()],
            "store": self._store_health(),
        }

    def _requests(self) -> dict[str, int]:
        """Data-plane requests answered since this process started, by outcome."""
        found: dict[str, int] = {}
        for labels, value in _samples(self._metrics.requests, "_total"):
            found[labels["outcome"]] = found.get(labels["outcome"], 0) + int(value)
        return found

    @staticmethod
    def _budget(watch: BudgetWatch) -> dict[str, Any]:
        """A token budget in tokens; ``monthly_spend_usd`` in dollars (held in micro-dollars)."""
        used, limit = watch.used(), watch.limit
        ratio = round(used / max(1, limit), 4)
        if watch.budget == "monthly_spend_usd":
            return {"tenant": watch.tenant, "budget": watch.budget, "unit": "usd",
                    "limit": limit / 1e6, "used": used / 1e6,
                    "remaining": max(0, limit - used) / 1e6, "ratio": ratio}  # fmt: skip
        return {"tenant": watch.tenant, "budget": watch.budget, "unit": "tokens", "limit": limit,
                "used": used, "remaining": max(0, limit - used), "ratio": ratio}  # fmt: skip

    def _store_health(self) -> dict[str, Any]:
        store = self._store
        degraded, rejoining = store.degraded, store.rejoining
        if self._backend == "memory":
            state = "ok: in-process store (quotas are not shared between replicas)"
        elif not degraded:
            state = "ok: rejoining the shared store" if rejoining else "ok"
        elif self._on_store_failure == "local":
            state = "degraded: quota store unreachable, using this replica's local share"
        else:
            state = "unavailable: quota store unreachable, requests are refused with 503"
        failures = {
            labels["operation"]: int(value)
            for labels, value in _samples(self._metrics.store_failures, "_total")
        }
        sums = dict(_samples_by_op(self._metrics.store_latency, "_sum"))
        latency_ms = {op: round(sums.get(op, 0.0) / count * 1000, 3)
                      for op, count in _samples_by_op(self._metrics.store_latency, "_count")
                      if count}  # fmt: skip
        return {"backend": self._backend, "on_failure": self._on_store_failure, "state": state,
                "degraded": degraded, "rejoining": rejoining, "failures": failures,
                "mean_latency_ms": latency_ms}  # fmt: skip


def _samples_by_op(metric: Any, suffix: str) -> Iterator[tuple[str, float]]:
    for labels, value in _samples(metric, suffix):
        yield labels["operation"], value
