"""The Bedrock Runtime data plane: ``POST /model/{modelId}/{operation}`` as a plain ASGI app.

Per request: read the body (bounded), authenticate the tenant, resolve the model to its routes,
check the body, forward the original bytes upstream and answer with the upstream's status,
body and Bedrock headers plus ``x-gateway-route``; the two streaming operations are relayed
frame by frame (``gateway.api.streaming``) and settled from the usage the stream reports.
CountTokens is passed through without admission: Bedrock does not charge it against quotas.
Every failure is answered in Bedrock's error shape; nothing escapes as a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

import orjson

from gateway import cost
from gateway.api.asgi import (
    ClientDisconnected,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
    too_large,
)
from gateway.api.attempts import Answer, Attempts
from gateway.api.streaming import StreamCall, forward_stream
from gateway.auth import Authenticator, Caller, RequestFacts
from gateway.catalog import Catalog, ModelSpec, Route, Target
from gateway.errors import (
    AccessDenied,
    GatewayError,
    InternalError,
    UnknownOperation,
    ValidationError,
    new_request_id,
    render,
)
from gateway.limiter.service import Limiter, Ticket
from gateway.metrics import Metrics
from gateway.queueing.dispatcher import Queues
from gateway.streamtap import STREAM_OPERATIONS
from gateway.upstream.client import NotSent, UpstreamClient, UpstreamResponse

log = logging.getLogger("gateway.access")

OPERATIONS = {
    "invoke": "InvokeModel",
    "converse": "Converse",
    "invoke-with-response-stream": "InvokeModelWithResponseStream",
    "converse-stream": "ConverseStream",
    "count-tokens": "CountTokens",
}
_FORWARDED_PREFIX = b"x-amzn-bedrock-"


@dataclass(slots=True)
class _Request:
    operation: str
    model_id: str
    headers: Headers
    content_type: str
    accept: str
    content_length: int | None
    max_wait_ms: int | None = None
    batch: bool = False


def parse_target(raw_path: bytes) -> tuple[str, str]:
    """``/model/<encoded id>/<operation>`` → (operation, decoded model id).

    The id is taken from the raw path and split at the last ``/``: ARNs carry an encoded ``/``
    that a decoded path would split on (BEDROCK.md §1).
    """
    rest = raw_path[len(b"/model/") :]
    cut = rest.rfind(b"/")
    operation = rest[cut + 1 :].decode("latin-1") if cut > 0 else ""
    if operation not in OPERATIONS:
        raise UnknownOperation(f"No Bedrock Runtime operation at POST {raw_path[:200]!r}.")
    return operation, unquote(rest[:cut].decode("latin-1"))


def _scan(scope: Scope) -> _Request:
    operation, model_id = parse_target(scope["raw_path"])
    content_type = accept = "application/json"
    content_length = max_wait_ms = None
    batch = False
    headers: Headers = scope["headers"]
    for name, value in headers:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"accept":
            accept = value.decode("latin-1")
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else None
        elif name == b"x-gateway-max-wait-ms":
            max_wait_ms = int(value) if value.isdigit() else None
        elif name == b"x-gateway-priority":
            batch = value.strip().lower() == b"batch"
    return _Request(operation, model_id, headers, content_type, accept, content_length,
                    max_wait_ms, batch)  # fmt: skip


def _upstream_headers(request: _Request) -> dict[str, str]:
    headers = {"content-type": request.content_type}
    if request.operation == "invoke":
        headers["accept"] = request.accept
    elif request.operation == "invoke-with-response-stream":
        # IMWRS carries the inner chunks' type here; ``accept`` would name the event stream.
        # A client's own x-amzn-bedrock-accept replaces this default just below.
        headers["x-amzn-bedrock-accept"] = "application/json"
    for name, value in request.headers:
        if name.startswith(_FORWARDED_PREFIX):
            headers[name.decode("latin-1")] = value.decode("latin-1")
    return headers


def gateway_headers(ticket: Ticket, queued_s: float, attempts: int) -> Headers:
    """What the gateway adds to every answer it forwards: the route taken, the time queued,
    the upstream attempts made."""
    return [
        (b"x-gateway-route", ticket.route.label.encode()),
        (b"x-gateway-queue-ms", str(round(queued_s * 1000)).encode()),
        (b"x-gateway-attempts", str(attempts).encode()),
    ]


def _charged(reply: UpstreamResponse, operation: str, burndown: float, reserved: int) -> int:
    """Quota tokens Bedrock counted for ``reply``: its usage on success, none for an error
    answer (it refused or failed the call), the full reservation when usage is missing."""
    if reply.status >= 300:
        return 0
    usage = cost.usage_from_headers(reply.headers) or cost.usage_from_body(operation, reply.body)
    return reserved if usage is None else cost.charge(usage, burndown)


def _check_body(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = f"Malformed input request: the body is not valid JSON ({exc})."
        raise ValidationError(message) from None
    if not isinstance(document, dict):
        raise ValidationError("Malformed input request: the body must be a JSON object.")
    return document


class DataPlane:
    def __init__(
        self,
        *,
        catalog: Catalog,
        authenticator: Authenticator,
        upstream: UpstreamClient,
        limiter: Limiter,
        queues: Queues,
        attempts: Attempts,
        metrics: Metrics,
        max_body_bytes: int,
        default_wait_s: float,
    ) -> None:
        self._catalog = catalog
        self._auth = authenticator
        self._upstream = upstream
        self._limiter = limiter
        self._queues = queues
        self._attempts = attempts
        self._default_wait_s = default_wait_s
        self._metrics = metrics
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        outcome = _Outcome()
        try:
            reply = await self._handle(scope, receive, send, outcome, request_id)
        except ClientDisconnected:
            return
        except GatewayError as exc:
            reply = render(exc, request_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            reply = render(InternalError("The gateway failed to process the request."), request_id)
        if reply is None:  # streamed: the response went out as it arrived
            status = 200
        else:
            status, headers, body = reply
            await send_response(send, status, headers, body)
        elapsed = time.perf_counter() - started
        self._metrics.requests.labels(outcome.operation, outcome.model, outcome.tenant,
                                      str(status)).inc()  # fmt: skip
        self._metrics.duration.labels(outcome.operation).observe(elapsed)
        log.info("%s %s %s %s %d %.1fms", request_id, outcome.tenant, outcome.operation,
                 outcome.model, status, elapsed * 1000)  # fmt: skip

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, outcome: _Outcome, request_id: str
    ) -> tuple[int, Headers, bytes] | None:
        """The response to send, or None when a stream was already relayed to ``send``."""
        if scope["method"] != "POST":
            raise UnknownOperation(f"Bedrock Runtime has no {scope['method']} operations.")
        request = _scan(scope)
        outcome.operation = OPERATIONS[request.operation]
        if request.content_length is not None and request.content_length > self._max_body:
            raise too_large(self._max_body)
        body = await read_body(receive, self._max_body)
        body_sha256 = hashlib.sha256(body).hexdigest()
        caller = self._auth.authenticate(
            RequestFacts("POST", scope["raw_path"].decode("latin-1"),
                         scope["query_string"].decode("latin-1"), request.headers, body_sha256)
        )  # fmt: skip
        outcome.tenant = caller.tenant.name
        target = self._authorize(caller, request.model_id)
        outcome.model = target.model.name
        if request.operation == "count-tokens":
            return await self._count_tokens(target, request, body, body_sha256)
        document = _check_body(body)
        model = target.model
        estimate = cost.estimate(
            request.operation, document, default_max_tokens=model.max_output_tokens
        )
        reserved = cost.reservation(estimate, model.output_burndown)
        max_wait_s = self._max_wait_s(caller, request)
        deadline = time.monotonic() + max_wait_s
        batch = caller.tenant.batch or request.batch

        async def admit(routes: tuple[Route, ...], wait_s: float, number: int) -> Ticket:
            member = request_id if number == 1 else f"{request_id}.{number}"
            ticket, queued_s = await self._queues.admit(
                member, caller.tenant.name, model.name, routes, reserved,
                max_wait_s=wait_s, batch=batch,
            )  # fmt: skip
            outcome.queued_s += queued_s
            return ticket

        async def attempt(ticket: Ticket, number: int) -> Answer:
            ours = gateway_headers(ticket, outcome.queued_s, number)
            if request.operation in STREAM_OPERATIONS:
                call = StreamCall(ticket, request.operation, body, body_sha256,
                                  _upstream_headers(request), estimate, model.output_burndown,
                                  ours)  # fmt: skip
                return await forward_stream(self._upstream, self._limiter, call, receive, send)
            reply = await self._forward(ticket, model, request, body, body_sha256)
            reply.headers.extend(ours)
            return reply.status, reply.headers, reply.body

        first = await admit(target.routes, max_wait_s, 1)
        answer, _ = await self._attempts.run(first, target.routes, deadline, attempt, admit)
        return answer

    def _max_wait_s(self, caller: Caller, request: _Request) -> float:
        """The queue deadline: the tenant's cap (or the default), lowered by the request's ask."""
        cap = caller.tenant.max_wait_s
        cap = self._default_wait_s if cap is None else cap
        if request.max_wait_ms is None:
            return cap
        return min(cap, request.max_wait_ms / 1000)

    async def _forward(
        self, ticket: Ticket, model: ModelSpec, request: _Request, body: bytes, body_sha256: str
    ) -> UpstreamResponse:
        """Call upstream and settle the ticket exactly once, whatever happens."""
        actual = ticket.reserved  # an unknown outcome keeps the full reservation: the safe side
        try:
            reply = await self._upstream.call(
                ticket.route, request.operation, body, body_sha256, _upstream_headers(request)
            )
            actual = _charged(reply, request.operation, model.output_burndown, ticket.reserved)
            return reply
        except NotSent:
            actual = 0
            raise
        finally:
            await self._limiter.settle(ticket, actual)

    async def _count_tokens(
        self, target: Target, request: _Request, body: bytes, body_sha256: str
    ) -> tuple[int, Headers, bytes]:
        """Pass CountTokens through on the model's first route, to the foundation model (the
        id CountTokens takes). Not admitted nor charged: it costs no quota on Bedrock.

        Hook for the estimator: calling this before admission would give exact input counts on
        models that support CountTokens, at one extra upstream round trip; not done yet."""
        route = replace(target.routes[0], upstream_id=target.routes[0].base_model)
        headers = {"content-type": request.content_type}
        reply = await self._upstream.call(route, "count-tokens", body, body_sha256, headers)
        reply.headers.append((b"x-gateway-route", route.label.encode()))
        return reply.status, reply.headers, reply.body

    def _authorize(self, caller: Caller, model_id: str) -> Target:
        target = self._catalog.resolve(model_id)
        if target is None:
            raise ValidationError(f"The provided model identifier is invalid: {model_id[:256]!r} "
                                  f"is not configured on this gateway.")  # fmt: skip
        if not caller.tenant.may_use(target.model.name):
            raise AccessDenied(f"Tenant {caller.tenant.name!r} may not use model "
                               f"{target.model.name!r}.")  # fmt: skip
        return target


@dataclass(slots=True)
class _Outcome:
    """What the request turned out to be, for metrics and the access log."""

    operation: str = "unknown"
    model: str = "unknown"
    tenant: str = "unknown"
    queued_s: float = 0.0
