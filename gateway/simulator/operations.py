"""The non-streaming model operations: InvokeModel (Anthropic Messages), Converse, and
CountTokens (free: no quota, no latency).

The reservation is held for the simulated latency and settled before the response is sent,
so a client that has its answer can read the settled stats at once. A ``reset`` fault is
settled the same way (Bedrock bills what it generated) and then cut short.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import orjson

from gateway.errors import Headers, ValidationError
from gateway.simulator.admission import Admitted, Sim, admit
from gateway.simulator.asgi import CutShort, Scope, json_headers
from gateway.simulator.bodies import converse_response, messages_response, parse_json
from gateway.simulator.config import CountingConfig
from gateway.simulator.tokens import counted, input_tokens, output_text


async def invoke_or_converse(
    sim: Sim, scope: Scope, body: bytes, model: str, op: str, request_id: str
) -> tuple[int, Headers, bytes]:
    admitted = admit(sim, scope, body, model, op)
    try:
        delay = admitted.ttft_s + admitted.token_s * admitted.output_tokens
        if delay > 0:
            await asyncio.sleep(delay)
    finally:
        # Also on cancellation: Bedrock bills a response the client walked away from.
        admitted.settle(sim.clock(), admitted.output_tokens)
    latency_ms = round((sim.clock() - admitted.started) * 1000)
    text = output_text(admitted.output_tokens)
    inputs, outputs = admitted.call.input_tokens, admitted.output_tokens
    if op == "invoke":
        payload = messages_response(model, text, inputs, outputs, admitted.capped)
    else:
        payload = converse_response(text, inputs, outputs, admitted.capped, latency_ms)
    headers = _headers(request_id, payload, admitted, latency_ms)
    if admitted.cut:
        raise CutShort(200, headers, payload)
    return 200, headers, payload


def _headers(request_id: str, payload: bytes, admitted: Admitted, latency_ms: int) -> Headers:
    return [
        *json_headers(request_id, payload),
        (b"x-amzn-bedrock-input-token-count", str(admitted.call.input_tokens).encode()),
        (b"x-amzn-bedrock-output-token-count", str(admitted.output_tokens).encode()),
        (b"x-amzn-bedrock-invocation-latency", str(latency_ms).encode()),
    ]


def count_tokens_operation(
    body: bytes, request_id: str, counting: CountingConfig, model: str
) -> tuple[int, Headers, bytes]:
    """``{"input": {"invokeModel": {"body": <base64>}} | {"converse": {...}}}`` → inputTokens,
    counted exactly as InvokeModel / Converse count the same request."""
    source = parse_json(body).get("input")
    if not isinstance(source, dict) or len(source) != 1:
        raise ValidationError("input must hold exactly one of invokeModel or converse.")
    if isinstance(source.get("converse"), dict):
        request = source["converse"]
        count = input_tokens("converse", request)
    elif isinstance(source.get("invokeModel"), dict):
        request = _invoke_body(source["invokeModel"])
        count = input_tokens("invoke", request)
    else:
        raise ValidationError("input must hold exactly one of invokeModel or converse.")
    payload = orjson.dumps({"inputTokens": counted(counting, model, count, request)})
    return 200, json_headers(request_id, payload), payload


def _invoke_body(invoke: dict[str, Any]) -> dict[str, Any]:
    encoded = invoke.get("body")
    if not isinstance(encoded, str):
        raise ValidationError("input.invokeModel.body must be a base64 string.")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValidationError("input.invokeModel.body is not valid base64.") from None
    return parse_json(raw)
