"""Event-stream framing against botocore's decoder, both ways, and its failure modes."""

from __future__ import annotations

import struct
from binascii import crc32
from typing import Any

import pytest
from botocore import eventstream as boto
from hypothesis import given
from hypothesis import strategies as st

from gateway.eventstream import (
    MAX_HEADERS_LENGTH,
    MAX_PAYLOAD_LENGTH,
    ChecksumMismatch,
    EventStreamDecoder,
    InvalidHeader,
    InvalidLength,
    Message,
    encode_message,
)

EVENT = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}


def botocore_decode(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    buffer = boto.EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, m.payload) for m in buffer]


def ours(data: bytes, step: int | None = None) -> list[Message]:
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    step = step or max(1, len(data))
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])
        messages.extend(decoder)
    assert decoder.pending == 0
    return messages


def frame(header_block: bytes, payload: bytes) -> bytes:
    """A frame around an arbitrary header block, the way any other encoder would build it."""
    prelude = struct.pack("!II", 16 + len(header_block) + len(payload), len(header_block))
    body = prelude + struct.pack("!I", crc32(prelude)) + header_block + payload
    return body + struct.pack("!I", crc32(body))


def reference_encode(headers: dict[str, str], payload: bytes) -> bytes:
    """The sketch in docs/bedrock.md §3, byte-identical to smithy's encoder there."""

    def h(name: str, value: str) -> bytes:
        n, v = name.encode(), value.encode()
        return struct.pack("!B", len(n)) + n + b"\x07" + struct.pack("!H", len(v)) + v

    return frame(b"".join(h(k, v) for k, v in headers.items()), payload)


def test_encoding_matches_the_reference_sketch() -> None:
    payload = b'{"bytes":"eyJ0eXBlIjoibWVzc2FnZV9zdGFydCJ9"}'
    assert encode_message(EVENT, payload) == reference_encode(EVENT, payload)


header_names = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) < 256)
header_maps = st.dictionaries(header_names, st.text(max_size=200), max_size=6)


@given(header_maps, st.binary(max_size=2000))
def test_ours_encoded_botocore_decoded(headers: dict[str, str], payload: bytes) -> None:
    assert botocore_decode(encode_message(headers, payload)) == [(headers, payload)]


@given(st.lists(st.tuples(header_maps, st.binary(max_size=300)), max_size=5), st.integers(1, 64))
def test_incremental_decoding_in_any_chunking(
    messages: list[tuple[dict[str, str], bytes]], step: int
) -> None:
    data = b"".join(encode_message(h, p) for h, p in messages)
    decoded = ours(data, step)
    assert [(m.headers, m.payload) for m in decoded] == messages
    assert [(m.headers, m.payload) for m in decoded] == botocore_decode(data)


def typed_header(name: str, kind: int, value: bytes) -> bytes:
    raw = name.encode()
    return struct.pack("!B", len(raw)) + raw + bytes([kind]) + value


ALL_TYPES = b"".join(
    [
        typed_header("t", 0, b""),
        typed_header("f", 1, b""),
        typed_header("i8", 2, struct.pack("!b", -5)),
        typed_header("i16", 3, struct.pack("!h", -300)),
        typed_header("i32", 4, struct.pack("!i", 70000)),
        typed_header("i64", 5, struct.pack("!q", -(2**40))),
        typed_header("bytes", 6, struct.pack("!H", 3) + b"\x00\x01\x02"),
        typed_header("str", 7, struct.pack("!H", 5) + "héllo".encode()[:5]),
        typed_header("ts", 8, struct.pack("!q", 1_700_000_000_000)),
        typed_header("uuid", 9, bytes(range(16))),
    ]
)


def test_every_header_type_decodes_as_botocore_does() -> None:
    data = frame(ALL_TYPES, b"payload")
    (mine,) = ours(data)
    ((theirs, payload),) = botocore_decode(data)
    assert mine.headers == theirs
    assert mine.payload == payload == b"payload"
    assert mine.headers["t"] is True
    assert mine.headers["f"] is False
    assert mine.headers["uuid"] == bytes(range(16))


def test_message_accessors() -> None:
    exception = {
        ":message-type": "exception",
        ":exception-type": "throttlingException",
        ":content-type": "application/json",
    }
    (message,) = ours(encode_message(exception, b'{"message":"slow down"}'))
    assert message.message_type == "exception"
    assert message.exception_type == "throttlingException"
    assert message.event_type is None


def test_empty_headers_and_payload() -> None:
    data = encode_message({}, b"")
    assert len(data) == 16
    assert [(m.headers, m.payload) for m in ours(data)] == [({}, b"")]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("where", ["prelude", "prelude_crc", "header", "payload", "message_crc"])
def test_corruption_is_detected_by_both(where: str) -> None:
    data = encode_message(EVENT, b'{"hello": "world"}')
    index = {"prelude": 5, "prelude_crc": 9, "header": 14, "payload": len(data) - 6}.get(
        where, len(data) - 1
    )
    bad = flip(data, index)
    with pytest.raises(boto.ChecksumMismatch):
        botocore_decode(bad)
    with pytest.raises(ChecksumMismatch):
        ours(bad)


def test_a_corrupt_frame_after_good_ones_yields_the_good_ones_first() -> None:
    good = encode_message(EVENT, b"one")
    decoder = EventStreamDecoder()
    decoder.feed(good + flip(encode_message(EVENT, b"two"), 20))
    assert next(decoder).payload == b"one"
    with pytest.raises(ChecksumMismatch):
        next(decoder)


def prelude_only(total: int, headers_length: int) -> bytes:
    prelude = struct.pack("!II", total, headers_length)
    return prelude + struct.pack("!I", crc32(prelude))


@pytest.mark.parametrize(
    ("total", "headers_length"),
    [
        (16 + MAX_HEADERS_LENGTH + 1, MAX_HEADERS_LENGTH + 1),
        (16 + MAX_PAYLOAD_LENGTH + 1, 0),
        (15, 0),
        (20, 8),
    ],
)
def test_impossible_lengths_fail_on_the_prelude_alone(total: int, headers_length: int) -> None:
    decoder = EventStreamDecoder()
    decoder.feed(prelude_only(total, headers_length))
    with pytest.raises(InvalidLength):
        next(decoder)


def test_the_largest_payload_is_accepted() -> None:
    payload = b"x" * MAX_PAYLOAD_LENGTH
    (message,) = ours(encode_message({}, payload))
    assert len(message.payload) == MAX_PAYLOAD_LENGTH
    with pytest.raises(ValueError, match="exceeds"):
        encode_message({}, payload + b"x")


@pytest.mark.parametrize(
    "block",
    [
        typed_header("a", 7, struct.pack("!H", 1) + b"x") * 2,  # duplicate
        typed_header("a", 42, b""),  # unknown type
        typed_header("a", 7, struct.pack("!H", 9) + b"x"),  # value runs past the block
        typed_header("a", 5, b"\x00\x01"),  # truncated int64
        typed_header("a", 7, struct.pack("!H", 1) + b"\xff"),  # not UTF-8
    ],
)
def test_malformed_headers(block: bytes) -> None:
    with pytest.raises(InvalidHeader):
        ours(frame(block, b""))


def test_encoder_rejects_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match="1-255"):
        encode_message({"": "x"}, b"")
    with pytest.raises(ValueError, match="65535"):
        encode_message({"a": "x" * 70_000}, b"")
