"""``/dashboard``: the status page, its login form, its assets and the JSON it polls.

Only an admin key opens it (``gateway.api.admin.AdminKeys``, the admin API's own check; a
tenant's key is not one). The login form posts the key once; it is kept in a cookie that is
HttpOnly (the page's script never sees it), SameSite=Strict (no other site's page can make the
browser send it) and limited to ``/dashboard``, Secure when the page came over HTTPS. Every
request is checked against the configured admin keys again, so removing a key from the config
shuts its sessions out. ``GET /dashboard/data`` also takes ``Authorization: Bearer <admin
key>``, for scripts. Without a valid key: the login form, or a 401/403, never data.

The page and its script and stylesheet are files of this package, sent with a Content Security
Policy that allows nothing but this origin: no inline script, no CDN, no build step.
"""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.admin import AdminKeys, admin_response
from gateway.errors import GatewayError
from gateway.statuspage.history import StatusHistory
from gateway.tenancy.errors import Unauthenticated

COOKIE = "bgw_admin"
MAX_FORM_BYTES = 4096

_SECURITY = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}  # fmt: skip


def _read(name: str) -> str:
    return (resources.files("gateway.statuspage") / "static" / name).read_text("utf-8")


def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}/dashboard"


def _secure(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def dashboard_router(history: StatusHistory, keys: AdminKeys) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    page, login = _read("page.html"), _read("login.html")
    assets = {name: (_read(name).encode(), kind) for name, kind in _ASSETS.items()}

    def html_page(template: str, request: Request, status: int = 200, message: str = "",
                  clear: bool = False) -> Response:  # fmt: skip
        body = (template.replace("{{base}}", html.escape(_base(request)))
                .replace("{{message}}", html.escape(message)))  # fmt: skip
        reply = Response(body, status, _SECURITY, media_type="text/html; charset=utf-8")
        if clear:
            reply.delete_cookie(COOKIE, path=_base(request), secure=_secure(request),
                                httponly=True, samesite="strict")  # fmt: skip
        return reply

    def check(key: str) -> GatewayError | None:
        try:
            keys.who(f"Bearer {key}")
        except GatewayError as exc:
            return exc
        return None

    @router.get("")
    async def dashboard(request: Request) -> Response:
        key = request.cookies.get(COOKIE)
        if key is None:
            return html_page(login, request)
        if check(key) is not None:  # a key since removed from the config, or never one
            return html_page(login, request, 403, "That key is no longer an admin key.", True)
        return html_page(page, request)

    @router.post("/login")
    async def log_in(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return html_page(login, request, 413, "The form is too large.")
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        key = (form.get("key") or [""])[0].strip()
        if not key or check(key) is not None:
            return html_page(login, request, 403, "That is not an admin key.")
        reply = Response(status_code=303, headers={**_SECURITY, "location": _base(request)})
        reply.set_cookie(COOKIE, key, path=_base(request), secure=_secure(request),
                         httponly=True, samesite="strict")  # fmt: skip
        return reply

    @router.post("/logout")
    async def log_out(request: Request) -> Response:
        reply = Response(status_code=303, headers={**_SECURITY, "location": _base(request)})
        reply.delete_cookie(COOKIE, path=_base(request), secure=_secure(request),
                            httponly=True, samesite="strict")  # fmt: skip
        return reply

    @router.get("/data")
    async def data(request: Request) -> Response:
        authorization = request.headers.get("authorization")
        key = request.cookies.get(COOKIE)
        if authorization is None and key is None:
            return admin_response(Unauthenticated(
                "The status page needs an admin key: log in at /dashboard, or send "
                "Authorization: Bearer <admin key>."))  # fmt: skip
        try:
            keys.who(authorization if authorization is not None else f"Bearer {key}")
        except GatewayError as exc:
            return admin_response(exc)
        return Response(orjson.dumps(history.snapshot()), headers=_SECURITY,
                        media_type="application/json")  # fmt: skip

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in assets:
            return Response(b"not found\n", 404, {"x-content-type-options": "nosniff"})
        body, kind = assets[name]
        return Response(body, headers={"x-content-type-options": "nosniff",
                                       "cache-control": "no-cache"}, media_type=kind)  # fmt: skip

    return router
