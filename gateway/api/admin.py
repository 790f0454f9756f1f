"""The admin API's door and its read-only pool view.

``AdminGuard`` stands in front of every ``/admin`` path, known or not: no admin key is 401, a
wrong one (a tenant's key too) is 403, before any routing or body parsing, so an unauthorised
caller learns nothing. Admin keys are SHA-256 digests, each compared in constant time, and
named: the route finds the name in ``request.state.admin`` for the audit log. Admin errors are
JSON ``{"message", "type", "field"}`` with Bedrock's ``x-amzn-ErrorType`` header.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from gateway.api.asgi import Receive, Scope, Send
from gateway.catalog import Catalog
from gateway.errors import AccessDenied, GatewayError, new_request_id
from gateway.limiter.calibrating import Calibrations
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.service import Limiter
from gateway.tenancy.errors import Unauthenticated


def admin_error(error: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = {"message": error.message, "type": error.error_type,
            "field": getattr(error, "field", None)}  # fmt: skip
    headers = [(b"content-type", b"application/json"),
               (b"x-amzn-errortype", error.error_type.encode()),
               (b"x-amzn-requestid", new_request_id().encode())]  # fmt: skip
    if isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="bedrock-gateway admin"'))
    return error.status, headers, orjson.dumps(body)


def admin_response(error: GatewayError) -> Response:
    status, headers, body = admin_error(error)
    return Response(body, status, {k.decode(): v.decode() for k, v in headers})


class AdminKeys:
    def __init__(self, named: Sequence[tuple[str, str]]) -> None:
        self._named = tuple(named)

    def who(self, authorization: str | None) -> str:
        """The name of the admin key presented; raises Unauthenticated or AccessDenied."""
        if not authorization or authorization[:7].lower() != "bearer ":
            raise Unauthenticated("The admin API needs Authorization: Bearer <admin key>.")
        presented = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        found = None
        for name, digest in self._named:  # every digest compared: no early exit to time
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        if found is None:
            raise AccessDenied("The admin key is not valid.")
        return found


class AdminGuard:
    """ASGI: lets a request through to ``app`` only with a valid admin key."""

    def __init__(self, keys: AdminKeys, app: Any) -> None:
        self._keys = keys
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            actor = self._keys.who(authorization)
        except GatewayError as exc:
            status, headers, body = admin_error(exc)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["admin"] = actor
        await self._app(scope, receive, send)


def openapi_router(routers: Sequence[APIRouter]) -> APIRouter:
    """``GET /admin/openapi.json``: the admin API's schema (behind the admin key too)."""
    router = APIRouter(prefix="/admin")
    schema: dict[str, Any] = {}

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if not schema:
            routes = [route for r in routers for route in r.routes]
            schema.update(get_openapi(
                title="bedrock-gateway admin API", version="1", routes=routes,
                description="Tenants, credentials, audit log and quota pools. Every call needs "
                "Authorization: Bearer <admin key>.",
            ))  # fmt: skip
        return schema

    return router


def admin_router(
    catalog: Catalog, limiter: Limiter, learned: LearnedQuotas, calibrations: Calibrations,
) -> APIRouter:  # fmt: skip
    router = APIRouter(prefix="/admin", tags=["pools"])

    @router.get("/pools")
    async def pools() -> dict[str, Any]:
        """Every quota pool the routes draw on: configured limits and the learned quota (its
        factor, when Bedrock last lowered it and until when it holds, in Unix seconds); and
        per model and body family, the factor input estimates are scaled by and the answers
        (samples) it was learned from."""
        seen: dict[str, dict[str, Any]] = {}
        states, hold_s = learned.states(), learned.aimd.hold_s
        for target in catalog.targets():
            for route in target.routes:
                pool = limiter.pool_of(route)
                factor = learned.factor(pool)
                since = states[pool][1] if pool in states else None
                entry = seen.setdefault(pool, {
                    "pool": pool, "account": route.account, "region": route.region,
                    "scope": route.scope, "base_model": route.base_model, "tpm": route.tpm,
                    "rpm": route.rpm, "tokens_per_day": route.tokens_per_day,
                    "max_concurrency": route.max_concurrency, "quota_factor": round(factor, 4),
                    "effective_tpm": None if route.tpm is None else int(route.tpm * factor),
                    "throttled_at": since,
                    "holds_until": None if since is None else since + hold_s,
                    "routes": [],
                })  # fmt: skip
                if route.label not in entry["routes"]:
                    entry["routes"].append(route.label)
        return {"pools": list(seen.values()), "calibration": calibrations.status()}

    return router
