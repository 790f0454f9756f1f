"""Request bodies the simulator accepts, checked the way Bedrock checks them, and the
response bodies it returns (Anthropic Messages for InvokeModel, Converse)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ValidationError
from gateway.simulator.tokens import input_tokens

MALFORMED = "Malformed input request, please reformat your input and try again."


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What quota accounting needs from a request."""

    input_tokens: int
    max_tokens: int


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValidationError(MALFORMED) from None
    if not isinstance(data, dict):
        raise ValidationError(_malformed("#", "expected type: JSONObject"))
    return data


def messages_call(body: dict[str, Any]) -> ModelCall:
    """An Anthropic Messages body: ``max_tokens`` (≥ 1) and ``messages`` are required."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise ValidationError(_malformed("#", "required key [max_tokens] not found"))
    if not _is_int(max_tokens) or max_tokens < 1:
        raise ValidationError(_malformed("#/max_tokens", "expected an integer >= 1"))
    messages = body.get("messages")
    if messages is None:
        raise ValidationError(_malformed("#", "required key [messages] not found"))
    if not isinstance(messages, list):
        raise ValidationError(_malformed("#/messages", "expected type: JSONArray"))
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise ValidationError(_malformed("#/system", "expected type: String or JSONArray"))
    return ModelCall(input_tokens("invoke", body), max_tokens)


def converse_call(body: dict[str, Any], default_max_tokens: int) -> ModelCall:
    """A Converse body; without ``inferenceConfig.maxTokens`` the model maximum is reserved."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValidationError("The messages field is required and must be a list.")
    config = body.get("inferenceConfig") or {}
    if not isinstance(config, dict):
        raise ValidationError("inferenceConfig must be an object.")
    max_tokens = config.get("maxTokens", default_max_tokens)
    if not _is_int(max_tokens) or max_tokens < 1:
        raise ValidationError("inferenceConfig.maxTokens must be an integer >= 1.")
    return ModelCall(input_tokens("converse", body), max_tokens)


def messages_response(
    model: str, text: str, input_count: int, output_count: int, capped: bool
) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_bdrk_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if capped else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_count, "output_tokens": output_count},
        }
    )


def converse_response(
    text: str, input_count: int, output_count: int, capped: bool, latency_ms: int
) -> bytes:
    return orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "max_tokens" if capped else "end_turn",
            "usage": {
                "inputTokens": input_count,
                "outputTokens": output_count,
                "totalTokens": input_count + output_count,
            },
            "metrics": {"latencyMs": latency_ms},
        }
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(where: str, what: str) -> str:
    # The shape of Bedrock's JSON-schema messages for native model bodies.
    return f"Malformed input request: {where}: {what}, please reformat your input and try again."
