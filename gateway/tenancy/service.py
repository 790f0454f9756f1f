"""The admin operations on tenants and credentials, each one audited compare-and-set write.

Reads come from this replica's registry, refreshed first (one GET when nothing changed); a
write that finds the tenant changed underneath it is retried on the fresh copy. After a
write the registry reloads at once, so the replica that made a change serves it immediately;
the others pick it up at their next poll.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Collection
from typing import Literal, TypeVar

import pydantic

from gateway.limiter.store import StoreUnavailable
from gateway.tenancy.errors import Conflict, InvalidField, NotFound, StoreDown
from gateway.tenancy.model import (
    AuditEntry,
    Credential,
    TenantPatch,
    TenantRecord,
    TenantSpec,
    public_tenant,
    valid_tenant_id,
)
from gateway.tenancy.registry import TenantRegistry
from gateway.tenancy.secrets import SecretBox, hash_key, new_access_key_pair, new_bearer_key
from gateway.tenancy.store import StaleRevision, Write

CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$")
"""What a credential's name may be (whole-string: ``fullmatch``, as JSON Schema's ``pattern``)."""
_ATTEMPTS = 5
T = TypeVar("T")


class TenantAdmin:
    def __init__(
        self, registry: TenantRegistry, box: SecretBox, *, models: Collection[str],
        max_wait_limit_s: float, clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self._registry = registry
        self._store = registry.store
        self._box = box
        self._models = frozenset(models)
        self._max_wait_limit_s = max_wait_limit_s
        self._clock = clock

    @property
    def models(self) -> frozenset[str]:
        """The model names a tenant's ``models`` may list."""
        return self._models

    @models.setter
    def models(self, names: frozenset[str]) -> None:  # a config reload
        self._models = names

    @property
    def max_wait_limit_s(self) -> float:
        """``max_wait_s`` must be shorter than this (``server.shutdown_grace_s``)."""
        return self._max_wait_limit_s

    async def tenants(self) -> dict[str, TenantRecord]:
        await self._guard(self._registry.refresh())
        return self._registry.records

    async def tenant(self, tenant_id: str) -> TenantRecord:
        record = (await self.tenants()).get(tenant_id)
        if record is None:
            raise NotFound(f"No tenant {tenant_id[:64]!r}.", "tenant_id")
        return record

    async def last_used(self, record: TenantRecord) -> dict[str, float]:
        ids = [c.id for c in record.credentials]
        stored = await self._guard(self._store.last_used(ids))
        pending = {i: self._registry.pending_use(i) for i in ids}
        return stored | {i: at for i, at in pending.items() if at is not None}

    async def create(self, actor: str, tenant_id: str, spec: TenantSpec) -> TenantRecord:
        if not valid_tenant_id(tenant_id):
            raise InvalidField("Tenant ids are 1-64 letters, digits, '_', '-' or '.', starting "
                               "with a letter or digit.", "id")  # fmt: skip
        self._check(spec)
        now = self._clock()

        def create(current: TenantRecord | None) -> TenantRecord:
            if current is not None:
                raise Conflict(f"Tenant {tenant_id!r} exists already.", "id")
            return TenantRecord(id=tenant_id, spec=spec, created_at=now, updated_at=now)

        return await self._change(actor, "tenant.create", tenant_id, None, create)

    async def update(self, actor: str, tenant_id: str, patch: TenantPatch) -> TenantRecord:
        def update(current: TenantRecord | None) -> TenantRecord:
            current = self._existing(tenant_id, current)
            try:
                spec = patch.apply(current.spec)
            except pydantic.ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(p) for p in error["loc"]) or None
                raise InvalidField(error["msg"], field) from None
            self._check(spec)
            return self._next(current, spec=spec)

        return await self._change(actor, "tenant.update", tenant_id, None, update)

    async def delete(self, actor: str, tenant_id: str) -> None:
        def delete(current: TenantRecord | None) -> None:
            self._existing(tenant_id, current)

        await self._change(actor, "tenant.delete", tenant_id, None, delete)

    async def add_credential(
        self, actor: str, tenant_id: str, kind: Literal["bearer", "sigv4"], name: str,
        expires_at: float | None,
    ) -> tuple[TenantRecord, Credential, dict[str, str]]:  # fmt: skip
        """The tenant, the new credential and its plaintext (shown once, never stored)."""
        now = self._clock()
        if not CREDENTIAL_NAME.fullmatch(name):
            raise InvalidField("Credential names are 1-64 letters, digits, spaces or '_.@-'.",
                               "name")  # fmt: skip
        if expires_at is not None and expires_at <= now:
            raise InvalidField("expires_at must be in the future (Unix seconds).", "expires_at")
        if kind == "bearer":
            key = new_bearer_key()
            digest = hash_key(key)
            credential = Credential(id=f"bk-{digest[:16]}", kind=kind, name=name, created_at=now,
                                    expires_at=expires_at, key_sha256=digest)  # fmt: skip
            plaintext = {"key": key}
        else:
            if not self._box.available:
                raise StoreDown("SigV4 credentials need a sealing key: set the environment "
                                "variable named by admin.secrets_key_env.", "kind")  # fmt: skip
            key_id, secret = new_access_key_pair()
            credential = Credential(
                id=key_id,
                kind=kind,
                name=name,
                created_at=now,
                expires_at=expires_at,
                secret_enc=self._box.seal(secret),
            )
            plaintext = {"access_key_id": key_id, "secret_access_key": secret}

        def add(current: TenantRecord | None) -> TenantRecord:
            current = self._existing(tenant_id, current)
            return self._next(current, credentials=(*current.credentials, credential))

        record = await self._change(actor, "credential.create", tenant_id, credential.id, add)
        return record, credential, plaintext

    async def revoke(self, actor: str, tenant_id: str, credential_id: str) -> Credential:
        now = self._clock()

        def revoke(current: TenantRecord | None) -> TenantRecord:
            current = self._existing(tenant_id, current)
            found = [c for c in current.credentials if c.id == credential_id]
            if not found:
                raise NotFound(f"Tenant {tenant_id!r} has no credential {credential_id[:64]!r}.",
                               "credential_id")  # fmt: skip
            if found[0].revoked_at is not None:
                return current
            credentials = tuple(
                c.model_copy(update={"revoked_at": now}) if c.id == credential_id else c
                for c in current.credentials
            )
            return self._next(current, credentials=credentials)  # fmt: skip

        record = await self._change(actor, "credential.revoke", tenant_id, credential_id, revoke)
        return next(c for c in record.credentials if c.id == credential_id)

    async def audit(self, limit: int, before: int | None) -> list[AuditEntry]:
        return await self._guard(self._store.audit(limit, before))

    def _check(self, spec: TenantSpec) -> None:
        for model in spec.models or []:
            if model not in self._models:
                raise InvalidField(f"Unknown model {model[:64]!r}; configured: "
                                   f"{sorted(self._models)}.", "models")  # fmt: skip
        if spec.max_wait_s is not None and spec.max_wait_s >= self._max_wait_limit_s:
            raise InvalidField(f"max_wait_s must be shorter than server.shutdown_grace_s "
                               f"({self._max_wait_limit_s:g} s).", "max_wait_s")  # fmt: skip

    def _existing(self, tenant_id: str, current: TenantRecord | None) -> TenantRecord:
        if current is None:
            raise NotFound(f"No tenant {tenant_id[:64]!r}.", "tenant_id")
        return current

    def _next(self, current: TenantRecord, **changes: object) -> TenantRecord:
        return current.model_copy(
            update={**changes, "updated_at": self._clock(), "revision": current.revision + 1}
        )

    async def _change(
        self, actor: str, action: str, tenant_id: str, credential: str | None,
        change: Callable[[TenantRecord | None], TenantRecord | None],
    ) -> TenantRecord:  # fmt: skip
        for _ in range(_ATTEMPTS):
            current = (await self.tenants()).get(tenant_id)
            after = change(current)
            if after is current and current is not None:
                return current  # nothing to change (a second revoke)
            entry = AuditEntry(
                at=self._clock(), actor=actor, action=action, tenant=tenant_id,
                credential=credential, before=public_tenant(current) if current else None,
                after=public_tenant(after) if after else None,
            )  # fmt: skip
            expect = 0 if current is None else current.revision
            try:
                await self._guard(self._store.write(Write(tenant_id, after, expect, entry)))
            except StaleRevision:
                continue
            await self._guard(self._registry.refresh())
            result = after if after is not None else current
            assert result is not None  # a change needs a tenant before or after it
            return result
        raise Conflict(f"Tenant {tenant_id!r} kept changing; try again.", "tenant_id")

    async def _guard(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, 5.0)
        except (StoreUnavailable, TimeoutError):
            raise StoreDown("The tenant store did not answer; try again.") from None
