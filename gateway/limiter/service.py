"""The limiter as the data plane sees it: admit a request to one of its routes, settle it once.

Buckets are built once per route and per tenant from the config: a route's quota pool
(account, source region, scope, base model) gets tokens per minute, requests per minute,
tokens per day and concurrency; a tenant's budgets add tokens per month. Each admission is one
plan: the tenant's charges plus one alternative per route, so choosing the first route with
room and charging it is one round trip to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.catalog import Route
from gateway.config import LimiterConfig, TenantConfig
from gateway.errors import AccessDenied, Throttled, ValidationError
from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Decision,
    Denied,
    Kind,
    Period,
    Plan,
    lease_bucket,
    period_bucket,
    window_bucket,
)
from gateway.limiter.failover import FailoverStore, Store
from gateway.limiter.settled import SettledShare

UNKNOWN_WAIT_MS = 1000


class Metrics(Protocol):
    def admitted(self, route: str, tenant: str) -> None: ...

    def throttled(self, reason: str, tenant: str) -> None: ...

    def settled(self, route: str, tenant: str, tokens: int, delta: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Limits:
    """The buckets of one pool or tenant; ``tokens`` are corrected at settlement."""

    tokens: tuple[Bucket, ...]
    requests: tuple[Bucket, ...]
    tpm: int | None
    tokens_per_day: int | None

    def charges(self, reserved: int, factor: float = 1.0) -> tuple[Charge, ...]:
        """The plan's charges; ``factor`` < 1 scales the per-minute token limit (learned)."""
        tokens = self.tokens
        if factor < 1.0:
            tokens = tuple(
                replace(b, limit=max(1, int(b.limit * factor))) if b.kind == Kind.WINDOW else b
                for b in tokens
            )
        return tuple(Charge(b, reserved, settles=True) for b in tokens) + tuple(
            Charge(b, 1) for b in self.requests
        )

    def too_small_for(self, reserved: int) -> int | None:
        """The smallest token limit a reservation can never fit in, if any."""
        smallest = [b.limit for b in self.tokens if b.limit < reserved]
        return min(smallest) if smallest else None


@dataclass(slots=True)
class Ticket:
    """An admitted request: settle it exactly once."""

    plan: Plan
    admitted: Admitted
    store: Store
    route: Route
    tenant: str
    reserved: int
    settled: bool = False


def _limits(
    config: LimiterConfig, key: str, what: str, limits: Mapping[str, int | None]
) -> _Limits:
    window = {"window_ms": int(config.window_s * 1000), "slot_ms": config.slot_ms,
              "margin_ms": config.margin_ms}  # fmt: skip
    tokens: list[Bucket] = []
    requests: list[Bucket] = []
    if limits.get("tpm"):
        tokens.append(window_bucket(f"{key}:tpm", limits["tpm"] or 0, **window,
                                    label=f"tokens per minute of {what}"))  # fmt: skip
    for name, period in (("tokens_per_day", Period.DAY), ("tokens_per_month", Period.MONTH)):
        if limits.get(name):
            label = f"tokens per {period.name.lower()} of {what}"
            tokens.append(period_bucket(f"{key}:{name}", limits[name] or 0, period, label=label))
    if limits.get("rpm"):
        requests.append(window_bucket(f"{key}:rpm", limits["rpm"] or 0, **window,
                                      label=f"requests per minute of {what}"))  # fmt: skip
    if limits.get("max_concurrency"):
        requests.append(lease_bucket(f"{key}:conc", limits["max_concurrency"] or 0,
                                     ttl_ms=int(config.lease_ttl_s * 1000),
                                     label=f"concurrent requests of {what}"))  # fmt: skip
    return _Limits(tuple(tokens), tuple(requests), limits.get("tpm"), limits.get("tokens_per_day"))


def pool_key(prefix: str, route: Route) -> str:
    return f"{{{prefix}}}:pool:{route.account}:{route.region}:{route.scope}:{route.base_model}"


def throttle_message(bucket: Bucket) -> str:
    if bucket.kind == Kind.LEASES:
        head = "Too many concurrent requests"
    elif bucket.label.startswith("requests"):
        head = "Too many requests"
    elif bucket.kind == Kind.PERIOD:
        head = "Too many tokens per day" if bucket.a == Period.DAY else "Too many tokens per month"
    else:
        head = "Too many tokens"
    return f"{head}, please wait before trying again. (bedrock-gateway: {bucket.label})"


class Limiter:
    def __init__(
        self,
        config: LimiterConfig,
        tenants: Mapping[str, TenantConfig],
        store: FailoverStore | Store,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        prefix = config.key_prefix
        self._tenants = {
            name: _limits(config, f"{{{prefix}}}:tenant:{name}", f"tenant {name!r}",
                          t.model_dump(include={"tpm", "rpm", "tokens_per_day",
                                                "tokens_per_month", "max_concurrency"}))
            for name, t in tenants.items()
        }  # fmt: skip
        self._routes: dict[Route, _Limits] = {}
        self._tenant_prefix = f"{{{prefix}}}:tenant:"
        self.learned: Callable[[str], float] = lambda pool: 1.0
        """The learned fraction of a pool's configured TPM (``LearnedQuotas.factor``)."""
        self.on_capacity: Callable[[Route], None] | None = None
        """Called after a settlement that gave capacity back (a refund or a released lease)."""
        self.settled_share: dict[Route, SettledShare] = {}
        """Per route, what settlements leave of a reservation (the queue's forecast)."""
        self.in_flight: dict[Route, int] = {}
        """Per route, the tokens this replica has reserved and not yet settled."""

    def pool_of(self, route: Route) -> str:
        return pool_key(self._config.key_prefix, route)

    def tpm_window(self, route: Route) -> Bucket | None:
        """The per-minute token window of ``route``'s pool (the one learned quotas scale)."""
        windows = [b for b in self._route_limits(route).tokens if b.kind == Kind.WINDOW]
        return windows[0] if windows else None

    def is_tenant_limit(self, bucket: Bucket) -> bool:
        return bucket.key.startswith(self._tenant_prefix)

    def set_tenant(self, name: str, limits: Mapping[str, int | None]) -> None:
        """Give tenant ``name`` these budgets (created or changed at runtime). Its buckets keep
        their keys, so what it used so far still counts against the new limits."""
        self._tenants[name] = _limits(self._config, f"{self._tenant_prefix}{name}",
                                      f"tenant {name!r}", limits)  # fmt: skip

    def drop_tenant(self, name: str) -> None:
        self._tenants.pop(name, None)

    def _route_limits(self, route: Route) -> _Limits:
        limits = self._routes.get(route)
        if limits is None:
            what = f"pool {route.account}/{route.region}/{route.scope}/{route.base_model}"
            values = {"tpm": route.tpm, "rpm": route.rpm, "tokens_per_day": route.tokens_per_day,
                      "max_concurrency": route.max_concurrency}  # fmt: skip
            limits = self._routes[route] = _limits(
                self._config, pool_key(self._config.key_prefix, route), what, values
            )
        return limits

    def plan(
        self, member: str, tenant: str, routes: tuple[Route, ...], reserved: int
    ) -> tuple[Plan, tuple[Route, ...]]:
        """The admission plan and the routes its alternatives stand for, in order; raises
        ValidationError when ``reserved`` can never fit."""
        tenant_limits = self._tenants.get(tenant)
        if tenant_limits is None:  # deleted while its request was on the way
            raise AccessDenied(f"Tenant {tenant!r} no longer exists on this gateway.")
        too_small = tenant_limits.too_small_for(reserved)
        if too_small is not None:
            raise ValidationError(
                f"This request reserves {reserved} quota tokens (input estimate + max tokens x "
                f"output burndown), more than tenant {tenant!r}'s whole budget of {too_small}; "
                f"lower max_tokens."
            )
        alternatives, eligible, smallest = [], [], []
        for route in routes:
            limits = self._route_limits(route)
            blocker = limits.too_small_for(reserved)
            if blocker is None:
                factor = self.learned(self.pool_of(route))
                alternatives.append(limits.charges(reserved, factor))
                eligible.append(route)
            else:
                smallest.append(blocker)
        if not alternatives:
            raise ValidationError(
                f"This request reserves {reserved} quota tokens (input estimate + max tokens x "
                f"output burndown), more than the whole quota ({max(smallest)} tokens) of any "
                f"route for this model; lower max_tokens."
            )
        common = tenant_limits.charges(reserved)
        watch, at = [], len(common)
        for charges in alternatives:  # each route's per-minute token window
            tpm = [i for i, c in enumerate(charges) if c.settles and c.bucket.kind == Kind.WINDOW]
            watch += [at + i for i in tpm[:1]]
            at += len(charges)
        return Plan(member, common, tuple(alternatives), tuple(watch)), tuple(eligible)

    async def admit(
        self, member: str, tenant: str, routes: tuple[Route, ...], reserved: int
    ) -> Ticket | Denied:
        plan, eligible = self.plan(member, tenant, routes, reserved)
        decision, store = await self._admit(plan)
        if isinstance(decision, Denied):
            self._metrics.throttled(decision.bucket.label.split(" of ")[0], tenant)
            return decision
        route = eligible[decision.alternative - 1]
        self._metrics.admitted(route.label, tenant)
        self.in_flight[route] = self.in_flight.get(route, 0) + reserved
        return Ticket(plan, decision, store, route, tenant, reserved)

    async def _admit(self, plan: Plan) -> tuple[Decision, Store]:
        if isinstance(self._store, FailoverStore):
            return await self._store.admit(plan)
        return await self._store.admit(plan), self._store

    async def settle(self, ticket: Ticket, actual: int) -> None:
        """Correct the reservation to ``actual`` quota tokens, once."""
        if ticket.settled:
            return
        ticket.settled = True
        delta = actual - ticket.reserved
        self.in_flight[ticket.route] = self.in_flight.get(ticket.route, 0) - ticket.reserved
        self.settled_share.setdefault(ticket.route, SettledShare()).observe(ticket.reserved, actual)
        if isinstance(self._store, FailoverStore):
            await self._store.settle(ticket.store, ticket.plan, ticket.admitted, delta)
        else:
            await ticket.store.settle(ticket.plan, ticket.admitted, delta)
        self._metrics.settled(ticket.route.label, ticket.tenant, actual, delta)
        if self.on_capacity is not None and (delta < 0 or ticket.route.max_concurrency):
            self.on_capacity(ticket.route)

    async def ping(self) -> bool:
        return await self._store.ping()

    async def close(self) -> None:
        await self._store.close()


def throttled(denied: Denied) -> Throttled:
    wait = denied.retry_after_ms if denied.retry_after_ms is not None else UNKNOWN_WAIT_MS
    return Throttled(throttle_message(denied.bucket), wait)
