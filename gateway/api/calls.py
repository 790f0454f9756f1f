"""One authenticated model call, from admission to answer.

For the requested model, then (for tenants that allow it) each configured fallback model: the
cost is estimated the way Bedrock counts it, the call waits for capacity in that model's queue,
and the admitted call goes upstream through the attempt loop (retries, another route). The
primary model keeps the request's deadline but a reserve, which its fallbacks share, so a
fallback answers only when the requested model could not in time. Converse bodies are
model-neutral; an InvokeModel body only falls back to a model of the same vendor (same format).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway import calibration, cost
from gateway.api.attempts import Answer, Attempts
from gateway.api.streaming import StreamCall, forward_stream
from gateway.asgi import ClientDisconnected, Headers, Receive, Send
from gateway.auth import Tenant
from gateway.catalog import Catalog, ModelSpec, Route, Target
from gateway.errors import NotSent, Throttled
from gateway.limiter.calibrating import Calibrations, family
from gateway.limiter.core import Kind, Period
from gateway.limiter.service import Bill, Limiter, Ticket
from gateway.metrics import Metrics
from gateway.pricing import PriceTable
from gateway.queueing.dispatcher import Abandoned, Queues
from gateway.streamtap import STREAM_OPERATIONS
from gateway.upstream.client import UpstreamClient, UpstreamResponse
from gateway.usage import usage_from_body, usage_from_headers

_CONVERSE = frozenset({"converse", "converse-stream"})
FALLBACK_RESERVE_S = 5.0
"""At most this much of a deadline is kept back from the requested model for its fallbacks."""


@dataclass
class Call:
    """Everything about one request that its admission and attempts need."""

    request_id: str
    tenant: Tenant
    operation: str
    document: dict[str, Any]
    body: bytes
    body_sha256: str
    upstream_headers: dict[str, str]
    batch: bool
    deadline: float
    receive: Receive
    send: Send
    queued_s: float = 0.0
    answered_by: str = field(default="")
    route: str = "none"
    """The label of the route that answered (the last one tried)."""
    outside_s: float = 0.0
    """Seconds spent upstream (or relaying a stream), queued and backing off: not overhead."""
    attempts: int = 0
    """Upstream attempts made (the access log)."""
    usage: cost.Usage | None = None
    """What the last answer reported it used (the access log)."""

    @property
    def priority(self) -> str:
        return "batch" if self.batch else "interactive"


def gateway_headers(ticket: Ticket, model: str, queued_s: float, attempts: int) -> Headers:
    """What the gateway adds to every answer it forwards."""
    return [
        (b"x-gateway-route", ticket.route.label.encode()),
        (b"x-gateway-model", model.encode()),
        (b"x-gateway-queue-ms", str(round(queued_s * 1000)).encode()),
        (b"x-gateway-attempts", str(attempts).encode()),
        *rate_limit_headers(ticket),
    ]


def rate_limit_headers(ticket: Ticket) -> Headers:
    """The tenant's first budget and what is left of it, in the IETF RateLimit header style
    (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy: "tpm";q=50000;w=60`` and
    ``RateLimit: "tpm";r=12345``. Nothing when the tenant has no token or request budget."""
    remaining = ticket.admitted.remaining
    if remaining is None or not ticket.plan.common or ticket.plan.common[0].spend:
        return []
    bucket = ticket.plan.common[0].bucket
    name = bucket.name
    if bucket.kind == Kind.WINDOW:
        window = (bucket.span - 1) * bucket.slot_ms // 1000
    else:
        window = 86_400 if bucket.period == Period.DAY else 2_592_000
    return [
        (b"ratelimit-policy", f'"{name}";q={bucket.limit};w={window}'.encode()),
        (b"ratelimit", f'"{name}";r={remaining}'.encode()),
    ]


def reported(reply: UpstreamResponse, operation: str) -> cost.Usage | None:
    """The usage Bedrock reported for a successful ``reply``, if it did."""
    if reply.status >= 300:
        return None
    return usage_from_headers(reply.headers) or usage_from_body(operation, reply.body)


def charged(reply: UpstreamResponse, usage: cost.Usage | None, burndown: float,
            reserved: int) -> int:  # fmt: skip
    """Quota tokens Bedrock counted for ``reply``: its usage on success, none for an error
    answer (it refused or failed the call), the full reservation when usage is missing."""
    if reply.status >= 300:
        return 0
    return reserved if usage is None else cost.charge(usage, burndown)


def true_input(usage: cost.Usage) -> int:
    """Every input token Bedrock counted, cached or not: what the estimate stands for."""
    return usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens


async def client_gone(receive: Receive) -> None:
    """Returns once the client has hung up (its body was read: all that can come is the end
    of the body and ``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _vendor(model: ModelSpec) -> str:
    return model.model_id.split(".", 1)[0]


class Calls:
    def __init__(
        self, catalog: Catalog, upstream: UpstreamClient, limiter: Limiter, queues: Queues,
        attempts: Attempts, calibrations: Calibrations, *, fallback_allowed: dict[str, bool],
        clock: Any, metrics: Metrics, prices: PriceTable | None = None,
    ) -> None:  # fmt: skip
        self._catalog = catalog
        self._prices = prices or PriceTable({})
        self._upstream = upstream
        self._limiter = limiter
        self._queues = queues
        self._attempts = attempts
        self._calibrations = calibrations
        self._fallback_allowed = fallback_allowed
        self._clock = clock
        self._metrics = metrics

    def refused(self, tenant: str, model: str) -> None:
        """A refusal the caller got (counted in the tenant's usage, in the background)."""
        self._limiter.refused(tenant, model)

    def candidates(self, call: Call, target: Target) -> list[Target]:
        """The requested model, then the fallbacks this call may use, in order."""
        chosen = [target]
        if not self._fallback_allowed.get(call.tenant.name, False):
            return chosen
        for name in target.model.fallback:
            other = self._catalog.resolve(name)
            if other is None or not call.tenant.may_use(other.model.name):
                continue
            if call.operation in _CONVERSE or _vendor(other.model) == _vendor(target.model):
                chosen.append(other)
        return chosen

    async def run(self, call: Call, target: Target) -> Answer:
        options = self.candidates(call, target)
        for index, option in enumerate(options):
            left = call.deadline - self._clock()
            last = index == len(options) - 1
            budget = left if last else max(0.0, left - min(FALLBACK_RESERVE_S, left / 2))
            if index:
                self._metrics.fell_back(target.model.name, option.model.name)
            try:
                return await self._run_model(call, option, budget)
            except Throttled:
                if last:
                    raise
        raise AssertionError("unreachable: the last option re-raises")

    async def _run_model(self, call: Call, target: Target, budget_s: float) -> Answer:
        model = target.model
        raw = cost.estimate(call.operation, call.document,
                            default_max_tokens=model.max_output_tokens)  # fmt: skip
        key = (model.name, family(call.operation))
        scaled = calibration.scale(raw.input_tokens, self._calibrations.factor(key))
        estimate = cost.Estimate(scaled, raw.max_output_tokens)
        reserved = cost.reservation(estimate, model.output_burndown)
        output_reserved = cost.output_reservation(estimate, model.output_burndown)
        prices = self._prices
        bill = Bill(model.name, prices, prices.max_cost_micros_any(model.name, estimate))

        def observe(usage: cost.Usage) -> None:
            call.usage = usage
            self._calibrations.observe(key, raw.input_tokens, true_input(usage))
            self._metrics.used_tokens(call.tenant.name, model.name, usage,
                                      cost.charge(usage, model.output_burndown))  # fmt: skip

        ended = 0.0  # when the last attempt ended: the backoff before a retry is not overhead

        async def admit(routes: tuple[Route, ...], wait_s: float, number: int) -> Ticket:
            member = call.request_id if number == 1 else f"{call.request_id}.{number}"
            if number > 1:
                call.outside_s += self._clock() - ended
            try:
                ticket, queued_s = await self._queues.admit(
                    member, call.tenant.name, model.name, routes, reserved,
                    max_wait_s=wait_s, batch=call.batch, bill=bill,
                    gone=partial(client_gone, call.receive), output_reserved=output_reserved,
                )  # fmt: skip
            except Abandoned:  # nobody to answer: not sent upstream, nothing charged
                raise ClientDisconnected from None
            call.queued_s += queued_s
            call.outside_s += queued_s
            self._metrics.waited(model.name, call.priority, queued_s)
            return ticket

        async def attempt(ticket: Ticket, number: int) -> Answer:
            nonlocal ended
            call.route = ticket.route.label
            call.attempts = number
            ours = gateway_headers(ticket, model.name, call.queued_s, number)
            try:
                if call.operation in STREAM_OPERATIONS:
                    stream = StreamCall(ticket, call.operation, call.body, call.body_sha256,
                                        dict(call.upstream_headers), estimate,
                                        model.output_burndown, ours, observe)  # fmt: skip
                    started = self._clock()
                    try:
                        return await forward_stream(self._upstream, self._limiter, stream,
                                                    call.receive, call.send)  # fmt: skip
                    finally:
                        call.outside_s += self._clock() - started
                reply = await self._forward(call, ticket, model, observe)
                reply.headers.extend(ours)
                return reply.status, reply.headers, reply.body
            finally:
                ended = self._clock()

        first = await admit(target.routes, budget_s, 1)
        call.answered_by = model.name
        answer, _ = await self._attempts.run(first, target.routes, call.deadline, attempt, admit,
                                             model.name)  # fmt: skip
        return answer

    async def _forward(
        self, call: Call, ticket: Ticket, model: ModelSpec, observe: Callable[[cost.Usage], None]
    ) -> UpstreamResponse:
        """Call upstream and settle the ticket exactly once, whatever happens."""
        actual = ticket.reserved  # an unknown outcome keeps the full reservation: the safe side
        billed: cost.Usage | None = None
        status = 200
        started = self._clock()
        try:
            try:
                reply = await self._upstream.call(
                    ticket.route, call.operation, call.body, call.body_sha256,
                    dict(call.upstream_headers),
                )  # fmt: skip
            finally:
                call.outside_s += self._clock() - started
            status = reply.status
            usage = reported(reply, call.operation)
            actual = charged(reply, usage, model.output_burndown, ticket.reserved)
            if usage is not None:
                observe(usage)
                if reply.status < 300:
                    billed = usage
            return reply
        except NotSent:
            actual = 0
            raise
        finally:
            await self._limiter.settle(ticket, actual, billed, status)
