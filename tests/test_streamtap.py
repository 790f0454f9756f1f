"""The stream tap alone: frames passed on whole and checked, usage found, settlement chosen."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway import cost
from gateway.errors import GatewayError, InternalError, ModelTimeout, Throttled
from gateway.eventstream import EventStreamDecoder
from gateway.simulator.events import event_frame, exception_frame
from gateway.streamtap import StreamTap
from gateway.streamtap import exception_frame as gateway_exception_frame
from gateway.usage import StreamUsage

ESTIMATE = cost.Estimate(input_tokens=40, max_output_tokens=100)


def chunk(event: dict[str, Any]) -> bytes:
    return event_frame("chunk", {"bytes": base64.b64encode(orjson.dumps(event)).decode()})


CONVERSE = [
    event_frame("messageStart", {"role": "assistant"}),
    event_frame("contentBlockDelta", {"delta": {"text": "Hello there"}, "contentBlockIndex": 0}),
    event_frame("messageStop", {"stopReason": "end_turn"}),
    event_frame("metadata", {"usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}}),
]
INVOKE = [
    chunk({"type": "message_start",
           "message": {"usage": {"input_tokens": 30, "output_tokens": 1}}}),
    chunk({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi you"}}),
    chunk({"type": "message_delta", "usage": {"output_tokens": 7}}),
    chunk({"type": "message_stop",
           "amazon-bedrock-invocationMetrics": {"inputTokenCount": 31, "outputTokenCount": 8}}),
]  # fmt: skip


def feed_in_pieces(tap: StreamTap, data: bytes, size: int) -> bytes:
    return b"".join(tap.feed(data[i : i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_frames_pass_whole_however_the_bytes_are_cut(size: int) -> None:
    tap = StreamTap("converse-stream")
    data = b"".join(CONVERSE)
    out = feed_in_pieces(tap, data, size)
    assert out == data
    assert tap.frames == 4
    assert tap.pending == 0
    assert tap.settlement(ESTIMATE, 5, 999) == 12 + 3 * 5


def test_only_complete_frames_are_released() -> None:
    tap = StreamTap("converse-stream")
    assert tap.feed(CONVERSE[0][:-1]) == b""
    assert tap.pending == len(CONVERSE[0]) - 1
    assert tap.feed(CONVERSE[0][-1:] + CONVERSE[1][:5]) == CONVERSE[0]


def test_invoke_chunks_settle_on_bedrocks_invocation_metrics() -> None:
    tap = StreamTap("invoke-with-response-stream")
    assert feed_in_pieces(tap, b"".join(INVOKE), 13) == b"".join(INVOKE)
    assert tap.settlement(ESTIMATE, 5, 999) == 31 + 8 * 5


def test_a_cut_stream_settles_on_the_best_count_known() -> None:
    tap = StreamTap("invoke-with-response-stream")
    tap.feed(INVOKE[0] + INVOKE[1])
    streamed = StreamUsage()
    streamed.feed_invoke_chunk({"type": "content_block_delta", "delta": {"text": "Hi you"}})
    expected = cost.charge(cost.Usage(30, streamed.best_known(ESTIMATE).output_tokens), 5)
    assert tap.settlement(ESTIMATE, 5, 999) == expected
    assert 30 < expected < 999


def test_nothing_known_keeps_the_reservation() -> None:
    assert StreamTap("converse-stream").settlement(ESTIMATE, 5, 999) == 999


def test_a_broken_crc_releases_the_frames_before_it_and_nothing_after() -> None:
    tap = StreamTap("converse-stream")
    broken = CONVERSE[1][:-1] + bytes([CONVERSE[1][-1] ^ 0xFF])
    assert tap.feed(CONVERSE[0] + broken + CONVERSE[2]) == CONVERSE[0]
    assert tap.error is not None
    assert "CRC" in str(tap.error)
    assert tap.feed(CONVERSE[3]) == b""


def test_an_upstream_exception_frame_is_passed_on_and_noted() -> None:
    frame = exception_frame("throttlingException", "Too many tokens")
    tap = StreamTap("converse-stream")
    assert tap.feed(CONVERSE[0] + frame) == CONVERSE[0] + frame
    assert tap.upstream_exception == "throttlingException"


def test_an_unreadable_payload_is_still_relayed() -> None:
    tap = StreamTap("invoke-with-response-stream")
    odd = event_frame("chunk", {"bytes": "not base64!"})
    assert tap.feed(odd) == odd
    assert tap.frames == 1


@pytest.mark.parametrize(
    ("error", "operation", "member"),
    [
        (InternalError("boom"), "converse-stream", "internalServerException"),
        (Throttled("slow down", 10), "invoke-with-response-stream", "throttlingException"),
        (ModelTimeout("late"), "invoke-with-response-stream", "modelTimeoutException"),
        (ModelTimeout("late"), "converse-stream", "modelStreamErrorException"),
    ],
)
def test_gateway_errors_become_lower_camel_exception_frames(
    error: GatewayError, operation: str, member: str
) -> None:
    decoder = EventStreamDecoder()
    decoder.feed(gateway_exception_frame(error, operation))
    (message,) = list(decoder)
    assert message.message_type == "exception"
    assert message.exception_type == member
    assert orjson.loads(message.payload) == {"message": str(error)}


def test_only_streaming_operations_have_a_tap() -> None:
    with pytest.raises(ValueError, match="not a streaming operation"):
        StreamTap("converse")
