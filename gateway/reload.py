"""Config reload at runtime: validated, applied at once on every replica, last good kept.

``POST /admin/config/reload`` makes the replica that gets it read its config file again and
validate it (the whole file, as at start). A file that fails, or that changes a section only a
restart can change, is refused with the reason and nothing changes anywhere. A good one is
applied here, the config file's tenants are seeded again (``admin.seed`` decides, as at
start), and the store's config generation is bumped: every other replica's tenant poll sees
it within ``admin.sync_interval_s`` and reloads *its own* file the same way. A replica whose
file fails then keeps its last good config and says why in ``GET /admin/config`` and its log.

What a reload changes: ``models`` (routes, their quotas, prices, fallbacks, new and removed
models), ``queue``, ``logging`` and ``tenants``. Applying is synchronous, between two
requests' steps on the event loop: a request already routed finishes on the routes it got; the
next one sees the new catalog. Quota usage carries over (a pool's buckets keep their keys).
Everything else (``server``, ``upstream``, ``accounts``, ``limiter``, ``admin``, ``metrics``,
``usage``, ``calibration``) opens sockets or shapes state at start: a change there is refused
as needing a restart.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("gateway.reload")

RELOADABLE = ("models", "queue", "logging", "tenants")
RESTART_ONLY = ("server", "upstream", "accounts", "limiter", "admin", "metrics", "usage",
                "calibration")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Loaded:
    config: GatewayConfig
    sha256: str
    at: float


class Refused(Exception):
    """The file cannot be reloaded: not valid, or a change that needs a restart."""


def _read(path: str) -> tuple[GatewayConfig, str]:
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise Refused(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return load_config(path), digest
    except ConfigError as exc:
        raise Refused(str(exc)) from None


def changed_sections(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    return [name for name in (*RELOADABLE, *RESTART_ONLY)
            if getattr(old, name) != getattr(new, name)]  # fmt: skip


class Reloader:
    """This replica's config: what it loaded, and reloading it."""

    def __init__(
        self, path: str | None, config: GatewayConfig,
        apply: Callable[[GatewayConfig], None], seed: Callable[[GatewayConfig], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.path = path
        self._apply = apply
        self._seed = seed
        self._clock = clock
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""
        self.loaded = Loaded(config, digest, clock())
        self.error: tuple[float, str] | None = None
        """When the last reload of this replica failed, and why (None: it did not)."""

    def check(self) -> tuple[GatewayConfig, str, list[str]]:
        """The file's config, its digest and the sections it changes; raises Refused."""
        if self.path is None:
            raise Refused("This gateway was not started from a config file: nothing to reload.")
        config, digest = _read(self.path)
        changed = changed_sections(self.loaded.config, config)
        restart = [name for name in changed if name in RESTART_ONLY]
        if restart:
            raise Refused(f"{self.path}: {', '.join(restart)} changed; "
                          f"{'it needs' if len(restart) == 1 else 'they need'} a restart (a "
                          f"reload changes {', '.join(RELOADABLE)})")  # fmt: skip
        return config, digest, changed

    async def reload(self) -> list[str]:
        """Reload the file here and seed its tenants; the sections changed. Raises Refused
        (the last good config stays)."""
        try:
            config, digest, changed = self.check()
        except Refused as exc:
            self.error = (self._clock(), str(exc))
            raise
        self._take(config, digest, changed)
        if "tenants" in changed:
            await self._seed(config)
        return changed

    async def follow(self, generation: int) -> None:
        """Another replica reloaded: do the same with this replica's own file (its tenants
        were seeded there already). A failure keeps the last good config, logged."""
        try:
            config, digest, changed = self.check()
        except Refused as exc:
            if self.path is None:
                return
            self.error = (self._clock(), str(exc))
            loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded.at))
            log.error("config reload %d: keeping the config loaded at %s: %s", generation,
                      loaded, exc)  # fmt: skip
            return
        if digest != self.loaded.sha256:  # the replica that reloaded hears its own signal too
            self._take(config, digest, changed)

    def _take(self, config: GatewayConfig, digest: str, changed: list[str]) -> None:
        if changed:
            self._apply(config)
        self.loaded, self.error = Loaded(config, digest, self._clock()), None
        log.warning("config reloaded from %s (%s): %s", self.path, digest[:12],
                    ", ".join(changed) or "nothing changed")  # fmt: skip
