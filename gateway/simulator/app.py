"""The simulator as a plain ASGI callable: routes, control endpoints, error rendering.

No framework on the hot path; a model call costs one path split, one JSON parse and the
quota arithmetic. Every failure is answered in Bedrock's error shape, never a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pydantic

from gateway.errors import (
    GatewayError,
    InternalError,
    UnknownOperation,
    ValidationError,
    new_request_id,
)
from gateway.simulator.admission import Sim
from gateway.simulator.asgi import (
    MAX_BODY,
    ClientDisconnected,
    CutShort,
    Receive,
    Scope,
    Send,
    header,
    json_headers,
    read_body,
    send_cut_short,
    send_response,
    serve_lifespan,
)
from gateway.simulator.config import PoolOverride, SimulatorConfig
from gateway.simulator.operations import count_tokens_operation, invoke_or_converse
from gateway.simulator.pools import PoolRegistry
from gateway.simulator.servicequotas import service_quotas_operation
from gateway.simulator.streaming import stream_operation
from gateway.simulator.wire import error_response, split_model_path

_log = logging.getLogger(__name__)

_UNARY_OPS = frozenset({"invoke", "converse"})
_STREAM_OPS = frozenset({"invoke-with-response-stream", "converse-stream"})
_POOL_LIST = pydantic.TypeAdapter(tuple[PoolOverride, ...])


class SimulatorApp:
    """ASGI app. ``sim`` holds the state; tests may read ``sim.registry`` directly."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = new_request_id()
        try:
            await self._route(scope, receive, send, request_id)
        except ClientDisconnected:
            return
        except CutShort as cut:
            await send_cut_short(send, cut)
        except GatewayError as error:
            await send_response(send, *error_response(error, request_id))
        except Exception:
            _log.exception("simulator bug on %s %s", scope.get("method"), scope.get("path"))
            bug = InternalError("The simulator failed to process the request.")
            await send_response(send, *error_response(bug, request_id))

    async def _route(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        raw_path = (scope.get("raw_path") or scope["path"].encode()).partition(b"?")[0]
        method = scope["method"]
        target = split_model_path(raw_path)
        if target is not None and method == "POST":
            model, op = target
            if op in _UNARY_OPS:
                body = await read_body(receive, MAX_BODY)
                result = await invoke_or_converse(self.sim, scope, body, model, op, request_id)
                await send_response(send, *result)
                return
            if op in _STREAM_OPS:
                body = await read_body(receive, MAX_BODY)
                await stream_operation(self.sim, scope, receive, send, body, model, op, request_id)
                return
            if op == "count-tokens":
                result = count_tokens_operation(await read_body(receive, MAX_BODY), request_id,
                                                self.sim.config.counting, model)  # fmt: skip
                await send_response(send, *result)
                return
        amz_target = header(scope, b"x-amz-target") if raw_path == b"/" else None
        if amz_target is not None and method == "POST":
            body = await read_body(receive, MAX_BODY)
            result = service_quotas_operation(self.sim.config, scope, amz_target, body, request_id)
            await send_response(send, *result)
            return
        if raw_path.startswith(b"/_simulator/") or raw_path == b"/health":
            await self._control(raw_path, method, scope, receive, send, request_id)
            return
        raise UnknownOperation(
            f"No Bedrock Runtime operation at {method} {raw_path.decode('latin-1')}"
        )

    async def _control(
        self, path: bytes, method: str, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        query = scope.get("query_string", b"")
        sim = self.sim
        result: Any
        if path == b"/health" and method == "GET":
            result = {"status": "ok"}
        elif path == b"/_simulator/stats" and method == "GET":
            offset = sim.wall() - sim.clock() if _flag(query, b"timeline") else None
            result = sim.registry.stats(sim.clock(), offset)
        elif path == b"/_simulator/reset" and method == "POST":
            sim.registry.reset(restore_config=_flag(query, b"config"))
            result = {"reset": True}
        elif path == b"/_simulator/pools" and method == "PUT":
            overrides = _parse_pools(await read_body(receive, MAX_BODY))
            sim.registry.replace_overrides(overrides, sim.clock())
            result = {"pools": [o.model_dump(exclude_unset=True) for o in overrides]}
        elif path == b"/_simulator/pools" and method == "GET":
            result = {"pools": [o.model_dump(exclude_unset=True) for o in sim.registry.overrides]}
        else:
            raise UnknownOperation(f"No simulator endpoint at {method} {path.decode('latin-1')}")
        body = orjson.dumps(result)
        await send_response(send, 200, json_headers(request_id, body), body)


def create_simulator_app(
    config: SimulatorConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> SimulatorApp:
    """A fresh simulator: its own pools and stats, nothing shared with other instances."""
    return SimulatorApp(Sim(config, PoolRegistry(config), clock, wall))


def _flag(query: bytes, name: bytes) -> bool:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name and value not in (b"0", b"false"):
            return True
    return False


def _parse_pools(body: bytes) -> tuple[PoolOverride, ...]:
    try:
        return _POOL_LIST.validate_json(body)
    except pydantic.ValidationError as error:
        raise ValidationError(f"Bad pool list: {error.errors(include_url=False)}") from None
