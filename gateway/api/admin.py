"""The admin API's door and its read-only pool view.

``AdminGuard`` stands in front of every ``/admin`` path, known or not: no admin key is 401, a
wrong one (a tenant's key too) is 403, before any routing or body parsing, so an unauthorised
caller learns nothing. Admin keys are SHA-256 digests, each compared in constant time, and
named: the route finds the name in ``request.state.admin`` for the audit log. Admin errors are
JSON ``{"message", "type", "field"}`` with Bedrock's ``x-amzn-ErrorType`` header.

``/admin/openapi.json`` declares every answer an operation can give: its error statuses with
that body (``AdminError``), the bearer admin key as the security scheme, and links from what a
call creates to the calls that use it (tests/tenancy/test_admin_schema.py holds the gateway to
it with schemathesis).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.routing import BaseRoute, Match

from gateway.asgi import Receive, Scope, Send
from gateway.catalog import Catalog
from gateway.errors import AccessDenied, GatewayError, new_request_id
from gateway.limiter.calibrating import Calibrations
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.service import Limiter
from gateway.tenancy.errors import MethodNotAllowed, Unauthenticated


class AdminError(BaseModel):
    """The body of every admin error (``x-amzn-ErrorType`` carries ``type`` too)."""

    message: str
    """What is wrong, for a person."""
    type: str
    """``ValidationException``, ``UnrecognizedClientException``, ``AccessDeniedException``,
    ``ResourceNotFoundException``, ``ConflictException``, ``ServiceUnavailableException``, …"""
    field: str | None = None
    """The field at fault (``id``, ``tpm``, ``tenant_id``, ``credential_id``, …), if any."""


_ERRORS = {
    400: "ValidationException: a value is wrong; `field` names it.",
    401: "UnrecognizedClientException: no admin key (`Authorization: Bearer <admin key>`).",
    403: "AccessDeniedException: the key presented is not an admin key.",
    404: "ResourceNotFoundException: the path names no such tenant or credential; `field` "
    "says which parameter.",
    409: "ConflictException: it exists already, or it changed under concurrent writes five "
    "times running (try again).",
    503: "ServiceUnavailableException: the tenant store did not answer (try again), or SigV4 "
    "credentials were asked for with no sealing key configured.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the admin errors it can answer with beyond those
    ``openapi_router`` declares for it (400, 401, 403, and 404 if it has path parameters)."""
    return {status: {"model": AdminError, "description": _ERRORS[status]} for status in statuses}


def admin_error(error: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = {"message": error.message, "type": error.error_type,
            "field": getattr(error, "field", None)}  # fmt: skip
    headers = [(b"content-type", b"application/json"),
               (b"x-amzn-errortype", error.error_type.encode()),
               (b"x-amzn-requestid", new_request_id().encode())]  # fmt: skip
    if isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="bedrock-gateway admin"'))
    if isinstance(error, MethodNotAllowed):
        headers.append((b"allow", error.allow.encode("latin-1")))
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
    """ASGI: lets a request through to ``app`` (a FastAPI app) only with a valid admin key,
    and only for a method its path takes: else ``405`` with every method the path does take
    in ``Allow`` (Starlette's own 405 names only those of the first route on the path)."""

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
            self._check_method(scope)
        except GatewayError as exc:
            status, headers, body = admin_error(exc)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["admin"] = actor
        await self._app(scope, receive, send)

    def _check_method(self, scope: Scope) -> None:
        if self._match(scope) != Match.PARTIAL:
            return  # a route takes it, or no route has the path (the app's 404)
        # Routes (FastAPI's included routers too) answer ``matches`` and nothing more: ask
        # which methods would match in full.
        allow = ", ".join(m for m in _METHODS if self._match({**scope, "method": m}) == Match.FULL)
        raise MethodNotAllowed(f"This admin path takes only {allow}.", allow)

    def _match(self, scope: Scope) -> Match:
        best = Match.NONE
        routes: list[BaseRoute] = self._app.router.routes
        for route in routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return match
            best = max(best, match, key=lambda m: m.value)
        return best


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class AdminRouter(APIRouter):
    """An admin router that may refine its part of the OpenAPI schema with what only the
    running config knows (the model names a tenant may be given, say); ``openapi_router``
    calls ``refine`` on the finished schema."""

    def __init__(
        self, *, refine: Callable[[dict[str, Any]], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.refine = refine


def openapi_router(routers: Sequence[APIRouter]) -> APIRouter:
    """``GET /admin/openapi.json``: the admin API's schema (behind the admin key too)."""
    router = APIRouter(prefix="/admin")
    base: dict[str, Any] = {}

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if not base:  # the routes' part, built once
            routes = [route for r in routers for route in r.routes]
            base.update(_declare_errors(get_openapi(
                title="bedrock-gateway admin API", version="1", routes=routes,
                description="Tenants, credentials, audit log and quota pools. Every call needs "
                "Authorization: Bearer <admin key>.",
            )))  # fmt: skip
        schema = copy.deepcopy(base)  # the config's part, as it is now (a reload changes it)
        for r in routers:
            if isinstance(r, AdminRouter) and r.refine is not None:
                r.refine(schema)
        return schema

    return router


def _declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's schema, with the admin API's errors in place of its own ``422``.

    Invalid input is a ``400`` ``AdminError`` here (``gateway.api.app`` turns FastAPI's
    validation errors into it), so the ``422`` FastAPI declares, and its ``HTTPValidationError``
    schemas, would be a lie. Every operation can answer ``401``/``403`` (``AdminGuard``),
    ``400`` if it takes parameters or a body, ``404`` if its path names something; routes
    declare the rest (``error_responses``: ``409``, ``503``).
    """
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.setdefault("AdminError", AdminError.model_json_schema())
    components["securitySchemes"] = {"adminKey": {
        "type": "http", "scheme": "bearer",
        "description": "An admin key (admin.key_sha256 or admin.keys in the config); a tenant's "
        "key is refused with 403.",
    }}  # fmt: skip
    schema["security"] = [{"adminKey": []}]

    def error(status: int) -> dict[str, Any]:
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/AdminError"}}}
        declared: dict[str, Any] = {"description": _ERRORS[status], "content": content}
        if status == 401:
            declared["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        return declared

    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses = [401, 403]
            if operation.get("parameters") or operation.get("requestBody"):
                statuses.append(400)
            if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                statuses.append(404)  # the path names something that may not exist
            for status in sorted(statuses):
                responses.setdefault(str(status), error(status))
    return schema


def admin_router(
    catalog: Catalog, limiter: Limiter, learned: LearnedQuotas, calibrations: Calibrations,
) -> APIRouter:  # fmt: skip
    router = APIRouter(prefix="/admin", tags=["pools"])

    @router.get("/pools", operation_id="listPools")
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
