"""Bedrock's wire details the simulator reproduces: the model id in the raw path, the region
in the SigV4 credential scope, Bedrock-shaped errors and the throttle message of each quota."""

from __future__ import annotations

from urllib.parse import unquote

from gateway.errors import GatewayError, Headers, render
from gateway.simulator.quota import Limit

CORAL_SUFFIX = b":http://internal.amazon.com/coral/com.amazon.bedrock/"

THROTTLE_MESSAGES = {
    Limit.TOKENS_PER_MINUTE: "Too many tokens, please wait before trying again.",
    Limit.REQUESTS_PER_MINUTE: "Too many requests, please wait before trying again.",
    Limit.TOKENS_PER_DAY: "Too many tokens per day, please wait before trying again.",
}


class BedrockThrottling(GatewayError):
    """Bedrock's own 429. Unlike the gateway's ``Throttled`` it carries no retry hint:
    real Bedrock sends none (docs/bedrock.md §2)."""

    error_type = "ThrottlingException"
    status = 429


class ModelError(GatewayError):
    error_type = "ModelErrorException"
    status = 424


def split_model_path(raw_path: bytes) -> tuple[str, str] | None:
    """``/model/<encoded id>/<op>`` → (decoded model id, op), else None.

    Split at the last ``/`` before decoding: boto3 encodes an ARN's ``/`` as ``%2F`` and its
    ``:`` as ``%3A``; the Anthropic SDK leaves ``:`` literal. Both decode to the same id.
    """
    if not raw_path.startswith(b"/model/"):
        return None
    encoded, slash, op = raw_path[7:].rpartition(b"/")
    if not slash or not encoded:
        return None
    return unquote(encoded.decode("latin-1")), op.decode("latin-1")


def region_from_authorization(value: bytes | None, default: str) -> str:
    """The region of a SigV4 ``Credential=AKID/date/REGION/service/aws4_request`` scope,
    not verified; ``default`` for bearer tokens, unsigned requests or anything unparsable."""
    if not value or not value.startswith(b"AWS4-"):
        return default
    _, found, rest = value.partition(b"Credential=")
    if not found:
        return default
    parts = rest.split(b",", 1)[0].strip().split(b"/")
    if len(parts) < 5 or not parts[2]:
        return default
    return parts[2].decode("latin-1")


def error_response(error: GatewayError, request_id: str) -> tuple[int, Headers, bytes]:
    """``render`` with the Coral namespace real Bedrock appends to ``x-amzn-ErrorType``."""
    status, headers, body = render(error, request_id)
    shaped = [
        (name, value + CORAL_SUFFIX) if name == b"x-amzn-errortype" else (name, value)
        for name, value in headers
    ]
    shaped.append((b"content-length", str(len(body)).encode()))
    return status, shaped, body
