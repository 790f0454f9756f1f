"""Each replica's copy of the tenants: the credential directory the data plane reads, kept in
step with the store by one background task.

Every ``interval_s`` the task reads the store's version (one Redis GET); when it moved, it
loads the tenants, tells ``on_change`` about each one that changed (the limiter's budgets, the
queue's weights) and swaps in a new ``Directory``. Authentication itself never calls the store.
Credential uses are noted in memory and written to the store every ``flush_s``. A store whose
version went back (Redis restarted empty, or flushed) is restored from this replica's copy
before it is read, so a lost Redis never empties the replicas' tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from gateway.auth import Directory, Key, Tenant
from gateway.limiter.store import StoreUnavailable
from gateway.tenancy.model import AuditEntry, Credential, TenantRecord, TenantSpec, public_tenant
from gateway.tenancy.secrets import SecretBox, Unsealable
from gateway.tenancy.store import Snapshot, StaleRevision, TenantStore, Write

log = logging.getLogger("gateway.tenancy")

OnChange = Callable[[str, TenantSpec | None], None]


def tenant_of(record: TenantRecord) -> Tenant:
    spec = record.spec
    models = frozenset(spec.models) if spec.models is not None else None
    return Tenant(record.id, models, spec.priority == "batch", spec.max_wait_s)


class TenantRegistry:
    def __init__(
        self,
        store: TenantStore,
        box: SecretBox,
        environ: Mapping[str, str],
        *,
        on_change: OnChange,
        interval_s: float = 0.25,
        timeout_s: float = 2.0,
        flush_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._box = box
        self._environ = environ
        self._on_change = on_change
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._flush_s = flush_s
        self._clock = clock
        self.directory = Directory({}, {})
        self.records: dict[str, TenantRecord] = {}
        self.version = -1
        self._opened: dict[tuple[str, str], str] = {}
        self._used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.pending: Callable[[], Awaitable[None]] | None = None
        """Run before the next refresh until it succeeds (the seeding a failed start missed)."""
        self.config_generation: int | None = None
        """The store's config generation last seen (None: not yet)."""
        self.on_config: Callable[[int], Awaitable[None]] | None = None
        """Called when another replica's config reload bumped the generation."""

    def install(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` this replica's view: changed tenants first, then the directory."""
        old, new = self.records, snapshot.tenants
        for name in old.keys() - new.keys():
            self._on_change(name, None)
        for name, record in new.items():
            if name not in old or old[name].spec != record.spec:
                self._on_change(name, record.spec)
        self.directory = self._build(new)
        self.records, self.version = dict(new), snapshot.version

    async def refresh(self) -> bool:
        """Reload if the store's version moved; whether it did. Raises StoreUnavailable."""
        version = await asyncio.wait_for(self.store.version(), self._timeout_s)
        if version == self.version:
            return False
        if 0 <= version < self.version and self.records:
            await asyncio.wait_for(self._restore(version), self._timeout_s)
        snapshot = await asyncio.wait_for(self.store.load(), self._timeout_s)
        self.install(snapshot)
        seen, self.config_generation = self.config_generation, snapshot.config_generation
        if seen is not None and snapshot.config_generation != seen and self.on_config:
            await self.on_config(snapshot.config_generation or 0)
        return True

    async def _restore(self, version: int) -> None:
        """Write this replica's tenants back into a store that lost them (absent ones only:
        another replica may have restored them first)."""
        log.warning("the tenant store went back to version %d (this replica had %d): restoring "
                    "%d tenants from this replica's copy", version, self.version,
                    len(self.records))  # fmt: skip
        for record in list(self.records.values()):
            entry = AuditEntry(at=self._clock(), actor="replica-restore", action="tenant.restore",
                               tenant=record.id, after=public_tenant(record))  # fmt: skip
            with contextlib.suppress(StaleRevision):
                await self.store.write(Write(record.id, record, 0, entry))

    def used(self, credential: str, now: float) -> None:
        self._used[credential] = now

    def pending_use(self, credential: str) -> float | None:
        """The last use not yet written to the store."""
        return self._used.get(credential)

    async def flush_use(self) -> None:
        used, self._used = self._used, {}
        try:
            await asyncio.wait_for(self.store.record_use(used), self._timeout_s)
        except (StoreUnavailable, TimeoutError):
            for key, at in used.items():  # keep them for the next try
                self._used.setdefault(key, at)
            raise

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tenant-registry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await self.flush_use()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self._flush_s
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if self.pending is not None:
                    await asyncio.wait_for(self.pending(), self._timeout_s)
                    self.pending = None
                await self.refresh()
                if loop.time() >= next_flush:
                    next_flush = loop.time() + self._flush_s
                    await self.flush_use()
            except (StoreUnavailable, TimeoutError) as exc:
                if not self._failing:
                    log.warning("tenant store unreachable, keeping the tenants last loaded: %s",
                                exc or "timeout")  # fmt: skip
                self._failing = True
                continue
            if self._failing:
                log.warning("tenant store reachable again")
                self._failing = False

    def _build(self, records: Mapping[str, TenantRecord]) -> Directory:
        bearer: dict[str, Key] = {}
        pairs: dict[str, Key] = {}
        opened: dict[tuple[str, str], str] = {}
        for record in records.values():
            tenant = tenant_of(record)
            for credential in record.credentials:
                key = Key(tenant, credential.id, credential.expires_at, credential.revoked_at)
                if credential.kind == "bearer" and credential.key_sha256:
                    bearer[credential.key_sha256] = key
                    continue
                secret = self._secret(record.id, credential, opened)
                if secret is not None:
                    pairs[credential.id] = Key(tenant, credential.id, credential.expires_at,
                                               credential.revoked_at, secret)  # fmt: skip
        self._opened = opened
        return Directory(bearer, pairs)

    def _secret(
        self, tenant: str, credential: Credential, opened: dict[tuple[str, str], str]
    ) -> str | None:
        if credential.secret_env is not None:
            secret = self._environ.get(credential.secret_env)
            if not secret:
                log.error("tenant %s: access key %s: environment variable %s is not set; "
                          "the key is not accepted", tenant, credential.id,
                          credential.secret_env)  # fmt: skip
            return secret or None
        if credential.secret_enc is None:
            return None
        cache_key = (credential.id, credential.secret_enc)
        secret = self._opened.get(cache_key)  # opening costs ~20 µs: only new ones are opened
        if secret is None:
            try:
                secret = self._box.open(credential.secret_enc)
            except Unsealable as exc:
                log.error("tenant %s: access key %s: the stored secret cannot be opened (%s); "
                          "the key is not accepted", tenant, credential.id, exc)  # fmt: skip
                return None
        opened[cache_key] = secret
        return secret
