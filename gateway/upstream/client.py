"""Calls to Bedrock Runtime: re-signed with the account's credentials, over pooled connections.

One aiohttp session (connection pool) per endpoint, opened on first use and closed with the
client. aiohttp carries upstream traffic because it measured several times faster than httpx
under concurrency (docs/benchmarks.md). A streaming answer is handed back as soon as its
headers arrive (``UpstreamStream``) and read chunk by chunk as it comes. aiohttp's exceptions
are translated to gateway errors here and nowhere else, and counted here (a listener: the
metrics and the upstream's health) as they are translated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from gateway import sigv4
from gateway.catalog import Route
from gateway.config import AccountConfig, UpstreamConfig
from gateway.errors import GatewayError, ModelTimeout, NotSent, ServiceUnavailable
from gateway.upstream.credentials import CredentialSource

AsgiHeaders = list[tuple[bytes, bytes]]

_PASSED_BACK = (b"content-type", b"x-amzn-requestid", b"x-amzn-errortype")


class Listener(Protocol):
    """Told of every upstream call: its first byte, its end, or how it failed."""

    def upstream_answered(self, route: Route, status: int, ttfb_s: float) -> None: ...

    def upstream_done(self, route: Route, seconds: float) -> None: ...

    def upstream_failed(self, route: Route, error: str) -> None: ...


class Fanout:
    """Several listeners as one (the metrics and the upstream's health)."""

    def __init__(self, *listeners: Listener) -> None:
        self._listeners = listeners

    def upstream_answered(self, route: Route, status: int, ttfb_s: float) -> None:
        for listener in self._listeners:
            listener.upstream_answered(route, status, ttfb_s)

    def upstream_done(self, route: Route, seconds: float) -> None:
        for listener in self._listeners:
            listener.upstream_done(route, seconds)

    def upstream_failed(self, route: Route, error: str) -> None:
        for listener in self._listeners:
            listener.upstream_failed(route, error)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: AsgiHeaders
    body: bytes


@dataclass(frozen=True, slots=True)
class _Endpoint:
    base_url: str
    host: str


def base_url(account: AccountConfig, region: str) -> str:
    base = account.endpoint_url or f"https://bedrock-runtime.{region}.amazonaws.com"
    return base.rstrip("/")


def _endpoint(account: AccountConfig, region: str) -> _Endpoint:
    base = base_url(account, region)
    return _Endpoint(base, urlsplit(base).netloc)


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> AsgiHeaders:
    """The upstream headers a client should see: content type, request id, Bedrock's own."""
    kept = []
    for name, value in raw:
        lower = name.lower()
        if lower in _PASSED_BACK or lower.startswith(b"x-amzn-bedrock-"):
            kept.append((lower, value))
    return kept


class UpstreamClient:
    def __init__(
        self,
        config: UpstreamConfig,
        accounts: Mapping[str, AccountConfig],
        credentials: Mapping[str, CredentialSource],
        wall_clock: Callable[[], float] = time.time,
        listener: Listener | None = None,
    ) -> None:
        self._config = config
        self._listener: Listener = listener or Fanout()
        self._accounts = accounts
        self._credentials = credentials
        self._clock = wall_clock
        self._keys = sigv4.SigningKeys()
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )

    def _session(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._config.max_connections_per_region, ttl_dns_cache=300
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )  # fmt: skip
            self._sessions[base_url] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def call(
        self,
        route: Route,
        operation: str,
        body: bytes,
        body_sha256: str,
        headers: dict[str, str],
    ) -> UpstreamResponse:
        """Send ``body`` to ``route`` and read the whole answer. ``headers`` are lower-case
        request headers to forward (content type, Bedrock's own); they are signed with the rest.
        """
        url, session = await self._signed(route, operation, body_sha256, headers)
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                self._listener.upstream_answered(route, response.status,
                                                 time.perf_counter() - started)  # fmt: skip
                payload = await response.read()
                self._listener.upstream_done(route, time.perf_counter() - started)
                return UpstreamResponse(
                    response.status, response_headers(response.raw_headers), payload
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(route, exc, headers["host"]) from None

    def _failed(self, route: Route, exc: BaseException, host: str) -> GatewayError:
        error = translate(exc, host, self._config.read_timeout_s)
        self._listener.upstream_failed(route, error_kind(error))
        return error

    async def stream(
        self,
        route: Route,
        operation: str,
        body: bytes,
        body_sha256: str,
        headers: dict[str, str],
    ) -> UpstreamStream:
        """Send ``body`` like ``call`` but return as soon as the response headers are in; the
        caller reads the body chunk by chunk and must ``close`` the stream."""
        url, session = await self._signed(route, operation, body_sha256, headers)
        started = time.perf_counter()
        try:
            response = await session.post(url, data=body, headers=headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(route, exc, headers["host"]) from None
        if response.status != 200:  # an error answer: its headers are its first byte
            self._listener.upstream_answered(route, response.status,
                                             time.perf_counter() - started)  # fmt: skip
        timing = _Timing(route, started, self._listener, answered=response.status != 200)
        return UpstreamStream(response, headers["host"], self._config.read_timeout_s, timing)

    async def _signed(
        self, route: Route, operation: str, body_sha256: str, headers: dict[str, str]
    ) -> tuple[URL, aiohttp.ClientSession]:
        """The URL to post to and its session; signs ``headers`` in place.

        The URL goes out exactly as signed: left to itself, yarl would decode the model id's
        ``%3A`` to ``:``, and Bedrock, which canonicalises the path it receives, would then
        compute a different signature."""
        endpoint = _endpoint(self._accounts[route.account], route.region)
        path = f"/model/{route.path_id}/{operation}"
        headers["host"] = endpoint.host
        creds = await self._credentials[route.account].get()
        sigv4.sign(
            creds, method="POST", raw_path=path, headers=headers, payload_hash=body_sha256,
            region=route.region, service="bedrock", now=self._clock(), keys=self._keys,
        )  # fmt: skip
        return URL(endpoint.base_url + path, encoded=True), self._session(endpoint.base_url)


@dataclass(slots=True)
class _Timing:
    """A stream's first byte (its first body chunk) and end, told to the listener once each."""

    route: Route
    started: float
    listener: Listener
    answered: bool = False
    done: bool = False

    def first_byte(self, status: int) -> None:
        if not self.answered:
            self.answered = True
            self.listener.upstream_answered(self.route, status, time.perf_counter() - self.started)

    def end(self) -> None:
        if not self.done:
            self.done = True
            self.listener.upstream_done(self.route, time.perf_counter() - self.started)

    def failed(self, exc: BaseException, host: str, read_timeout_s: float) -> GatewayError:
        error = translate(exc, host, read_timeout_s)
        self.listener.upstream_failed(self.route, error_kind(error))
        return error


class UpstreamStream:
    """A response whose body is still arriving. ``status`` and ``headers`` are known; read the
    body with ``next_chunk`` (or ``read`` for an error answer), then ``close``."""

    def __init__(self, response: aiohttp.ClientResponse, host: str, read_timeout_s: float,
                 timing: _Timing | None = None) -> None:  # fmt: skip
        self._response = response
        self._host = host
        self._read_timeout_s = read_timeout_s
        self._timing = timing
        self.status = response.status
        self.headers = response_headers(response.raw_headers)

    async def next_chunk(self) -> bytes:
        """The bytes that arrived since the last call (waiting for some); b"" at the end."""
        try:
            chunk = await self._response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(exc) from None
        if self._timing is not None and chunk:
            self._timing.first_byte(self.status)
        elif self._timing is not None:
            self._timing.end()
        return chunk

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: BaseException) -> GatewayError:
        if self._timing is None:
            return translate(exc, self._host, self._read_timeout_s)
        return self._timing.failed(exc, self._host, self._read_timeout_s)

    def close(self) -> None:
        """Give the connection back when the body was read to the end; otherwise close it, so
        Bedrock sees the stream abandoned and stops generating."""
        if self._timing is not None:
            self._timing.end()
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def error_kind(error: GatewayError) -> str:
    """The ``error`` label of a translated failure."""
    if isinstance(error, NotSent):
        return "connect"
    return "timeout" if isinstance(error, ModelTimeout) else "connection"


def translate(exc: BaseException, host: str, read_timeout_s: float) -> GatewayError:
    """The one place aiohttp's failures become gateway errors."""
    if isinstance(exc, aiohttp.ClientConnectorError):  # includes connect timeouts
        return NotSent(f"Cannot connect to Bedrock at {host}: {exc.os_error or exc}.")
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return ModelTimeout(f"Bedrock at {host} did not answer within {read_timeout_s:g} s.")
    return ServiceUnavailable(f"The connection to Bedrock at {host} failed: "
                              f"{type(exc).__name__}.")  # fmt: skip
