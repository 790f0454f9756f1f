"""The usage Bedrock reports for a call: response headers, response bodies, stream events.

What it costs in quota is ``cost.charge``; a stream cut short is settled on ``best_known``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from gateway.cost import Estimate, Usage, has_dict, is_count, text_tokens

_HEADERS = {
    b"x-amzn-bedrock-input-token-count": 0,
    b"x-amzn-bedrock-output-token-count": 1,
    b"x-amzn-bedrock-cache-read-input-token-count": 2,
    b"x-amzn-bedrock-cache-write-input-token-count": 3,
}
# (input, output, cache read, cache write) key names, by response family.
_CONVERSE_KEYS = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
_INVOKE_KEYS = (
    ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"),
    ("inputTokens", "outputTokens", "cacheReadInputTokenCount", "cacheWriteInputTokenCount"),
    ("prompt_tokens", "completion_tokens", "", ""),  # OpenAI-style (Mistral, gpt-oss, …)
)
_METRICS_KEYS = (
    "inputTokenCount",
    "outputTokenCount",
    "cacheReadInputTokenCount",
    "cacheWriteInputTokenCount",
)


def usage_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Usage | None:
    """Usage from InvokeModel's ``X-Amzn-Bedrock-*-Token-Count`` response headers, or None
    when the input or output count is missing or not a number."""
    counts: list[int | None] = [None, None, 0, 0]
    for name, value in headers:
        slot = _HEADERS.get(name.lower())
        if slot is not None:
            counts[slot] = int(value) if value.strip().isdigit() else None
    return _usage(*counts)


def usage_from_body(operation: str, body: bytes) -> Usage | None:
    """Usage from a non-streaming response body (Converse ``usage``; Anthropic, Nova or
    OpenAI-style ``usage`` on InvokeModel), or None if the body does not carry one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    if operation in ("converse", "converse-stream"):
        return _usage_from(usage, _CONVERSE_KEYS)
    for keys in _INVOKE_KEYS:
        if keys[0] in usage:
            return _usage_from(usage, keys)
    return None


def _usage_from(
    fields: Mapping[str, Any], keys: tuple[str, str, str, str], read: int = 0, write: int = 0
) -> Usage | None:
    # Cache counts are optional (absent or null when caching is off); the others are not.
    cache_read, cache_write = fields.get(keys[2]), fields.get(keys[3])
    return _usage(
        fields.get(keys[0]),
        fields.get(keys[1]),
        read if cache_read is None else cache_read,
        write if cache_write is None else cache_write,
    )


def _usage(inp: Any, out: Any, read: Any, write: Any) -> Usage | None:
    if all(is_count(n) and n >= 0 for n in (inp, out, read, write)):
        return Usage(inp, out, read, write)
    return None


class StreamUsage:
    """Usage gathered from a response stream's decoded events as they pass.

    Reported counts win; until they arrive, the output so far is estimated from the text
    deltas, so a stream cut short can still be settled on what it delivered."""

    __slots__ = ("_final", "_input", "_output", "_read", "_streamed", "_write")

    def __init__(self) -> None:
        self._final: Usage | None = None  # Converse metadata / Bedrock invocation metrics
        self._input: int | None = None  # Anthropic message_start
        self._output: int | None = None  # Anthropic message_delta: cumulative, so the last
        self._read = self._write = 0
        self._streamed = 0.0  # estimated tokens of the deltas seen

    def feed_converse_event(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """One ConverseStream event: ``metadata`` carries the usage (it comes last)."""
        if event_type == "metadata" and isinstance(payload.get("usage"), dict):
            self._final = _usage_from(payload["usage"], _CONVERSE_KEYS) or self._final
        elif event_type == "contentBlockDelta":
            self._streamed += _delta(payload.get("delta"))

    def feed_invoke_chunk(self, chunk: Mapping[str, Any]) -> None:
        """One decoded InvokeModelWithResponseStream chunk (the model-native JSON)."""
        kind = chunk.get("type")
        if kind == "message_start" and has_dict(chunk, "message"):
            self._take(chunk["message"].get("usage"), final=False)
        elif kind == "message_delta":
            self._take(chunk.get("usage"), final=True)
        elif kind == "content_block_delta":
            self._streamed += _delta(chunk.get("delta"))
        metrics = chunk.get("amazon-bedrock-invocationMetrics")  # in the last chunk
        if isinstance(metrics, dict):  # Bedrock's own count: wins, cache counts filled in
            final = _usage_from(metrics, _METRICS_KEYS, self._read, self._write)
            self._final = final or self._final

    def _take(self, usage: Any, *, final: bool) -> None:
        # message_start's output count is a placeholder (about 1); only message_delta's,
        # cumulative, says what the response cost.
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if not (is_count(value) and value >= 0):
                continue
            if key == "input_tokens":
                self._input = value
            elif key == "output_tokens" and final:
                self._output = value
            elif key == "cache_read_input_tokens":
                self._read = value
            elif key == "cache_creation_input_tokens":
                self._write = value

    def usage(self) -> Usage | None:
        """The reported usage, once the stream has carried both input and output counts."""
        if self._final is not None:
            return self._final
        if self._input is None or self._output is None:
            return None
        return Usage(self._input, self._output, self._read, self._write)

    def best_known(self, est: Estimate) -> Usage:
        """What to settle on when the stream ends early: reported counts where known, else
        the estimated input and the larger of reported and streamed output."""
        if self._final is not None:
            return self._final
        streamed = math.ceil(self._streamed)
        output = streamed if self._output is None else max(self._output, streamed)
        inp = est.input_tokens if self._input is None else self._input
        return Usage(inp, output, self._read, self._write)


_DELTA_TEXT = ("text", "thinking", "partial_json", "input")


def _delta(delta: Any) -> float:
    # Anthropic {type, text | thinking | partial_json}; Converse {text} | {toolUse: {input}}
    # | {reasoningContent: {text}}: text at most one level down.
    if not isinstance(delta, dict):
        return 0.0
    cost = 0.0
    for key, value in delta.items():
        if isinstance(value, dict):
            cost += sum(text_tokens(value[k]) for k in _DELTA_TEXT if isinstance(value.get(k), str))
        elif key in _DELTA_TEXT and isinstance(value, str):
            cost += text_tokens(value)
    return cost
