"""From a model request to an admitted call: parse, apply directives, reserve quota.

Shared by every model operation, streaming or not. Settling is the caller's job, exactly once,
through ``Admitted.settle``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gateway.errors import (
    GatewayError,
    InternalError,
    ModelTimeout,
    ServiceUnavailable,
    ValidationError,
)
from gateway.simulator.asgi import Scope, header
from gateway.simulator.bodies import ModelCall, converse_call, messages_call, parse_json
from gateway.simulator.config import SimulatorConfig
from gateway.simulator.directives import Directives, parse_directives
from gateway.simulator.pools import PoolRegistry
from gateway.simulator.quota import Denial, Limit, QuotaPool, Reservation
from gateway.simulator.tokens import counted
from gateway.simulator.wire import (
    THROTTLE_MESSAGES,
    BedrockThrottling,
    ModelError,
    region_from_authorization,
)

MESSAGES_OPS = frozenset({"invoke", "invoke-with-response-stream"})
CONVERSE_OPS = frozenset({"converse", "converse-stream"})
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class Sim:
    """What a request handler needs: settings, pools, and the two clocks."""

    config: SimulatorConfig
    registry: PoolRegistry
    clock: Callable[[], float]  # monotonic seconds: quota windows, latency
    wall: Callable[[], float]  # epoch seconds: the UTC day of tokens-per-day, timelines
    faults: dict[bytes, int] = field(default_factory=dict)  # fail_times counts by body digest

    def fault_due(self, body: bytes, times: int | None) -> bool:
        """Whether a ``status`` or ``reset`` fault applies to this request (always, or its
        first N)."""
        if times is None:
            return True
        if len(self.faults) > 100_000:  # bounded memory for a long-running simulator
            self.faults.clear()
        key = hashlib.sha1(body).digest()
        self.faults[key] = seen = self.faults.get(key, 0) + 1
        return seen <= times


@dataclass(slots=True)
class Admitted:
    """A call holding its reservation until ``settle``."""

    model: str
    pool: QuotaPool
    reservation: Reservation
    call: ModelCall
    burndown: int
    output_tokens: int
    capped: bool  # the requested output exceeded max_tokens
    ttft_s: float
    token_s: float
    started: float
    directives: Directives
    cut: bool = False
    """A ``reset`` fault is due: the connection closes mid-response."""

    def settle(self, now: float, output_tokens: int) -> None:
        charge = self.call.input_tokens + output_tokens * self.burndown
        self.pool.settle(self.reservation, now, charge)


def admit(sim: Sim, scope: Scope, body: bytes, model: str, op: str) -> Admitted:
    """Validate the request and reserve ``input + max_tokens × burndown``, or raise the
    Bedrock error the request earns (fault directive, validation, throttle)."""
    directives = parse_directives(body, scope["headers"])
    data = parse_json(body)
    if op in MESSAGES_OPS:
        call = messages_call(data)
    else:
        call = converse_call(data, sim.config.converse_default_max_tokens)
    call = replace(call, input_tokens=counted(sim.config.counting, model, call.input_tokens, data))
    if directives.status is not None and sim.fault_due(body, directives.fail_times):
        raise injected_fault(directives.status)
    region = region_from_authorization(header(scope, b"authorization"), sim.config.default_region)
    now = sim.clock()
    pool = sim.registry.pool(region, model, now)
    burndown = sim.registry.burndown(model)
    reserved = call.input_tokens + call.max_tokens * burndown
    outcome = pool.try_reserve(now, int(sim.wall() // SECONDS_PER_DAY), reserved)
    if isinstance(outcome, Denial):
        raise _denied(outcome, call, burndown, pool.limits.tpm)
    config = sim.config
    requested = directives.output_tokens
    if requested is None:
        requested = config.default_output_tokens
    ttft = directives.ttft_ms if directives.ttft_ms is not None else config.latency.ttft_ms
    per_token = directives.token_ms
    if per_token is None:
        per_token = config.latency.per_output_token_ms
    return Admitted(
        model=model,
        pool=pool,
        reservation=outcome,
        call=call,
        burndown=burndown,
        output_tokens=min(requested, call.max_tokens),
        capped=requested > call.max_tokens,
        ttft_s=ttft / 1000,
        token_s=per_token / 1000,
        started=now,
        directives=directives,
        cut=directives.reset and sim.fault_due(body, directives.fail_times),
    )


def injected_fault(status: int) -> GatewayError:
    """The error a ``[sim:status=N]`` directive asks for, with Bedrock's wording."""
    if status == 429:
        return BedrockThrottling(THROTTLE_MESSAGES[Limit.TOKENS_PER_MINUTE])
    if status == 503:
        return ServiceUnavailable("Bedrock is unable to process your request.")
    if status == 500:
        return InternalError(
            "The server encountered an internal error while processing the request."
        )
    if status == 408:
        return ModelTimeout(
            "Model has timed out in processing the request. Try your request again."
        )
    if status == 424:
        return ModelError("The model returned an error (simulated).")
    return ValidationError("Simulated validation error.")


def _denied(denial: Denial, call: ModelCall, burndown: int, tpm: int) -> GatewayError:
    if not denial.never:
        return BedrockThrottling(THROTTLE_MESSAGES[denial.limit])
    # A request that can never fit gets a 400 (as Bedrock does for an input that is too
    # long), not a throttle that clients would retry forever.
    reserved = call.input_tokens + call.max_tokens * burndown
    return ValidationError(
        f"The request reserves {reserved} tokens (input {call.input_tokens} + max_tokens "
        f"{call.max_tokens} x burndown {burndown}), more than this model's quota of {tpm} "
        "tokens per minute. Reduce max_tokens or the input."
    )
