"""uvicorn's HTTP/1.1 protocol (httptools) with the bounds it lacks on a request's head.

uvicorn neither limits the size of a request's headers nor the time they may take: a client
could send megabytes of them, or dribble them a byte at a time (or send nothing at all) and
hold the connection forever. This protocol allows a head ``head_timeout_s`` (from the
connection's start, or the request's first byte on a kept-alive one), ``max_head_bytes`` and
``MAX_HEADERS``, like granian's own HTTP/1 limits. Past the time or the size the client gets a
Bedrock-shaped 408 or 400 and the connection is closed; past the count, uvicorn's own 400.

It costs no timer per request: one timer per connection fires at most every
``head_timeout_s`` and is re-armed only while a head is being read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, RequestTimeout, ValidationError, new_request_id, render

MAX_HEADERS = 100
"""Header fields per request, as granian (hyper) allows."""


class _TooManyHeaders(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    def __init__(
        self, *args: Any, head_timeout_s: float, max_head_bytes: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        """Request line and headers, in bytes (checked after each read from the socket, so a
        head may pass it by one read before it is refused)."""
        self._head_since: float | None = None
        """When the head being read began (None: no head is being read)."""
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_begins()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_since is None or self.transport.is_closing():
            return
        # Counted once parsed: a read that completes the head may carry a large body too.
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            limit = f"this gateway's limit of {self.max_head_bytes} bytes"
            self._refuse(ValidationError(f"The request's headers are larger than {limit}."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # a kept-alive connection's next request
            self._head_begins()

    def on_headers_complete(self) -> None:
        self._head_since = None
        if len(self.headers) > MAX_HEADERS:
            raise _TooManyHeaders  # the parser fails: uvicorn answers 400 and closes
        super().on_headers_complete()

    def _head_begins(self) -> None:
        self._head_since = self.loop.time()
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_check)

    def _head_check(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport.is_closing():
            return
        left = since + self.head_timeout_s - self.loop.time()
        idle = self.cycle is None or self.cycle.response_complete  # not inside a pipeline
        if left > 0 or not idle:
            self._head_timer = self.loop.call_later(max(left, 0.05), self._head_check)
            return
        self._refuse(RequestTimeout(f"The request's headers did not arrive within "
                                    f"{self.head_timeout_s:g} s."))  # fmt: skip

    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` in Bedrock's shape, then close the connection."""
        self.logger.warning("Refused a request: %s", error.message)
        status, headers, body = render(error, new_request_id())
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}".encode()]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.transport.close()
        self._head_since = None


_REASONS = {400: "Bad Request", 408: "Request Timeout"}
