"""The config file's tenants meet the store at start (``admin.seed``).

``missing`` (the default): the admin API is the source of truth. A tenant the store lacks is
created from the file; one the store has stays as it is (a difference is logged, naming the
fields); one deleted through the admin API stays deleted. ``file``: the file wins for the
tenants it names, at every start: their settings and file credentials are overwritten,
credentials created through the admin API are kept. Tenants only in the store are never touched.
Several replicas starting at once are safe: every write is a compare-and-set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from gateway.config import TenantConfig
from gateway.tenancy.model import (
    AuditEntry,
    TenantRecord,
    credentials_from_config,
    public_tenant,
    spec_from_config,
)
from gateway.tenancy.store import StaleRevision, TenantStore, Write

log = logging.getLogger("gateway.tenancy")
ACTOR = "config-file"


def _differences(a: TenantRecord, b: TenantRecord) -> list[str]:
    left, right = a.spec.model_dump(), b.spec.model_dump()
    fields = [name for name in left if left[name] != right[name]]
    mine = {(c.id, c.key_sha256, c.secret_env) for c in a.credentials if c.source == "config"}
    theirs = {(c.id, c.key_sha256, c.secret_env) for c in b.credentials if c.source == "config"}
    return fields + (["credentials"] if mine != theirs else [])


async def seed(
    store: TenantStore, tenants: Mapping[str, TenantConfig], mode: Literal["missing", "file"],
    now: float,
) -> list[str]:  # fmt: skip
    """Bring the file's tenants into ``store``; the ids written."""
    snapshot = await store.load()
    written = []
    for name, config in tenants.items():
        wanted = TenantRecord(id=name, spec=spec_from_config(config), source="config",
                              credentials=credentials_from_config(config, now),
                              created_at=now, updated_at=now)  # fmt: skip
        current = snapshot.tenants.get(name)
        if current is None and name in snapshot.deleted and mode == "missing":
            log.warning("tenant %s is in the config file but was deleted through the admin API; "
                        "not re-created (admin.seed: missing)", name)  # fmt: skip
            continue
        if current is None:
            write = Write(
                name,
                wanted,
                0,
                AuditEntry(
                    at=now,
                    actor=ACTOR,
                    action="tenant.seed",
                    tenant=name,
                    after=public_tenant(wanted),
                ),
            )
        else:
            differs = _differences(current, wanted)
            if not differs:
                continue
            if mode == "missing":
                log.info("tenant %s: the store's %s differ from the config file's; the store "
                         "wins (admin.seed: missing)", name, ", ".join(differs))  # fmt: skip
                continue
            merged = _overwrite(current, wanted, now)
            write = Write(name, merged, current.revision, AuditEntry(
                at=now, actor=ACTOR, action="tenant.seed-overwrite", tenant=name,
                before=public_tenant(current), after=public_tenant(merged)))  # fmt: skip
        try:
            await store.write(write)
        except StaleRevision:
            continue  # another replica seeded it first
        written.append(name)
    return written


def _overwrite(current: TenantRecord, wanted: TenantRecord, now: float) -> TenantRecord:
    """The file's settings and file credentials, the store's API credentials and history."""
    since = {c.id: c.created_at for c in current.credentials}
    from_file = tuple(c.model_copy(update={"created_at": since.get(c.id, now)})
                      for c in wanted.credentials)  # fmt: skip
    kept = tuple(c for c in current.credentials if c.source == "api")
    return current.model_copy(update={
        "spec": wanted.spec, "credentials": from_file + kept, "updated_at": now,
        "revision": current.revision + 1})  # fmt: skip
