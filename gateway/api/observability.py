"""The operators' side of the app: ``/metrics`` (open, behind a scrape token, or on a port of
its own), the gauges read off the request path, and the upstream's reachability for readiness.

``create_app`` builds one ``Observability`` and hands its parts to whoever reports to them;
the lifespan starts and closes it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from gateway.auth import hash_key
from gateway.catalog import Catalog
from gateway.config import GatewayConfig
from gateway.limiter.core import Bucket
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from gateway.limiter.service import Limiter
from gateway.limiter.store import Stores
from gateway.metrics import Metrics, pool_name
from gateway.statuspage.history import BudgetWatch, StatusHistory
from gateway.storewatch import BucketUsage, TimedStore
from gateway.upstream.client import base_url
from gateway.upstream.health import UpstreamHealth


def upstream_health(config: GatewayConfig, catalog: Catalog) -> UpstreamHealth:
    """Reachability of every endpoint a configured route calls."""
    return UpstreamHealth({
        (r.account, r.region): base_url(config.accounts[r.account], r.region)
        for target in catalog.targets() for r in target.routes
    })  # fmt: skip


def shared_redis(store: Stores) -> RedisStore | None:
    """The Redis store behind ``store``, if that is what it is."""
    primary = store.primary
    if isinstance(primary, TimedStore):
        return primary.inner
    return primary if isinstance(primary, RedisStore) else None


class Observability:
    def __init__(self, config: GatewayConfig, metrics: Metrics, health: UpstreamHealth,
                 usage: BucketUsage, status: StatusHistory) -> None:  # fmt: skip
        self._config = config.metrics
        self._host = config.server.host
        self.metrics = metrics
        self.health = health
        self.usage = usage
        self.status = status
        """What ``/dashboard`` shows (gateway.statuspage), sampled from the same state."""
        self._server: Any = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        self.usage.start()
        self.status.start()
        if self._config.port is not None:  # a thread of prometheus_client's own
            from prometheus_client import start_http_server

            self._server, _ = start_http_server(self._config.port, self._host,
                                                registry=self.metrics.registry)  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        await self.status.close()
        await self.usage.close()

    @property
    def on_main_port(self) -> bool:
        return self._config.port is None

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics`` on the data-plane port."""
        digests = self._config.token_sha256
        if digests and not _token_ok(request.headers.get("authorization", ""), digests):
            return Response("a scrape token is needed\n", 401, {"www-authenticate": "Bearer"})
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)


def bucket_reader(store: Stores) -> Callable[[Bucket], Awaitable[int]]:
    """What a window or period bucket holds now, read from the shared store (or the memory
    store), without changing it; 0 from a store that cannot say."""
    shared = shared_redis(store)

    async def read(bucket: Bucket) -> int:
        if shared is not None:
            return await shared.used(bucket)
        primary = store.primary
        return primary.used(bucket) if isinstance(primary, MemoryStore) else 0

    return read


def observability(
    config: GatewayConfig, catalog: Catalog, store: Stores, limiter: Limiter,
    learned: LearnedQuotas, metrics: Metrics, health: UpstreamHealth,
) -> Observability:  # fmt: skip
    """The per-pool and per-tenant-budget gauges (usage read in the background), and the rest."""
    usage = BucketUsage(bucket_reader(store), config.metrics.refresh_s)
    for target in catalog.targets():
        for route in target.routes:
            window, key = limiter.tpm_window(route), limiter.pool_of(route)
            used = usage.watch(window) if window is not None else (lambda: 0)
            metrics.watch_pool(pool_name(route), route.tpm, partial(learned.factor, key), used)
    budgets = TenantBudgets(limiter, usage, metrics if config.metrics.tenant_labels else None)
    budgets.sync()
    usage.before_refresh.append(budgets.sync)
    status = StatusHistory.watching(config, catalog, store, limiter, learned, metrics, usage,
                                    budgets.watches)  # fmt: skip
    return Observability(config, metrics, health, usage, status)


class TenantBudgets:
    """Every tenant's budgets as the limiter holds them now (from the config file and the admin
    API), watched through the gauges' reader for the budget gauges and the status page.
    ``sync`` runs before each refresh, so a tenant created, changed or deleted at runtime
    gains, changes or loses its gauges within ``metrics.refresh_s``. ``metrics`` None: watched
    for the status page only (``metrics.tenant_labels`` off)."""

    def __init__(self, limiter: Limiter, usage: BucketUsage, metrics: Metrics | None) -> None:
        self._limiter, self._usage, self._metrics = limiter, usage, metrics
        self._watched: dict[tuple[str, str], tuple[Bucket, BudgetWatch]] = {}

    def watches(self) -> list[BudgetWatch]:
        return [watch for _, watch in self._watched.values()]

    def sync(self) -> None:
        limiter = self._limiter
        wanted = {(name, budget): bucket for name in limiter.tenant_names()
                  for budget, bucket in limiter.budgets(name)}  # fmt: skip
        for gone in [k for k in self._watched if k not in wanted]:
            bucket, _ = self._watched.pop(gone)
            self._usage.unwatch(bucket)
            if self._metrics is not None:
                self._metrics.unwatch_budget(*gone)
        for (name, budget), bucket in wanted.items():
            known = self._watched.get((name, budget))
            if known is not None and known[0] == bucket:
                continue
            used = self._usage.watch(bucket)
            self._watched[(name, budget)] = (bucket, BudgetWatch(name, budget, bucket.limit, used))
            if self._metrics is not None:
                self._metrics.watch_budget(name, budget, bucket.limit, used)


def _token_ok(authorization: str, digests: list[str]) -> bool:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    digest = hash_key(token.strip())
    return any(hmac.compare_digest(digest, known) for known in digests)
