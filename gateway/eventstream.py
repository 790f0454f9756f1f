"""AWS event-stream framing (``application/vnd.amazon.eventstream``, docs/bedrock.md §3).

Pure, no I/O: ``encode_message`` builds one frame; ``EventStreamDecoder`` takes bytes as they
arrive and yields complete ``Message``s, checking both CRCs and the size limits like
botocore's decoder. Any ``FramingError`` is fatal for the stream: the byte boundaries are lost.

    FramingError
    ├── InvalidLength      a prelude whose lengths are impossible or over the limits
    ├── ChecksumMismatch   prelude or message CRC does not match the bytes
    └── InvalidHeader      truncated, unknown type, bad UTF-8 or duplicate header
"""

from __future__ import annotations

import struct
from binascii import crc32
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

PRELUDE_LENGTH = 12  # total_length u32, headers_length u32, prelude_crc u32
CRC_LENGTH = 4
MIN_MESSAGE_LENGTH = PRELUDE_LENGTH + CRC_LENGTH
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024  # botocore's limit; smithy's is 16 MiB

HeaderValue = bool | int | bytes | str

_PRELUDE = struct.Struct("!III")
_U32 = struct.Struct("!I")
_STRING_TYPE = 7
# Header value types with a fixed size (a timestamp is an int64 of milliseconds).
_FIXED = {
    2: struct.Struct("!b"),
    3: struct.Struct("!h"),
    4: struct.Struct("!i"),
    5: struct.Struct("!q"),
}
_TIMESTAMP, _UUID, _BYTES = 8, 9, 6


class FramingError(Exception):
    """The bytes are not a valid event stream."""


class InvalidLength(FramingError):
    pass


class ChecksumMismatch(FramingError):
    def __init__(self, what: str, expected: int, calculated: int) -> None:
        super().__init__(f"{what} CRC mismatch: expected 0x{expected:08x}, got 0x{calculated:08x}")
        self.expected = expected
        self.calculated = calculated


class InvalidHeader(FramingError):
    pass


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded frame. Timestamps decode to int milliseconds, UUIDs to 16 raw bytes."""

    headers: dict[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        return self.header(":message-type")

    @property
    def event_type(self) -> str | None:
        return self.header(":event-type")

    @property
    def exception_type(self) -> str | None:
        return self.header(":exception-type")


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One frame with string headers (type 7), in the order given."""
    encoded = b"".join(_encode_header(name, value) for name, value in headers.items())
    if len(encoded) > MAX_HEADERS_LENGTH:
        raise ValueError(f"headers of {len(encoded)} bytes exceed {MAX_HEADERS_LENGTH}")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"a payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_LENGTH}")
    total = MIN_MESSAGE_LENGTH + len(encoded) + len(payload)
    prelude = struct.pack("!II", total, len(encoded))
    body = prelude + _U32.pack(crc32(prelude)) + encoded + payload
    return body + _U32.pack(crc32(body))


def _encode_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name {name!r} must be 1-255 bytes")
    if len(raw_value) > 0xFFFF:
        raise ValueError(f"header {name!r} value is longer than 65535 bytes")
    return b"%c%b%c%b%b" % (
        len(raw_name),
        raw_name,
        _STRING_TYPE,
        struct.pack("!H", len(raw_value)),
        raw_value,
    )


class EventStreamDecoder:
    """Feed bytes with ``feed``; iterate for the messages completed so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # bytes before this offset are already decoded

    def feed(self, data: bytes) -> None:
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        message = self._next_message()
        if message is None:
            raise StopIteration
        return message

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer) - self._start

    def _next_message(self) -> Message | None:
        # A released view: the buffer can be resized after, even when this raised.
        with memoryview(self._buffer) as whole, whole[self._start :] as view:
            if len(view) < PRELUDE_LENGTH:
                return None
            total, headers_length = _checked_prelude(view)
            if len(view) < total:
                return None
            (expected,) = _U32.unpack_from(view, total - CRC_LENGTH)
            calculated = crc32(view[: total - CRC_LENGTH])
            if expected != calculated:
                raise ChecksumMismatch("message", expected, calculated)
            headers_end = PRELUDE_LENGTH + headers_length
            headers = _decode_headers(bytes(view[PRELUDE_LENGTH:headers_end]))
            payload = bytes(view[headers_end : total - CRC_LENGTH])
        self._start += total
        return Message(headers, payload)


def _checked_prelude(view: memoryview) -> tuple[int, int]:
    total, headers_length, expected = _PRELUDE.unpack_from(view)
    calculated = crc32(view[:8])
    if expected != calculated:
        raise ChecksumMismatch("prelude", expected, calculated)
    if headers_length > MAX_HEADERS_LENGTH:
        raise InvalidLength(f"headers length {headers_length} exceeds {MAX_HEADERS_LENGTH}")
    payload_length = total - headers_length - MIN_MESSAGE_LENGTH
    if payload_length < 0:
        raise InvalidLength(f"total length {total} cannot hold {headers_length} header bytes")
    if payload_length > MAX_PAYLOAD_LENGTH:
        raise InvalidLength(f"payload length {payload_length} exceeds {MAX_PAYLOAD_LENGTH}")
    return total, headers_length


def _decode_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    offset = 0
    try:
        while offset < len(data):
            name_end = offset + 1 + data[offset]
            name = data[offset + 1 : name_end].decode()
            value, offset = _decode_value(data, name_end)
            if name in headers:
                raise InvalidHeader(f"duplicate header {name!r}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise InvalidHeader(f"malformed header block: {error}") from None
    return headers


def _decode_value(data: bytes, offset: int) -> tuple[HeaderValue, int]:
    kind, offset = data[offset], offset + 1
    if kind in (0, 1):
        return kind == 0, offset
    fixed = _FIXED.get(5 if kind == _TIMESTAMP else kind)
    if fixed is not None:
        return fixed.unpack_from(data, offset)[0], offset + fixed.size
    if kind == _UUID:
        end = offset + 16
    elif kind in (_BYTES, _STRING_TYPE):
        (length,) = struct.unpack_from("!H", data, offset)
        offset += 2
        end = offset + length
    else:
        raise InvalidHeader(f"unknown header value type {kind}")
    if end > len(data):
        raise InvalidHeader("header value runs past the header block")
    raw = data[offset:end]
    return (raw.decode() if kind == _STRING_TYPE else raw), end
