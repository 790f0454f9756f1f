"""What the gateway reads from a response stream as it relays it: whole, checked frames to pass
on, the usage they report, and the exception frame that reports a failure mid-stream.

Pure, no I/O: bytes in, bytes out. Only frames whose CRCs check are passed on, so a client
never receives half a frame followed by the gateway's own exception frame.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from gateway import cost
from gateway.errors import GatewayError
from gateway.eventstream import EventStreamDecoder, FramingError, Message, encode_message
from gateway.usage import StreamUsage

STREAM_OPERATIONS = frozenset({"invoke-with-response-stream", "converse-stream"})

# The lowerCamel union member each error is sent as mid-stream (docs/bedrock.md §2, §3): botocore
# reads the member name as the error code; a capitalised shape name would give an empty code.
_STREAM_TYPES = {
    "ThrottlingException": "throttlingException",
    "ValidationException": "validationException",
    "ServiceUnavailableException": "serviceUnavailableException",
    "InternalServerException": "internalServerException",
    "ModelTimeoutException": "modelTimeoutException",
}


def exception_frame(error: GatewayError, operation: str) -> bytes:
    """``error`` as an event-stream exception frame that the SDKs raise as an error."""
    member = _STREAM_TYPES.get(error.error_type, "internalServerException")
    if member == "modelTimeoutException" and operation == "converse-stream":
        member = "modelStreamErrorException"  # not in ConverseStream's union; this one is
    headers = {
        ":exception-type": member,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": error.message}))


class StreamTap:
    """Feed the upstream's bytes with ``feed``; it returns the bytes of the frames completed
    and checked so far. After a framing error it returns nothing more and ``error`` is set."""

    def __init__(self, operation: str) -> None:
        if operation not in STREAM_OPERATIONS:
            raise ValueError(f"not a streaming operation: {operation!r}")
        self._invoke = operation == "invoke-with-response-stream"
        self._decoder = EventStreamDecoder()
        self._unsent = bytearray()
        self.usage = StreamUsage()
        self.frames = 0  # frames relayed
        self.upstream_exception: str | None = None  # the :exception-type the upstream sent
        self.error: FramingError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not part of a complete frame (a truncated stream, at the end)."""
        return len(self._unsent)

    def feed(self, data: bytes) -> bytes:
        if self.error is not None:
            return b""
        self._unsent += data
        self._decoder.feed(data)
        try:
            for message in self._decoder:
                self.frames += 1
                self._observe(message)
        except FramingError as exc:
            self.error = exc
        ready = len(self._unsent) - self._decoder.pending
        out = bytes(self._unsent[:ready])
        del self._unsent[:ready]
        return out

    def settlement(self, estimate: cost.Estimate, burndown: float, reserved: int) -> int:
        """Quota tokens to settle on: the reported usage; the best count known once any frame
        arrived; the whole reservation when nothing at all is known."""
        usage = self.settled_usage(estimate)
        return reserved if usage is None else cost.charge(usage, burndown)

    def settled_usage(self, estimate: cost.Estimate) -> cost.Usage | None:
        """The usage the stream reported, else the best count known once any frame arrived
        (what the call is billed for); None when nothing at all is known."""
        usage = self.usage.usage()
        if usage is None and self.frames:
            usage = self.usage.best_known(estimate)
        return usage

    def _observe(self, message: Message) -> None:
        kind = message.message_type
        if kind in ("exception", "error"):
            self.upstream_exception = message.exception_type or message.header(":error-code")
            return
        if kind != "event" or message.event_type is None:
            return
        payload = _json(message.payload)
        if payload is None:
            return
        if not self._invoke:
            self.usage.feed_converse_event(message.event_type, payload)
        elif message.event_type == "chunk" and isinstance(payload.get("bytes"), str):
            chunk = _json(_unbase64(payload["bytes"]))
            if chunk is not None:
                self.usage.feed_invoke_chunk(chunk)


def _json(raw: bytes) -> dict[str, Any] | None:
    # A payload the gateway cannot read is still relayed; it just tells us no usage.
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return b""
