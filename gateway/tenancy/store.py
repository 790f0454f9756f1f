"""Where tenants live: the store seam, and the in-memory store of the single-process default.

Every write is one compare-and-set on a tenant's revision that also bumps the store's version,
appends the audit entry and keeps the set of tenants deleted through the API, as one step.
Replicas poll ``version()`` and reload when it moved. The memory store may keep it all in a JSON
file (``admin.state_file``), rewritten whole after each change (tenants are few, changes rare).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.tenancy.model import AuditEntry, TenantRecord


class StaleRevision(Exception):
    """The tenant's revision is not the one the write expected."""

    def __init__(self, current: int) -> None:
        super().__init__(f"current revision {current}")
        self.current = current


@dataclass(frozen=True, slots=True)
class Write:
    tenant: str
    record: TenantRecord | None
    """The new record; None deletes the tenant."""
    expect: int
    """The revision the stored tenant must have: 0 absent, -1 any."""
    audit: AuditEntry


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    tenants: dict[str, TenantRecord]
    deleted: frozenset[str]
    """Tenants deleted through the admin API (the file does not bring them back)."""
    config_generation: int | None = None
    """Bumped by every config reload (each replica then reloads its own file); None for the
    config file's own snapshot, before the store answered."""


class TenantStore(Protocol):
    async def version(self) -> int: ...

    async def load(self) -> Snapshot: ...

    async def write(self, write: Write) -> int:
        """Apply ``write``; the new version. Raises StaleRevision."""
        ...

    async def signal_reload(self, audit: AuditEntry) -> int:
        """Bump the config generation and the version (so every replica's poll sees it) and
        append ``audit``; the new version."""
        ...

    async def audit(self, limit: int, before: int | None) -> list[AuditEntry]:
        """Newest first, entries with ``seq`` < ``before``."""
        ...

    async def record_use(self, used: dict[str, float]) -> None: ...

    async def last_used(self, ids: list[str]) -> dict[str, float]: ...

    async def close(self) -> None: ...


def check_revision(current: TenantRecord | None, expect: int) -> None:
    revision = 0 if current is None else current.revision
    if expect >= 0 and revision != expect:
        raise StaleRevision(revision)


@dataclass
class MemoryTenantStore:
    """One process's tenants, optionally kept in ``path`` across restarts."""

    path: str | None = None
    retain: int = 10_000
    _version: int = 0
    _tenants: dict[str, TenantRecord] = field(default_factory=dict)
    _deleted: set[str] = field(default_factory=set)
    _audit: list[AuditEntry] = field(default_factory=list)
    _used: dict[str, float] = field(default_factory=dict)
    _config_generation: int = 0

    def __post_init__(self) -> None:
        if self.path is not None and Path(self.path).exists():
            self._read(Path(self.path))

    async def version(self) -> int:
        return self._version

    async def load(self) -> Snapshot:
        return Snapshot(
            self._version, dict(self._tenants), frozenset(self._deleted), self._config_generation
        )

    async def write(self, write: Write) -> int:
        check_revision(self._tenants.get(write.tenant), write.expect)
        self._version += 1
        if write.record is None:
            self._tenants.pop(write.tenant, None)
            self._deleted.add(write.tenant)
        else:
            self._tenants[write.tenant] = write.record
            self._deleted.discard(write.tenant)
        self._audit.append(write.audit.model_copy(update={"seq": self._version}))
        del self._audit[: -self.retain]
        self._save()
        return self._version

    async def signal_reload(self, audit: AuditEntry) -> int:
        self._version += 1
        self._config_generation += 1
        self._audit.append(audit.model_copy(update={"seq": self._version}))
        del self._audit[: -self.retain]
        self._save()
        return self._version

    async def audit(self, limit: int, before: int | None) -> list[AuditEntry]:
        newest = [e for e in reversed(self._audit) if before is None or e.seq < before]
        return newest[:limit]

    async def record_use(self, used: dict[str, float]) -> None:
        for key, at in used.items():
            self._used[key] = max(at, self._used.get(key, 0.0))

    async def last_used(self, ids: list[str]) -> dict[str, float]:
        return {i: self._used[i] for i in ids if i in self._used}

    async def close(self) -> None:
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        state = {
            "version": self._version,
            "tenants": [r.model_dump(mode="json") for r in self._tenants.values()],
            "deleted": sorted(self._deleted),
            "audit": [e.model_dump(mode="json") for e in self._audit],
            "last_used": self._used,
            "config_generation": self._config_generation,
        }
        target = Path(self.path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(state, file)
        os.replace(tmp, target)  # a crash leaves the old file or the new one, never half

    def _read(self, path: Path) -> None:
        state = json.loads(path.read_text(encoding="utf-8"))
        self._version = int(state["version"])
        for raw in state["tenants"]:
            record = TenantRecord.model_validate(raw)
            self._tenants[record.id] = record
        self._deleted = set(state.get("deleted", []))
        self._audit = [AuditEntry.model_validate(e) for e in state.get("audit", [])]
        self._used = {k: float(v) for k, v in state.get("last_used", {}).items()}
        self._config_generation = int(state.get("config_generation", 0))
