"""Minimal ASGI request/response helpers, shared by the gateway's data plane (its hot path) and
the simulator: the message types, reading a bounded body, sending a whole response, and
noticing a client that hangs up. Nothing here knows the gateway's own parts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

from gateway.errors import RequestTimeout, ValidationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its request was read."""


def too_large(limit: int) -> ValidationError:
    return ValidationError(f"The request body is larger than this gateway's limit of "
                           f"{limit} bytes.")  # fmt: skip


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class SlowBodies:
    """Ends body reads that take longer than ``timeout_s`` (a client dribbling its body, or
    stalled in the middle of it) with ``RequestTimeout``.

    One timer serves every read, ticking every ``tick_s`` while any is pending: a timer per
    request (``asyncio.timeout``) would cost 3-5 us each, these a dict entry. A read is ended
    between ``timeout_s`` and ``timeout_s + tick_s`` after it started."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick_s = min(1.0, timeout_s / 4)
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, limit: int) -> bytes:
        """``read_body``, within the time limit."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.tick_s, self._tick, loop)
        try:
            return await read_body(receive, limit)
        except asyncio.CancelledError:
            # A task still reading at a tick is suspended in read_body: the cancel lands here.
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:  # ours alone, not also the server's
                    raise RequestTimeout(f"The request body did not arrive within "
                                         f"{self.timeout_s:g} s.") from None  # fmt: skip
            raise
        finally:
            self._reading.pop(task, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        if self._reading:
            self._timer = loop.call_later(self.tick_s, self._tick, loop)


async def send_response(send: Send, status: int, headers: Headers, body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    # The request body has been read; what is left is the end-of-body (some servers send an
    # empty one) and, when the client goes away, http.disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``work``, cancelling it if the client disconnects first. Returns its finished task:
    cancelled when the client left; its error or result otherwise. Both child tasks are
    awaited; only the caller's own cancellation propagates."""
    worker = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((worker, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        worker.cancel()
        watcher.cancel()
        await asyncio.gather(worker, watcher, return_exceptions=True)
    return worker
