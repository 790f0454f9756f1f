"""Relaying a response stream to the client frame by frame, as the upstream produces it.

Two tasks, both owned and awaited here: the pump (upstream chunk → checked frames → client)
and a watcher on ``receive()`` that notices the client hanging up. Whichever ends first
cancels the other. The response starts with the first checked frame, so a failure before any
byte went out is raised to the caller, which answers it like any other error; after that a
failure can only be told in-stream, as an exception frame.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.asgi import Headers, Receive, Send, until_disconnect
from gateway.cost import Estimate, Usage, charge
from gateway.errors import GatewayError, InternalError, NotSent, ServiceUnavailable
from gateway.limiter.service import Limiter, Ticket
from gateway.streamtap import StreamTap, exception_frame
from gateway.upstream.client import UpstreamClient, UpstreamStream

log = logging.getLogger("gateway.stream")


class Ending(enum.Enum):
    COMPLETE = "complete"  # the upstream's stream reached its end, all of it relayed
    FAILED = "failed"  # ended early with an exception frame sent by the gateway
    DISCONNECTED = "disconnected"  # the client went away first


@dataclass(frozen=True, slots=True)
class StreamCall:
    """An admitted streaming call: what to send upstream and how to settle it."""

    ticket: Ticket
    operation: str
    body: bytes
    body_sha256: str
    headers: dict[str, str]  # upstream request headers, signed on the way out
    estimate: Estimate
    burndown: float
    reply_headers: Headers  # what the gateway adds to the answer (route taken, time queued)
    observe: Callable[[Usage], None] | None = None  # told the usage the stream reported


async def forward_stream(
    upstream: UpstreamClient, limiter: Limiter, call: StreamCall, receive: Receive, send: Send
) -> tuple[int, Headers, bytes] | None:
    """Call upstream, relay its stream and settle ``call.ticket`` exactly once, however it
    ends: on the usage the stream reported, else the best count known (client gone, stream
    cut), else the full reservation; nothing for an error answer or a call never sent.

    Returns the response to send when Bedrock answered with an error instead of a stream, and
    None once the stream was relayed."""
    ticket = call.ticket
    tap = StreamTap(call.operation)
    actual = ticket.reserved  # an unknown outcome keeps the full reservation: the safe side
    billed: Usage | None = None
    status = 200
    try:
        stream = await upstream.stream(
            ticket.route, call.operation, call.body, call.body_sha256, call.headers
        )
        status = stream.status
        headers = [*stream.headers, *call.reply_headers]
        try:
            if stream.status != 200:  # refused before streaming: answered like a plain call
                actual = 0
                return stream.status, headers, await stream.read()
            ending = await relay(stream, tap, receive, send, headers, call.operation)
            if ending is not Ending.COMPLETE:
                log.info("stream on %s %s after %d frames", ticket.route.label, ending.value,
                         tap.frames)  # fmt: skip
        finally:
            stream.close()
            if stream.status == 200:
                billed = tap.settled_usage(call.estimate)
                if billed is not None:
                    actual = charge(billed, call.burndown)
                usage = tap.usage.usage()
                if usage is not None and call.observe is not None:
                    call.observe(usage)
        return None
    except NotSent:
        actual = 0
        raise
    finally:
        await limiter.settle(ticket, actual, billed, status)


class _ClientGone(Exception):
    """``send`` raised: the server could not deliver to the client any more."""


class _Pump:
    def __init__(self, upstream: UpstreamStream, tap: StreamTap, send: Send, headers: Headers,
                 operation: str) -> None:  # fmt: skip
        self._upstream = upstream
        self._tap = tap
        self._send = send
        self._headers = headers
        self._operation = operation
        self.started = False

    async def run(self) -> Ending:
        try:
            while chunk := await self._upstream.next_chunk():
                ready = self._tap.feed(chunk)
                if ready:
                    await self._body(ready)
                if self._tap.error is not None:
                    raise InternalError(f"Bedrock's response stream was corrupt: "
                                        f"{self._tap.error}.")  # fmt: skip
            if self._tap.pending:
                raise ServiceUnavailable("Bedrock's response stream ended inside a frame.")
        except _ClientGone:
            raise
        except GatewayError as exc:
            return await self._fail(exc)
        except Exception:
            log.exception("bug while relaying a stream")
            return await self._fail(InternalError("The gateway failed while relaying the stream."))
        await self._end()
        return Ending.COMPLETE

    async def _fail(self, error: GatewayError) -> Ending:
        if not self.started:
            raise error  # nothing sent yet: the caller answers with a plain error response
        log.warning("stream ended early: %s", error.message)
        await self._body(exception_frame(error, self._operation))
        await self._end()
        return Ending.FAILED

    async def _body(self, data: bytes) -> None:
        await self._start()
        await self._deliver({"type": "http.response.body", "body": data, "more_body": True})

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            message = {"type": "http.response.start", "status": 200, "headers": self._headers}
            await self._deliver(message)

    async def _end(self) -> None:
        await self._start()
        await self._deliver({"type": "http.response.body", "body": b"", "more_body": False})

    async def _deliver(self, message: dict[str, object]) -> None:
        try:
            await self._send(message)
        except Exception as exc:  # servers differ: OSError, their own ClientDisconnected, …
            raise _ClientGone from exc


async def relay(
    upstream: UpstreamStream,
    tap: StreamTap,
    receive: Receive,
    send: Send,
    headers: Headers,
    operation: str,
) -> Ending:
    """Relay ``upstream``'s body to the client until it ends, fails or the client leaves.

    Raises a ``GatewayError`` only when it happened before the response started. The caller
    closes ``upstream`` (which aborts the connection if it was not read to the end)."""
    pump = _Pump(upstream, tap, send, headers, operation)
    pumping = await until_disconnect(receive, pump.run())
    if pumping.cancelled():
        return Ending.DISCONNECTED
    error = pumping.exception()
    if isinstance(error, _ClientGone):
        return Ending.DISCONNECTED
    if error is not None:
        raise error
    return pumping.result()
