"""The gateway's ASGI application: data plane on ``/model/…``, FastAPI for everything else.

``create_app`` takes the validated config and its environment and builds the parts; the
lifespan opens what needs the event loop (AWS credentials, upstream connection pools) and
closes it on shutdown. No module-level state: ``app_from_env`` is the factory uvicorn's
worker processes call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gateway import logs
from gateway.api.admin import (
    AdminGuard,
    AdminKeys,
    admin_response,
    admin_router,
    openapi_router,
)
from gateway.api.admin_config import config_router
from gateway.api.admin_tenants import tenants_router
from gateway.api.admin_usage import usage_router
from gateway.api.attempts import Attempts
from gateway.api.calls import Calls
from gateway.api.dataplane import DataPlane
from gateway.api.observability import (
    Observability,
    bucket_reader,
    observability,
    shared_redis,
    upstream_health,
)
from gateway.asgi import Receive, Scope, Send
from gateway.auth import Authenticator
from gateway.catalog import Catalog, Route
from gateway.config import ConfigError, GatewayConfig, LimiterConfig, load_config
from gateway.errors import (
    GatewayError,
    InternalError,
    UnknownOperation,
    ValidationError,
    new_request_id,
    render,
)
from gateway.limiter.adaptive import Aimd
from gateway.limiter.calibrating import Calibrations
from gateway.limiter.failover import FailoverStore
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.memory import MemoryStore
from gateway.limiter.redis_store import RedisStore
from gateway.limiter.service import Limiter
from gateway.limiter.store import Direct, Stores, StoreUnavailable
from gateway.metrics import Metrics
from gateway.pricing import PriceTable
from gateway.queueing.dispatcher import Queues
from gateway.queueing.fair import BATCH, INTERACTIVE
from gateway.reload import Reloader
from gateway.retry import RetryPolicy
from gateway.shutdown import Drain, Refusal, cancel_requests
from gateway.statuspage.routes import dashboard_router
from gateway.storewatch import TimedStore
from gateway.tenancy.errors import InvalidField, NotFound
from gateway.tenancy.model import TenantSpec
from gateway.tenancy.wiring import Tenancy
from gateway.upstream.client import Fanout, UpstreamClient
from gateway.upstream.credentials import CredentialSource, open_source

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Credentials(dict[str, CredentialSource]):
    """Credential sources by account, filled in by the lifespan."""


@dataclass(frozen=True)
class Parts:
    """What the lifespan opens and closes, and the control routes look at."""

    catalog: Catalog
    credentials: _Credentials
    upstream: UpstreamClient
    store: Stores
    limiter: Limiter
    queues: Queues
    learned: LearnedQuotas
    calibrations: Calibrations
    tenancy: Tenancy
    reloader: Reloader


class GatewayApp:
    """Routes ``/model/…`` to the data plane, ``/admin…`` through the admin key check to the
    control app, and everything else to the control app."""

    def __init__(self, dataplane: DataPlane, control: FastAPI, admin_keys: AdminKeys) -> None:
        self.dataplane: ASGIApp = dataplane
        self.control = control
        self.admin = AdminGuard(admin_keys, control)

    def refuse_new(self, refusal: ASGIApp) -> None:
        """Draining (gateway/shutdown.py): ``refusal`` answers every data-plane request from
        now on; swapped in, so no request pays for a check."""
        self.dataplane = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/model/"):
            await self.dataplane(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith("/admin"):
            await self.admin(scope, receive, send)
        else:
            await self.control(scope, receive, send)


def _bedrock_error(error: GatewayError) -> Response:
    status, headers, body = render(error, new_request_id())
    return Response(body, status, {k.decode(): v.decode() for k, v in headers})


def open_store(config: LimiterConfig, environ: Mapping[str, str], metrics: Metrics) -> Stores:
    if config.backend == "memory":
        return Direct(MemoryStore())
    url = environ.get(config.redis_url_env or "") or config.redis_url
    if not url:
        raise ConfigError(f"limiter.redis_url_env: environment variable {config.redis_url_env} "
                          f"is not set")  # fmt: skip
    return FailoverStore(
        TimedStore(RedisStore.from_url(url, config.timeout_s), metrics.store_call),
        mode=config.on_store_failure,
        replicas=config.replicas,
        retry_after_s=config.retry_store_after_s,
        window_s=config.window_s + config.margin_ms / 1000,
        listener=metrics,
    )


async def limiter_state(store: Stores, on_failure: str) -> str:
    """``ok``, ``degraded: …`` (serving on the local share) or the reason it cannot serve."""
    reachable = await store.ping()
    if reachable and not store.degraded:
        return "ok"
    if on_failure == "local":
        return "degraded: quota store unreachable, using this replica's local share"
    return "quota store unreachable"


def _control_app(
    config: GatewayConfig, obs: Observability, parts: Parts, environ: Mapping[str, str],
    drain: Drain,
) -> FastAPI:  # fmt: skip
    ready: dict[str, str] = {"credentials": "starting"}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name, account in config.accounts.items():
                parts.credentials[name] = await open_source(name, account, environ)
            ready["credentials"] = "ok"
        except ConfigError as exc:
            ready["credentials"] = str(exc)
            raise
        parts.learned.start()
        # What the other replicas learned, before the first request (a new replica's too).
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(parts.calibrations.refresh(), config.limiter.timeout_s * 4)
        parts.calibrations.start()
        obs.start()
        await parts.tenancy.start(config.limiter.timeout_s * 8)
        drain.install()  # SIGTERM drains first (gateway/shutdown.py)
        try:
            yield
        finally:
            await parts.tenancy.close()
            await obs.close()
            await parts.queues.close()  # anyone still waiting gets an answer now
            await parts.calibrations.close()
            await parts.learned.close()
            await parts.upstream.close()
            await parts.limiter.close()

    app = FastAPI(
        title="bedrock-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )  # the admin API's schema is at /admin/openapi.json

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/admin"):
            return admin_response(_admin_http_error(exc))
        if exc.status_code == 404:
            return _bedrock_error(UnknownOperation("No such operation on this gateway."))
        return _bedrock_error(ValidationError(str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/admin"):
            return admin_response(invalid_field(exc))
        return _bedrock_error(ValidationError(f"Invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> Response:
        return _bedrock_error(InternalError("The gateway failed to process the request."))

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def is_ready() -> JSONResponse:
        ready["limiter"] = await limiter_state(parts.store, config.limiter.on_store_failure)
        ready["upstream"] = await obs.health.state()
        if drain.draining:
            ready["shutdown"] = "draining"
        ok = all(state == "ok" or state.startswith("degraded") for state in ready.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "components": ready},
                            status_code=200 if ok else 503)  # fmt: skip

    if obs.on_main_port:  # else on metrics.port (docs/operations.md)
        app.add_api_route("/metrics", obs.scrape, methods=["GET"])

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        if request.url.path.startswith("/admin"):
            return admin_response(exc)
        return _bedrock_error(exc)

    def pools() -> list[tuple[str, str]]:
        return [(t.model.name, r.label) for t in parts.catalog.targets() for r in t.routes]

    usage = usage_router(parts.limiter, parts.limiter.tenant_names, bucket_reader(parts.store),
                         pools)  # fmt: skip
    admin = [admin_router(parts.catalog, parts.limiter, parts.learned, parts.calibrations),
             tenants_router(parts.tenancy.admin, time.time), usage,
             config_router(parts.reloader, parts.tenancy, time.time,
                           config.limiter.timeout_s * 8)]  # fmt: skip
    for router in [*admin, openapi_router(admin)]:
        app.include_router(router)
    app.include_router(dashboard_router(obs.status, AdminKeys(config.admin.named_keys())))

    return app


def create_app(
    config: GatewayConfig,
    *,
    environ: Mapping[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
    config_path: str | None = None,
) -> GatewayApp:
    """Build the gateway for ``config`` (read from ``config_path``, which a config reload reads
    again). Raises ``ConfigError`` for missing secrets."""
    environ = os.environ if environ is None else environ
    metrics = metrics or Metrics(tenant_labels=config.metrics.tenant_labels)
    health = upstream_health(config, Catalog(config.models))
    credentials = _Credentials()
    upstream = UpstreamClient(config.upstream, config.accounts, credentials, wall_clock,
                              listener=Fanout(metrics, health))  # fmt: skip
    store = open_store(config.limiter, environ, metrics)
    limiter = Limiter(config.limiter, config.tenants, store, metrics, config.usage)
    weights = {name: tenant.weight for name, tenant in config.tenants.items()}
    fallback_allowed = {name: t.allow_fallback for name, t in config.tenants.items()}
    queues = Queues(
        limiter,
        max_depth=config.queue.max_depth,
        recheck_s=config.queue.recheck_s,
        refuse_when_hopeless=config.queue.refuse_when_hopeless,
        weights=weights,
        is_tenant_limit=limiter.is_tenant_limit,
    )
    limiter.on_capacity = queues.settled
    watch_queue_depths(metrics, queues, config.models)
    learned = _learned_quotas(config.limiter, store, metrics)
    limiter.learned = learned.factor

    def upstream_throttled(route: Route) -> None:  # counted by the upstream client itself
        learned.throttled(limiter.pool_of(route), limiter.tpm_window(route))

    upstream_config = config.upstream
    attempts = Attempts(
        RetryPolicy(upstream_config.max_attempts, upstream_config.retry_base_s,
                    upstream_config.retry_cap_s),
        on_throttled=upstream_throttled, on_retry=metrics.retried,
    )  # fmt: skip
    catalog = Catalog(config.models)
    calibrations = _calibrations(config, store, metrics)
    prices = PriceTable(config.models)
    calls = Calls(
        catalog, upstream, limiter, queues, attempts, calibrations, clock=time.monotonic,
        fallback_allowed=fallback_allowed, metrics=metrics, prices=prices,
    )  # fmt: skip

    def tenant_changed(name: str, spec: TenantSpec | None) -> None:
        """A tenant created, changed or deleted at runtime: the parts that hold its settings."""
        if spec is None:
            limiter.drop_tenant(name)
            weights.pop(name, None)
            fallback_allowed.pop(name, None)
            return
        limiter.set_tenant(name, spec.limits(), spec.monthly_spend_usd)
        weights[name] = spec.weight
        fallback_allowed[name] = spec.allow_fallback

    tenancy = Tenancy(config, environ, tenant_changed, wall_clock)
    dataplane = DataPlane(
        catalog=catalog,
        authenticator=Authenticator(
            lambda: tenancy.registry.directory,
            wall_clock,
            config.server.sigv4_max_skew_s,
            on_use=tenancy.registry.used,
        ),
        upstream=upstream,
        calls=calls,
        metrics=metrics,
        max_body_bytes=config.server.max_body_bytes,
        default_wait_s=config.queue.max_wait_s,
        body_timeout_s=config.server.request_read_timeout_s,
        access_log=config.logging.access_log,
    )
    reloader = _reloader(config, config_path, catalog, prices, queues, dataplane, metrics, tenancy)
    parts = Parts(catalog, credentials, upstream, store, limiter, queues, learned, calibrations,
                  tenancy, reloader)  # fmt: skip
    obs = observability(config, catalog, store, limiter, learned, metrics, health)

    def idle() -> bool:
        """Nothing admitted and unsettled, nothing queued: the drain may end."""
        return not any(queues.depth(name) for name in config.models) and not any(
            v > 0 for v in limiter.in_flight.values()
        )

    refusal = Refusal(config.server.max_body_bytes, metrics)
    drain = Drain(config.server.shutdown_grace_s, idle, lambda: app.refuse_new(refusal),
                  partial(cancel_requests, DataPlane.__call__.__code__))  # fmt: skip
    control = _control_app(config, obs, parts, environ, drain)
    app = GatewayApp(dataplane, control, AdminKeys(config.admin.named_keys()))
    return app


def watch_queue_depths(metrics: Metrics, queues: Queues, models: Iterable[str]) -> None:
    """``gateway_queue_depth`` of each model and priority, read from the queues at a scrape."""
    for name in models:
        for priority, klass in (("interactive", INTERACTIVE), ("batch", BATCH)):
            metrics.queue_depth.labels(name, priority).set_function(
                partial(queues.depth, name, klass)
            )


def _reloader(
    config: GatewayConfig, path: str | None, catalog: Catalog, prices: PriceTable, queues: Queues,
    dataplane: DataPlane, metrics: Metrics, tenancy: Tenancy,
) -> Reloader:  # fmt: skip
    """What a config reload changes in a running gateway (``gateway/reload.py``), at once."""

    def apply(new: GatewayConfig) -> None:
        catalog.load(new.models)
        prices.load(new.models)
        tenancy.admin.models = frozenset(new.models)
        queues.max_depth, queues.recheck_ms = new.queue.max_depth, int(new.queue.recheck_s * 1000)
        queues.refuse_when_hopeless = new.queue.refuse_when_hopeless
        dataplane.reconfigure(default_wait_s=new.queue.max_wait_s,
                              access_log=new.logging.access_log)  # fmt: skip
        logs.configure(new.logging)
        watch_queue_depths(metrics, queues, new.models)

    async def seed(new: GatewayConfig) -> None:
        await tenancy.reseed(new, config.limiter.timeout_s * 8)

    reloader = Reloader(path, config, apply, seed)
    tenancy.registry.on_config = reloader.follow
    return reloader


def _admin_http_error(exc: HTTPException) -> GatewayError:
    if exc.status_code == 404:
        return NotFound("No such admin operation.")
    if exc.status_code == 405:
        return InvalidField("This admin path does not take that method.")
    return InvalidField(str(exc.detail))


def invalid_field(exc: RequestValidationError) -> InvalidField:
    """The first problem of a request the admin API could not validate, naming its field."""
    error = exc.errors()[0]
    where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    return InvalidField(f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}",
                        ".".join(where) or None)  # fmt: skip


def _shared(store: Stores) -> RedisStore | None:
    return shared_redis(store)


def _calibrations(config: GatewayConfig, store: Stores, metrics: Metrics) -> Calibrations:
    """Estimate calibration per configured model and body family, shared through Redis."""
    keys = [(name, fam) for name in config.models for fam in ("converse", "invoke")]
    calibrations: Calibrations

    def changed(key: tuple[str, str], factor: float) -> None:
        metrics.estimate_factor.labels(*key).set(factor)

    calibrations = Calibrations(config.calibration.policy(), keys, _shared(store),
                                config.limiter.key_prefix, on_change=changed)  # fmt: skip
    for key in keys:
        metrics.estimate_factor.labels(*key).set(calibrations.factor(key))
    return calibrations


def _learned_quotas(config: LimiterConfig, store: Stores, metrics: Metrics) -> LearnedQuotas:
    """Learned quotas, shared through Redis when that is the store."""
    primary = store.primary
    shared = _shared(store)
    aimd = Aimd(config.learn_decrease, config.learn_recovery_per_s, config.learn_floor,
                config.learn_cooldown_s, config.learn_target, config.learn_hold_s)  # fmt: skip
    local_use = primary.used if isinstance(primary, MemoryStore) else None
    # the metrics read each pool's factor on scrape (gateway.api.observability)
    return LearnedQuotas(aimd, shared, f"{{{config.key_prefix}}}:adapt", local_use=local_use)


def app_from_env() -> GatewayApp:
    """Factory for uvicorn workers: the config path comes from ``GATEWAY_CONFIG``."""
    path = os.environ.get("GATEWAY_CONFIG")
    if not path:
        raise ConfigError("GATEWAY_CONFIG is not set")
    config = load_config(path)
    logs.configure(config.logging)  # a spawned worker does not inherit the parent's set-up
    return create_app(config, config_path=path)
