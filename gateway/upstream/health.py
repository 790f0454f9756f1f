"""Is Bedrock reachable? Judged from the calls themselves, probed only when there are none.

Every answer from an endpoint (any status: Bedrock answered) marks it reachable; a failed
connection or a timeout counts against it. An endpoint is unreachable only after
``threshold`` failures in a row, so one failed call does not flap readiness. With no call for
``probe_after_s``, a readiness check opens a TCP connection to it instead (counted the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from gateway.catalog import Route


async def tcp_connect(host: str, port: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class UpstreamHealth:
    def __init__(
        self,
        endpoints: dict[tuple[str, str], str],
        *,
        threshold: int = 3,
        probe_after_s: float = 30.0,
        probe_timeout_s: float = 2.0,
        probe: Callable[[str, int, float], Awaitable[bool]] = tcp_connect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``endpoints``: base URL by (account, region)."""
        self._endpoints = endpoints
        self._threshold = threshold
        self._probe_after_s = probe_after_s
        self._probe_timeout_s = probe_timeout_s
        self._probe = probe
        self._clock = clock
        self._failures = dict.fromkeys(set(endpoints.values()), 0)
        self._seen = dict.fromkeys(set(endpoints.values()), float("-inf"))

    def _url(self, route: Route) -> str | None:
        return self._endpoints.get((route.account, route.region))

    def _record(self, url: str | None, ok: bool) -> None:
        if url is None or url not in self._failures:
            return
        self._seen[url] = self._clock()
        self._failures[url] = 0 if ok else self._failures[url] + 1

    # ---- the upstream client's listener -----------------------------------------------------

    def upstream_answered(self, route: Route, status: int, ttfb_s: float) -> None:
        self._record(self._url(route), True)

    def upstream_done(self, route: Route, seconds: float) -> None:
        return None

    def upstream_failed(self, route: Route, error: str) -> None:
        if error in ("connect", "timeout"):
            self._record(self._url(route), False)

    # ---- readiness --------------------------------------------------------------------------

    async def state(self) -> str:
        """``ok``, ``degraded: …`` (some endpoints unreachable) or ``unreachable: …``."""
        now = self._clock()
        for url in self._failures:
            if now - self._seen[url] >= self._probe_after_s:
                parts = urlsplit(url)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                ok = await self._probe(parts.hostname or "", port, self._probe_timeout_s)
                self._record(url, ok)
        down = sorted(url for url, n in self._failures.items() if n >= self._threshold)
        if not down:
            return "ok"
        what = f"{len(down)} of {len(self._failures)} Bedrock endpoints unreachable ({down[0]}…)"
        return f"unreachable: {what}" if len(down) == len(self._failures) else f"degraded: {what}"
