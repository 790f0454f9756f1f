"""The gateway's error family and its rendering in Bedrock's wire shape.

Every failure the data plane reports is a ``GatewayError``. Each subclass names the Bedrock
error shape it is rendered as (docs/bedrock.md §2) and its HTTP status. Rendering gives what
boto3 needs to raise its own exception class: the status, an ``x-amzn-ErrorType`` header, an
``x-amzn-RequestId`` and a JSON ``{"message": ...}`` body.

    GatewayError
    ├── AccessDenied            403  missing / unknown / revoked credentials, bad signature
    ├── ValidationError         400  malformed body, unknown model, oversized body
    ├── UnknownOperation        404  a path that is no Bedrock Runtime operation
    ├── Throttled               429  no capacity; carries the retry hint in milliseconds
    ├── BudgetExhausted         400  ServiceQuotaExceededException: a spent day or month budget
    ├── ModelTimeout            408  the upstream did not answer in time
    ├── RequestTimeout          408  the client did not send its request in time
    ├── ServiceUnavailable      503  the upstream could not be reached
    │   └── NotSent             503  ... and the request never left: Bedrock counted nothing
    └── InternalError           500  a bug in the gateway (never a traceback on the wire)

Whether an upstream failure is tried again is decided in one place, ``gateway.retry``, from
the answer's status and type: a ModelTimeout is final there (the model may have run, and its
tokens count), throttling, 5xx and connection failures are retried.
"""

from __future__ import annotations

import math
import uuid

import orjson

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """A failure the client sees as a Bedrock error."""

    error_type: str = "InternalServerException"
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra_headers(self) -> Headers:
        return []


class AccessDenied(GatewayError):
    error_type = "AccessDeniedException"
    status = 403


class ValidationError(GatewayError):
    error_type = "ValidationException"
    status = 400


class UnknownOperation(GatewayError):
    error_type = "UnknownOperationException"
    status = 404


class ModelTimeout(GatewayError):
    error_type = "ModelTimeoutException"
    status = 408


class RequestTimeout(GatewayError):
    """A client too slow sending its request (headers or body): answered, then disconnected.
    Not one of Bedrock's own error codes; botocore retries it (standard and legacy modes)."""

    error_type = "RequestTimeoutException"
    status = 408


class ServiceUnavailable(GatewayError):
    error_type = "ServiceUnavailableException"
    status = 503


class NotSent(ServiceUnavailable):
    """The request never reached Bedrock (no connection), so Bedrock counted nothing."""


class InternalError(GatewayError):
    error_type = "InternalServerException"
    status = 500


class Throttled(GatewayError):
    """No capacity now. ``retry_after_ms`` is when the request could be admitted.

    What refused it, for the metrics: ``limit`` the config field of the limit (``tpm``,
    ``rpm``, ``max_concurrency``, …) or the queue's condition (``queue_full``, ``draining``),
    ``pool`` the pool's name ("" for a tenant's own limit), ``reason`` how the refusal came
    (``no_capacity``, ``queue_timeout``, ``hopeless``, ``queue_full``, ``draining``)."""

    error_type = "ThrottlingException"
    status = 429

    def __init__(self, message: str, retry_after_ms: int, *, limit: str = "other",
                 pool: str = "", reason: str = "no_capacity") -> None:  # fmt: skip
        super().__init__(message)
        self.retry_after_ms = max(0, int(retry_after_ms))
        self.limit, self.pool, self.reason = limit, pool, reason

    def extra_headers(self) -> Headers:
        # botocore >= 1.44 reads x-amz-retry-after (ms); the Anthropic SDK reads
        # retry-after-ms, then Retry-After (whole seconds).
        ms = str(self.retry_after_ms).encode()
        seconds = str(max(1, math.ceil(self.retry_after_ms / 1000))).encode()
        return [(b"x-amz-retry-after", ms), (b"retry-after-ms", ms), (b"retry-after", seconds)]


class BudgetExhausted(GatewayError):
    """A tenant's day or month budget is spent: nothing will fit before it resets.

    Bedrock's own ServiceQuotaExceededException (400), which no SDK retries: botocore's
    retry modes retry throttling error codes and 429, 5xx; the Anthropic SDK 408, 409, 429 and
    5xx (and it honours ``x-should-retry: false``). A 429 instead would make each SDK retry
    its whole budget of attempts, at once, for every call, until the reset (docs/admin-api.md).
    """

    error_type = "ServiceQuotaExceededException"
    status = 400

    def __init__(self, message: str, resets_at_ms: int, *, limit: str = "other") -> None:
        super().__init__(message)
        self.resets_at_ms = resets_at_ms
        self.limit, self.pool, self.reason = limit, "", "budget_exhausted"

    def extra_headers(self) -> Headers:
        resets = str(self.resets_at_ms // 1000).encode()
        return [(b"x-should-retry", b"false"), (b"x-gateway-budget-resets-at", resets)]


def new_request_id() -> str:
    return str(uuid.uuid4())


def render(error: GatewayError, request_id: str) -> tuple[int, Headers, bytes]:
    """The status, headers and body of ``error`` in Bedrock's wire shape."""
    body = orjson.dumps({"message": error.message})
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"x-amzn-errortype", error.error_type.encode()),
        (b"x-amzn-requestid", request_id.encode()),
        *error.extra_headers(),
    ]
    return error.status, headers, body
