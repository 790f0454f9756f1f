"""The admin API's config routes: reload the config file on every replica, and see what this
replica loaded (``gateway.reload`` says what a reload changes and how it spreads)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request
from pydantic import BaseModel

from gateway.api.admin import error_responses
from gateway.limiter.store import StoreUnavailable
from gateway.reload import Refused, Reloader
from gateway.tenancy.errors import InvalidField, StoreDown
from gateway.tenancy.model import AuditEntry
from gateway.tenancy.wiring import Tenancy


class ConfigError(BaseModel):
    at: float
    message: str


class ConfigState(BaseModel):
    path: str | None
    sha256: str
    """Of the file as this replica last loaded it."""
    loaded_at: float
    generation: int | None
    """The store's config generation this replica has seen (every reload bumps it)."""
    last_error: ConfigError | None
    """Why this replica's last reload failed; null when it did not (or none was asked)."""


class Reloaded(BaseModel):
    sha256: str
    changed: list[str]
    """The sections that changed: models, queue, logging, tenants."""
    version: int
    """The store version that carries the reload to the other replicas."""


def config_router(reloader: Reloader, tenancy: Tenancy, clock: Callable[[], float],
                  timeout_s: float) -> APIRouter:  # fmt: skip
    router = APIRouter(prefix="/admin", tags=["config"])

    def state() -> ConfigState:
        error = reloader.error
        return ConfigState(
            path=reloader.path, sha256=reloader.loaded.sha256, loaded_at=reloader.loaded.at,
            generation=tenancy.registry.config_generation,
            last_error=None if error is None else ConfigError(at=error[0], message=error[1]),
        )  # fmt: skip

    @router.get("/config", operation_id="showConfig")
    async def show() -> ConfigState:
        """What this replica loaded, and whether its last reload failed."""
        return state()

    @router.post("/config/reload", operation_id="reloadConfig",
                 responses=error_responses(503))  # fmt: skip
    async def reload(request: Request) -> Reloaded:
        """Read and validate this replica's config file, apply it, and have every other
        replica reload its own; a file that fails changes nothing anywhere."""
        before = reloader.loaded.sha256
        try:
            changed = await reloader.reload()
        except Refused as exc:
            raise InvalidField(str(exc), "config") from None
        except (StoreUnavailable, TimeoutError) as exc:  # applied here; tenants not seeded
            raise StoreDown(f"Reloaded on this replica, but the tenant store did not answer "
                            f"({exc or 'timeout'}): the other replicas did not hear of it; "
                            f"reload again.") from None  # fmt: skip
        actor = getattr(request.state, "admin", "admin")
        after = {"sha256": reloader.loaded.sha256, "changed": changed}
        entry = AuditEntry(at=clock(), actor=actor, action="config.reload", tenant="",
                           before={"sha256": before}, after=after)  # fmt: skip
        try:
            store = tenancy.registry.store
            version = await asyncio.wait_for(store.signal_reload(entry), timeout_s)
        except (StoreUnavailable, TimeoutError) as exc:
            raise StoreDown(f"Reloaded on this replica, but the tenant store did not answer "
                            f"({exc or 'timeout'}): the other replicas did not hear of it; "
                            f"reload again.") from None  # fmt: skip
        return Reloaded(sha256=reloader.loaded.sha256, changed=changed, version=version)

    return router
