"""Building the tenancy parts from the config: the store, the registry, the admin operations.

Until the store first answers, a replica serves the config file's tenants (the same records
seeding would write), so a start with Redis away still authenticates the file's tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from gateway.config import ConfigError, GatewayConfig
from gateway.limiter.store import StoreUnavailable
from gateway.tenancy.model import TenantRecord, credentials_from_config, spec_from_config
from gateway.tenancy.redis_store import RedisTenantStore
from gateway.tenancy.registry import OnChange, TenantRegistry
from gateway.tenancy.secrets import SecretBox
from gateway.tenancy.seed import seed
from gateway.tenancy.service import TenantAdmin
from gateway.tenancy.store import MemoryTenantStore, Snapshot, TenantStore

log = logging.getLogger("gateway.tenancy")


def open_tenant_store(config: GatewayConfig, environ: Mapping[str, str]) -> TenantStore:
    admin, limiter = config.admin, config.limiter
    if limiter.backend == "memory":
        try:
            return MemoryTenantStore(admin.state_file, admin.audit_retain)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"admin.state_file: cannot read {admin.state_file}: {exc}") from None
    url = environ.get(limiter.redis_url_env or "") or limiter.redis_url
    if not url:
        raise ConfigError(f"limiter.redis_url_env: environment variable {limiter.redis_url_env} "
                          f"is not set")  # fmt: skip
    # Loading every tenant may take longer than one admission: a second at least.
    return RedisTenantStore.from_url(url, limiter.key_prefix, max(1.0, limiter.timeout_s * 4),
                                     admin.audit_retain)  # fmt: skip


def file_snapshot(config: GatewayConfig, environ: Mapping[str, str], now: float) -> Snapshot:
    """The config file's tenants as records; raises ConfigError for a missing SigV4 secret."""
    records = {}
    for name, tenant in config.tenants.items():
        for pair in tenant.access_keys:
            if not environ.get(pair.secret_env):
                raise ConfigError(f"tenants.{name}.access_keys: environment variable "
                                  f"{pair.secret_env} (secret of {pair.id}) is not "
                                  f"set")  # fmt: skip
        records[name] = TenantRecord(id=name, spec=spec_from_config(tenant), source="config",
                                     credentials=credentials_from_config(tenant, now),
                                     created_at=now, updated_at=now)  # fmt: skip
    return Snapshot(-1, records, frozenset())


class Tenancy:
    """The registry and admin operations of one replica, and their start and stop."""

    def __init__(
        self, config: GatewayConfig, environ: Mapping[str, str], on_change: OnChange,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._config = config
        box = SecretBox.from_environ(environ, config.admin.secrets_key_env)
        store = open_tenant_store(config, environ)
        self.registry = TenantRegistry(store, box, environ, on_change=on_change,
                                       interval_s=config.admin.sync_interval_s)  # fmt: skip
        self.registry.install(file_snapshot(config, environ, clock()))
        self.admin = TenantAdmin(
            self.registry,
            box,
            models=config.models,
            max_wait_limit_s=config.server.shutdown_grace_s,
            clock=clock,
        )
        self._clock = clock

    async def _seed(self) -> None:
        admin = self._config.admin
        await seed(self.registry.store, self._config.tenants, admin.seed, self._clock())

    async def reseed(self, config: GatewayConfig, timeout_s: float) -> None:
        """A reloaded config's tenants into the store (``admin.seed`` as at start), then this
        replica's view of them; raises StoreUnavailable or TimeoutError."""
        self._config = config
        self.admin.models = frozenset(config.models)
        await asyncio.wait_for(self._seed(), timeout_s)
        await asyncio.wait_for(self.registry.refresh(), timeout_s)

    async def start(self, timeout_s: float) -> None:
        """Seed and load once (bounded), then keep in step in the background."""
        try:
            await asyncio.wait_for(self._seed(), timeout_s)
            await asyncio.wait_for(self.registry.refresh(), timeout_s)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("tenant store unreachable at start; serving the config file's tenants "
                        "until it answers: %s", exc or "timeout")  # fmt: skip
            self.registry.pending = self._seed
        self.registry.start()

    async def close(self) -> None:
        await self.registry.close()
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await self.registry.store.close()
