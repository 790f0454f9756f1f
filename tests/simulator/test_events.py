"""Streaming frames, decoded with the gateway's own event-stream decoder."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.eventstream import ChecksumMismatch, EventStreamDecoder, Message
from gateway.simulator.events import (
    FAULT_AT,
    Answer,
    Step,
    anthropic_steps,
    converse_steps,
    with_faults,
)
from gateway.simulator.tokens import count_tokens


def answer(output: int = 10, capped: bool = False, token_s: float = 0.0) -> Answer:
    return Answer(
        "m", input_tokens=7, output_tokens=output, capped=capped, ttft_s=0.5, token_s=token_s
    )


def decode(steps: Iterator[Step]) -> list[Message]:
    decoder = EventStreamDecoder()
    for step in steps:
        decoder.feed(step.frame)
    return list(decoder)


def chunks(messages: list[Message]) -> list[dict[str, Any]]:
    assert all(m.event_type == "chunk" for m in messages)
    return [orjson.loads(base64.b64decode(orjson.loads(m.payload)["bytes"])) for m in messages]


@pytest.mark.parametrize("output", [0, 1, 4, 5, 37])
def test_anthropic_stream(output: int) -> None:
    events = chunks(decode(anthropic_steps(answer(output), lambda: 42)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) <= {"content_block_delta"}
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert count_tokens(text) == output
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[-2]["usage"]["output_tokens"] == output
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-1]["amazon-bedrock-invocationMetrics"] == {
        "inputTokenCount": 7,
        "outputTokenCount": output,
        "invocationLatency": 42,
        "firstByteLatency": 42,
    }


def test_converse_stream() -> None:
    messages = decode(converse_steps(answer(9, capped=True), lambda: 17))
    kinds = [m.event_type for m in messages]
    assert kinds == [
        "messageStart",
        *["contentBlockDelta"] * 3,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    bodies = [orjson.loads(m.payload) for m in messages]
    text = "".join(b["delta"]["text"] for b in bodies[1:4])
    assert count_tokens(text) == 9
    assert bodies[-2] == {"stopReason": "max_tokens"}
    assert bodies[-1] == {
        "usage": {"inputTokens": 7, "outputTokens": 9, "totalTokens": 16},
        "metrics": {"latencyMs": 17},
    }


def test_pacing_and_progress() -> None:
    steps = list(anthropic_steps(answer(10, token_s=0.01), lambda: 0))
    assert steps[0].delay == 0.5  # time to first token
    assert sum(s.delay for s in steps) == pytest.approx(0.5 + 10 * 0.01)
    progress = [s.tokens for s in steps]
    assert progress == sorted(progress)
    assert progress[-1] == 10


def test_injected_stream_error_replaces_a_frame_and_ends() -> None:
    steps = list(with_faults(converse_steps(answer(40), lambda: 0), "throttlingException", False))
    assert len(steps) == FAULT_AT + 1
    last = decode(iter(steps))[-1]
    assert last.message_type == "exception"
    assert last.exception_type == "throttlingException"
    assert orjson.loads(last.payload)["message"].startswith("Too many tokens")
    assert steps[-1].tokens == steps[-2].tokens == 8  # what the client had been sent


def test_bad_crc_breaks_one_frame() -> None:
    decoder = EventStreamDecoder()
    steps = with_faults(anthropic_steps(answer(), lambda: 0), None, True)
    for step in steps:
        decoder.feed(step.frame)
    assert len([next(decoder), next(decoder)]) == 2
    with pytest.raises(ChecksumMismatch):
        next(decoder)
