"""The Bedrock Runtime data plane: ``POST /model/{modelId}/{operation}`` as a plain ASGI app.

Per request: read the body (bounded), authenticate the tenant, resolve the model to its routes,
check the body, forward the original bytes upstream and answer with the upstream's status,
body and Bedrock headers plus ``x-gateway-route``; the two streaming operations are relayed
frame by frame (``gateway.api.streaming``) and settled from the usage the stream reports.
CountTokens is passed through without admission: Bedrock does not charge it against quotas.
Every failure is answered in Bedrock's error shape; nothing escapes as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

import orjson

from gateway import logs
from gateway.api.calls import Call, Calls
from gateway.asgi import (
    ClientDisconnected,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    SlowBodies,
    send_response,
    too_large,
)
from gateway.auth import Authenticator, Caller, RequestFacts
from gateway.catalog import Catalog, Target
from gateway.errors import (
    AccessDenied,
    BudgetExhausted,
    GatewayError,
    InternalError,
    ModelTimeout,
    RequestTimeout,
    ServiceUnavailable,
    Throttled,
    UnknownOperation,
    ValidationError,
    new_request_id,
    render,
)
from gateway.metrics import Metrics
from gateway.upstream.client import UpstreamClient

log = logging.getLogger("gateway.access")

OPERATIONS = {
    "invoke": "InvokeModel",
    "converse": "Converse",
    "invoke-with-response-stream": "InvokeModelWithResponseStream",
    "converse-stream": "ConverseStream",
    "count-tokens": "CountTokens",
}
_FORWARDED_PREFIX = b"x-amzn-bedrock-"
_ERROR_OUTCOMES: tuple[tuple[type[GatewayError], str], ...] = (
    (Throttled, "throttled"), (BudgetExhausted, "budget_exhausted"), (AccessDenied, "denied"),
    (ValidationError, "invalid"), (UnknownOperation, "invalid"), (RequestTimeout, "invalid"),
    (ModelTimeout, "upstream_timeout"),
    (ServiceUnavailable, "unavailable"),
)  # fmt: skip
_UPSTREAM_OUTCOMES = {403: "denied", 408: "upstream_timeout", 429: "upstream_throttled"}


CLIENT_GONE = 499
"""The access log's status for a request whose client left before its answer, or whose body
broke off (nginx's code for a client that closed the request)."""


def error_outcome(error: GatewayError) -> str:
    """The ``outcome`` label of an error the gateway answered itself."""
    for kind, outcome in _ERROR_OUTCOMES:
        if isinstance(error, kind):
            return outcome
    return "error"


def upstream_outcome(status: int) -> str:
    """The ``outcome`` label of an answer Bedrock gave."""
    if status < 300:
        return "success"
    if status >= 500:
        return "upstream_error"
    return _UPSTREAM_OUTCOMES.get(status, "invalid")


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
    that a decoded path would split on (docs/bedrock.md §1).
    """
    rest = raw_path[len(b"/model/") :]
    cut = rest.rfind(b"/")
    operation = rest[cut + 1 :].decode("latin-1") if cut > 0 else ""
    if operation not in OPERATIONS:
        shown = raw_path[:200].decode("utf-8", "backslashreplace")
        raise UnknownOperation(f"No Bedrock Runtime operation at POST {shown}.")
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
        calls: Calls,
        metrics: Metrics,
        max_body_bytes: int,
        default_wait_s: float,
        body_timeout_s: float = 30.0,
        access_log: bool = False,
    ) -> None:
        self._catalog = catalog
        self._auth = authenticator
        self._upstream = upstream
        self._calls = calls
        self._default_wait_s = default_wait_s
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._bodies = SlowBodies(body_timeout_s)
        self._access_log = access_log

    def reconfigure(self, *, default_wait_s: float, access_log: bool) -> None:
        """A config reload's ``queue.max_wait_s`` and ``logging.access_log``."""
        self._default_wait_s, self._access_log = default_wait_s, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        outcome = _Outcome()
        if self._access_log:
            send = outcome.watch(send)
        try:
            reply = await self._handle(scope, receive, send, outcome, request_id)
        except ClientDisconnected:
            # Gone, or (granian) a body the server could not parse, such as a bad chunk: a
            # caller still there is told so; a gone one's send is dropped by the server.
            incomplete = ValidationError("The request body ended before it was complete.")
            with contextlib.suppress(Exception):
                await send_response(send, *_closing(scope, render(incomplete, request_id)))
            self._ended(outcome, request_id, CLIENT_GONE, "client_gone", started)
            return
        except asyncio.CancelledError:
            # The server is stopping and gave up waiting for this request: still answer it
            # in Bedrock's shape if the response has not started (best effort), then stop.
            if not outcome.streamed:
                stopping = ServiceUnavailable("The gateway is shutting down; retry the request.")
                with contextlib.suppress(Exception):
                    await send_response(send, *render(stopping, request_id))
            raise
        except GatewayError as exc:
            reply = render(exc, request_id)
            outcome.kind = error_outcome(exc)
            if isinstance(exc, Throttled | BudgetExhausted):  # the one place a refusal counts
                self._metrics.refused(outcome.tenant, outcome.model, outcome.priority, exc)
                self._calls.refused(outcome.tenant, outcome.model)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            reply = render(InternalError("The gateway failed to process the request."), request_id)
            outcome.kind = "error"
        if reply is None:  # streamed: the response went out as it arrived
            status = 200
            outcome.streamed = True
        else:
            if not outcome.body_read:  # refused unread: what is left of it is no next request
                reply = _closing(scope, reply)
            status, headers, body = reply
            await send_response(send, status, headers, body)
        self._ended(outcome, request_id, status, outcome.kind or upstream_outcome(status), started)

    def _ended(
        self, outcome: _Outcome, request_id: str, status: int, kind: str, started: float
    ) -> None:
        """Count the request and write its access-log line."""
        elapsed = time.perf_counter() - started
        overhead = None if outcome.outside_s is None else elapsed - outcome.outside_s
        self._metrics.request(outcome.tenant, outcome.model, outcome.route, outcome.operation,
                              kind, elapsed, overhead)  # fmt: skip
        if self._access_log:
            logs.access(outcome.fields(request_id, status, elapsed, overhead))

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
        body = await self._bodies.read(receive, self._max_body)
        outcome.body_read = True
        body_sha256 = hashlib.sha256(body).hexdigest()
        caller = self._auth.authenticate(
            RequestFacts("POST", scope["raw_path"].decode("latin-1"),
                         scope["query_string"].decode("latin-1"), request.headers, body_sha256)
        )  # fmt: skip
        outcome.tenant = caller.tenant.name
        target = self._authorize(caller, request.model_id)
        outcome.model = target.model.name
        if request.operation == "count-tokens":
            return await self._count_tokens(target, request, body, body_sha256, outcome)
        call = Call(
            request_id, caller.tenant, request.operation, _check_body(body), body, body_sha256,
            _upstream_headers(request), caller.tenant.batch or request.batch,
            time.monotonic() + self._max_wait_s(caller, request), receive, send,
        )  # fmt: skip
        outcome.priority = "batch" if call.batch else "interactive"
        try:
            return await self._calls.run(call, target)
        finally:
            outcome.model = call.answered_by or outcome.model
            outcome.route = call.route
            outcome.outside_s = call.outside_s
            outcome.call = call

    def _max_wait_s(self, caller: Caller, request: _Request) -> float:
        """The queue deadline: the tenant's cap (or the default), lowered by the request's ask."""
        cap = caller.tenant.max_wait_s
        cap = self._default_wait_s if cap is None else cap
        if request.max_wait_ms is None:
            return cap
        return min(cap, request.max_wait_ms / 1000)

    async def _count_tokens(
        self, target: Target, request: _Request, body: bytes, body_sha256: str, outcome: _Outcome
    ) -> tuple[int, Headers, bytes]:
        """Pass CountTokens through on the model's first route, to the foundation model (the
        id CountTokens takes). Not admitted nor charged: it costs no quota on Bedrock.

        Hook for the estimator: calling this before admission would give exact input counts on
        models that support CountTokens, at one extra upstream round trip; not done yet."""
        route = replace(target.routes[0], upstream_id=target.routes[0].base_model)
        headers = {"content-type": request.content_type}
        reply = await self._upstream.call(route, "count-tokens", body, body_sha256, headers)
        outcome.route = route.label
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


def _closing(scope: Scope, reply: tuple[int, Headers, bytes]) -> tuple[int, Headers, bytes]:
    """``reply`` closing an HTTP/1 connection (HTTP/2 ends just the stream by itself)."""
    if scope.get("http_version") in ("1.0", "1.1"):
        reply[1].append((b"connection", b"close"))
    return reply


@dataclass(slots=True)
class _Outcome:
    """What the request turned out to be, for metrics and the access log."""

    operation: str = "unknown"
    model: str = "unknown"
    tenant: str = "unknown"
    route: str = "none"
    priority: str = "interactive"
    kind: str = ""
    """The outcome label when the gateway answered itself; "" when Bedrock did."""
    outside_s: float | None = None
    """Seconds upstream, queued or backing off (None: no model call was made)."""
    streamed: bool = False
    body_read: bool = False
    call: Call | None = None
    answered_id: str | None = None
    """The request id the client was told (upstream's on a forwarded answer)."""

    def watch(self, send: Send) -> Send:
        """``send``, noting the request id in the response's headers (only for the access log)."""

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-amzn-requestid":
                        self.answered_id = value.decode("latin-1")
            await send(message)

        return watching

    def fields(
        self, request_id: str, status: int, elapsed: float, overhead: float | None
    ) -> dict[str, object]:
        """The access-log line: what the request turned out to be, never what it carried."""
        call, usage = self.call, self.call.usage if self.call else None
        return {
            "request_id": self.answered_id or request_id, "gateway_request_id": request_id,
            "tenant": self.tenant, "model": self.model,
            "route": self.route, "operation": self.operation, "priority": self.priority,
            "status": status, "outcome": self.kind or upstream_outcome(status),
            "streamed": self.streamed, "latency_ms": round(elapsed * 1000, 2),
            "overhead_ms": None if overhead is None else round(overhead * 1000, 3),
            "queue_ms": round(call.queued_s * 1000) if call else None,
            "attempts": call.attempts if call else 0,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
        }  # fmt: skip
