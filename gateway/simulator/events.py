"""The frames of a simulated streaming answer, in order, each with the wait before it.

Anthropic Messages chunks for InvokeModelWithResponseStream, Converse events for
ConverseStream (docs/bedrock.md §3), and the injected faults. Pure: time comes in as a function.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import orjson

from gateway.eventstream import encode_message
from gateway.simulator.tokens import output_pieces

DELTA_TOKENS = 4  # tokens per text delta, about what Bedrock sends for Claude
FAULT_AT = 3  # an injected fault replaces the fourth frame; every stream has at least four
BAD_CRC_AT = 2

STREAM_ERROR_MESSAGES = {
    "throttlingException": "Too many tokens, please wait before trying again.",
    "serviceUnavailableException": "Bedrock is unable to process your request.",
    "internalServerException": "The server encountered an internal error.",
    "modelTimeoutException": "Model has timed out in processing the request.",
    "validationException": "Simulated validation error.",
    "modelStreamErrorException": "The model stream failed (simulated).",
}


@dataclass(frozen=True, slots=True)
class Step:
    delay: float  # seconds to wait before sending the frame
    frame: bytes
    tokens: int  # output tokens the client has once this frame is sent


@dataclass(frozen=True, slots=True)
class Answer:
    """What to stream: sizes and pacing of one admitted call."""

    model: str
    input_tokens: int
    output_tokens: int
    capped: bool
    ttft_s: float
    token_s: float


def event_frame(event_type: str, body: Any) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, orjson.dumps(body))


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}))


def _chunk(event: Any) -> bytes:
    return event_frame("chunk", {"bytes": base64.b64encode(orjson.dumps(event)).decode()})


def _deltas(answer: Answer) -> Iterator[tuple[float, str, int]]:
    """(wait, text, tokens so far) for each text delta."""
    pieces, sent = output_pieces(answer.output_tokens), 0
    while group := list(islice(pieces, DELTA_TOKENS)):
        sent += len(group)
        yield answer.token_s * len(group), "".join(group), sent


def anthropic_steps(answer: Answer, elapsed_ms: Callable[[], int]) -> Iterator[Step]:
    """message_start … message_stop; the last chunk carries the invocation metrics."""
    start: dict[str, Any] = {
        "id": "msg_bdrk_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1},
    }
    yield Step(answer.ttft_s, _chunk({"type": "message_start", "message": start}), 0)
    first_byte_ms = elapsed_ms()  # resumed only once the first frame is out
    block = {"type": "text", "text": ""}
    yield Step(0, _chunk({"type": "content_block_start", "index": 0, "content_block": block}), 0)
    for wait, text, sent in _deltas(answer):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        yield Step(wait, _chunk(delta), sent)
    total = answer.output_tokens
    yield Step(0, _chunk({"type": "content_block_stop", "index": 0}), total)
    stop = "max_tokens" if answer.capped else "end_turn"
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": total},
    }
    yield Step(0, _chunk(message_delta), total)
    metrics = {
        "inputTokenCount": answer.input_tokens,
        "outputTokenCount": total,
        "invocationLatency": elapsed_ms(),
        "firstByteLatency": first_byte_ms,
    }
    yield Step(
        0, _chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics}), total
    )


def converse_steps(answer: Answer, elapsed_ms: Callable[[], int]) -> Iterator[Step]:
    """messageStart, contentBlockDelta…, contentBlockStop, messageStop, metadata."""
    yield Step(answer.ttft_s, event_frame("messageStart", {"role": "assistant"}), 0)
    for wait, text, sent in _deltas(answer):
        body = {"delta": {"text": text}, "contentBlockIndex": 0}
        yield Step(wait, event_frame("contentBlockDelta", body), sent)
    total = answer.output_tokens
    yield Step(0, event_frame("contentBlockStop", {"contentBlockIndex": 0}), total)
    stop = "max_tokens" if answer.capped else "end_turn"
    yield Step(0, event_frame("messageStop", {"stopReason": stop}), total)
    usage = {
        "inputTokens": answer.input_tokens,
        "outputTokens": total,
        "totalTokens": answer.input_tokens + total,
    }
    metadata = {"usage": usage, "metrics": {"latencyMs": elapsed_ms()}}
    yield Step(0, event_frame("metadata", metadata), total)


def with_faults(steps: Iterator[Step], stream_error: str | None, bad_crc: bool) -> Iterator[Step]:
    """``stream_error``: an exception frame in place of frame ``FAULT_AT``, then the end.
    ``bad_crc``: frame ``BAD_CRC_AT`` goes out with a broken message CRC."""
    tokens = 0
    for index, step in enumerate(steps):
        if stream_error is not None and index == FAULT_AT:
            yield Step(
                0, exception_frame(stream_error, STREAM_ERROR_MESSAGES[stream_error]), tokens
            )
            return
        if bad_crc and index == BAD_CRC_AT:
            step = replace(step, frame=step.frame[:-1] + bytes([step.frame[-1] ^ 0xFF]))
        tokens = step.tokens
        yield step
