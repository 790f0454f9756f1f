"""The limiter as the data plane sees it: admit a request to one of its routes, settle it once.

Buckets are built once per route and per tenant from the config: a route's quota pool
(account, source region, scope, base model) gets tokens per minute, requests per minute,
tokens per day and concurrency; a tenant's budgets add tokens per month. Each admission is one
plan: the tenant's charges plus one alternative per route, so choosing the first route with
room and charging it is one round trip to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.catalog import Route
from gateway.config import LimiterConfig, TenantConfig, UsageConfig
from gateway.cost import Usage
from gateway.errors import AccessDenied, BudgetExhausted, Throttled, ValidationError
from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Decision,
    Denied,
    Kind,
    Period,
    Plan,
    Tally,
    lease_bucket,
    period_bucket,
    period_end_ms,
    window_bucket,
)
from gateway.limiter.ledger import Ledger
from gateway.limiter.settled import SettledShare
from gateway.limiter.store import Store, Stores, StoreUnavailable
from gateway.pricing import MICROS_PER_USD, PriceTable

UNKNOWN_WAIT_MS = 1000
REFUSALS_FLUSH_S = 1.0
POOL_OWNER = "pool "
"""How a pool's buckets name their owner (``pool <account>/<region>/<scope>/<model>``)."""
REPORT_BATCH = 100
"""Quota-report hashes read per round trip (each up to ~1.4 KB)."""


class Metrics(Protocol):
    def admitted(self, route: str, tenant: str) -> None: ...

    def withdrew(self, route: str, tenant: str) -> None: ...

    def throttled(self, reason: str, tenant: str) -> None: ...

    def settled(self, route: str, tenant: str, tokens: int, delta: int) -> None: ...

    def spent(self, tenant: str, model: str, micros: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Bill:
    """Whom and what a call is billed for: its model (usage is counted per tenant and model),
    the price table, and the most it may cost in micro-dollars (what a spend budget holds
    until settlement)."""

    model: str
    prices: PriceTable
    max_micros: int = 0


@dataclass(frozen=True, slots=True)
class _Limits:
    """The buckets of one pool or tenant; ``tokens`` (and ``spend``) are corrected at
    settlement."""

    tokens: tuple[Bucket, ...]
    requests: tuple[Bucket, ...]
    tpm: int | None
    tokens_per_day: int | None
    spend: Bucket | None = None
    """A tenant's monthly spend budget, in micro-dollars."""

    def charges(self, reserved: int, factor: float = 1.0, spend: int = 0) -> tuple[Charge, ...]:
        """The plan's charges; ``factor`` < 1 scales the per-minute token limit (learned);
        ``spend``: the most the call may cost (micro-dollars), held by the spend budget."""
        tokens = self.tokens
        if factor < 1.0:
            tokens = tuple(
                replace(b, limit=max(1, int(b.limit * factor))) if b.kind == Kind.WINDOW else b
                for b in tokens
            )
        charges = tuple(Charge(b, reserved, settles=True) for b in tokens) + tuple(
            Charge(b, 1) for b in self.requests
        )
        if self.spend is not None:
            charges += (Charge(self.spend, spend, settles=True, spend=True),)
        return charges

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
    bill: Bill | None = None
    output_reserved: int = 0
    """The part of ``reserved`` held for the output (max tokens x burndown)."""
    admitted_at: float = 0.0
    """``time.monotonic()`` at the admission."""
    settled: bool = False

    @property
    def spend_reserved(self) -> int:
        """Micro-dollars held against the tenant's spend budget (0: none)."""
        charges = self.plan.common
        return charges[-1].cost if charges and charges[-1].spend else 0


def _limits(
    config: LimiterConfig, key: str, what: str, limits: Mapping[str, int | None],
    spend_usd: float | None = None,
) -> _Limits:  # fmt: skip
    window = {"window_ms": int(config.window_s * 1000), "slot_ms": config.slot_ms,
              "margin_ms": config.margin_ms}  # fmt: skip
    tokens: list[Bucket] = []
    requests: list[Bucket] = []
    if limits.get("tpm"):
        tokens.append(window_bucket(f"{key}:tpm", limits["tpm"] or 0, **window,
                                    label=f"tokens per minute of {what}", name="tpm",
                                    owner=what))  # fmt: skip
    for name, period in (("tokens_per_day", Period.DAY), ("tokens_per_month", Period.MONTH)):
        if limits.get(name):
            label = f"tokens per {period.name.lower()} of {what}"
            tokens.append(period_bucket(f"{key}:{name}", limits[name] or 0, period, label=label,
                                        name=name, owner=what))  # fmt: skip
    if limits.get("rpm"):
        requests.append(window_bucket(f"{key}:rpm", limits["rpm"] or 0, **window,
                                      label=f"requests per minute of {what}", name="rpm",
                                      owner=what))  # fmt: skip
    if limits.get("max_concurrency"):
        requests.append(lease_bucket(f"{key}:conc", limits["max_concurrency"] or 0,
                                     ttl_ms=int(config.lease_ttl_s * 1000),
                                     label=f"concurrent requests of {what}",
                                     name="max_concurrency", owner=what))  # fmt: skip
    spend = None
    if spend_usd:
        micros = max(1, round(spend_usd * MICROS_PER_USD))
        spend = period_bucket(f"{key}:spend_month", micros, Period.MONTH,
                              label=f"spend per month of {what}", name="monthly_spend_usd",
                              owner=what)  # fmt: skip
    return _Limits(tuple(tokens), tuple(requests), limits.get("tpm"),
                   limits.get("tokens_per_day"), spend)  # fmt: skip


def pool_key(prefix: str, route: Route) -> str:
    return f"{{{prefix}}}:pool:{route.account}:{route.region}:{route.scope}:{route.base_model}"


def throttle_message(bucket: Bucket) -> str:
    if bucket.kind == Kind.LEASES:
        head = "Too many concurrent requests"
    elif bucket.name == "rpm":
        head = "Too many requests"
    elif bucket.kind == Kind.PERIOD:
        head = (
            "Too many tokens per day"
            if bucket.period == Period.DAY
            else "Too many tokens per month"
        )
    else:
        head = "Too many tokens"
    return f"{head}, please wait before trying again. (bedrock-gateway: {bucket.label})"


class Limiter:
    def __init__(
        self,
        config: LimiterConfig,
        tenants: Mapping[str, TenantConfig],
        store: Stores,
        metrics: Metrics,
        usage: UsageConfig | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        prefix = config.key_prefix
        self.ledger = Ledger(prefix, usage or UsageConfig())
        self._tenants = {
            name: _limits(config, f"{{{prefix}}}:tenant:{name}", f"tenant {name!r}",
                          t.model_dump(include={"tpm", "rpm", "tokens_per_day",
                                                "tokens_per_month", "max_concurrency"}),
                          t.monthly_spend_usd)
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
        """Per route, the tokens this replica has reserved and not yet settled..."""
        self.in_flight_output: dict[Route, int] = {}
        """...and the part of them held for outputs."""
        self.tenant_in_flight: dict[str, int] = {}
        """Per tenant, the calls this replica admitted and has not settled yet."""
        self._refusals: Tally | None = None
        self._flushing: asyncio.Task[None] | None = None

    def pool_of(self, route: Route) -> str:
        return pool_key(self._config.key_prefix, route)

    def tpm_window(self, route: Route) -> Bucket | None:
        """The per-minute token window of ``route``'s pool (the one learned quotas scale)."""
        windows = [b for b in self._route_limits(route).tokens if b.kind == Kind.WINDOW]
        return windows[0] if windows else None

    def is_tenant_limit(self, bucket: Bucket) -> bool:
        return bucket.key.startswith(self._tenant_prefix)

    def set_tenant(
        self, name: str, limits: Mapping[str, int | None], spend_usd: float | None = None
    ) -> None:
        """Give tenant ``name`` these budgets (created or changed at runtime). Its buckets keep
        their keys, so what it used so far still counts against the new limits."""
        self._tenants[name] = _limits(self._config, f"{self._tenant_prefix}{name}",
                                      f"tenant {name!r}", limits, spend_usd)  # fmt: skip

    def has_tenant(self, name: str) -> bool:
        return name in self._tenants

    def tenant_names(self) -> list[str]:
        return list(self._tenants)

    def budgets(self, name: str) -> list[tuple[str, Bucket]]:
        """Tenant ``name``'s budgets by their config names (``tpm``, ``tokens_per_day``,
        ``tokens_per_month``, ``monthly_spend_usd`` in micro-dollars); [] if unknown."""
        limits = self._tenants.get(name)
        if limits is None:
            return []
        found = [(b.name, b) for b in limits.tokens]
        if limits.spend is not None:
            found.append(("monthly_spend_usd", limits.spend))
        return found

    def drop_tenant(self, name: str) -> None:
        self._tenants.pop(name, None)

    def _route_limits(self, route: Route) -> _Limits:
        limits = self._routes.get(route)
        if limits is None:
            what = f"{POOL_OWNER}{route.account}/{route.region}/{route.scope}/{route.base_model}"
            values = {"tpm": route.tpm, "rpm": route.rpm, "tokens_per_day": route.tokens_per_day,
                      "max_concurrency": route.max_concurrency}  # fmt: skip
            limits = self._routes[route] = _limits(
                self._config, pool_key(self._config.key_prefix, route), what, values
            )
        return limits

    def plan(
        self, member: str, tenant: str, routes: tuple[Route, ...], reserved: int,
        bill: Bill | None = None,
    ) -> tuple[Plan, tuple[Route, ...]]:  # fmt: skip
        """The admission plan and the routes its alternatives stand for, in order; raises
        ValidationError when ``reserved`` can never fit."""
        tenant_limits = self._tenants.get(tenant)
        if tenant_limits is None:  # deleted while its request was on the way
            raise AccessDenied(f"Tenant {tenant!r} no longer exists on this gateway.")
        too_small = tenant_limits.too_small_for(reserved)
        if too_small is not None:
            raise ValidationError(
                f"This request reserves {reserved} quota tokens (input estimate + max tokens x "
                f"output burndown), more than the whole budget of tenant {tenant!r} "
                f"({too_small} quota tokens): lower max_tokens."
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
        common = tenant_limits.charges(reserved, spend=bill.max_micros if bill else 0)
        watch, at = [], len(common)
        for charges in alternatives:  # each route's per-minute token window
            tpm = [i for i, c in enumerate(charges) if c.settles and c.bucket.kind == Kind.WINDOW]
            watch += [at + i for i in tpm[:1]]
            at += len(charges)
        return Plan(member, common, tuple(alternatives), tuple(watch)), tuple(eligible)

    async def admit(
        self, member: str, tenant: str, routes: tuple[Route, ...], reserved: int,
        bill: Bill | None = None, output_reserved: int = 0,
    ) -> Ticket | Denied:  # fmt: skip
        """A ticket for ``reserved`` tokens (``output_reserved`` of them the output cap), or
        the denial."""
        plan, eligible = self.plan(member, tenant, routes, reserved, bill)
        decision, store = await self._admit(plan)
        if isinstance(decision, Denied):
            self._metrics.throttled(decision.bucket.name, tenant)
            return decision
        route = eligible[decision.alternative - 1]
        self._metrics.admitted(route.label, tenant)
        self.in_flight[route] = self.in_flight.get(route, 0) + reserved
        self.in_flight_output[route] = self.in_flight_output.get(route, 0) + output_reserved
        self.tenant_in_flight[tenant] = self.tenant_in_flight.get(tenant, 0) + 1
        return Ticket(plan, decision, store, route, tenant, reserved, bill, output_reserved,
                      time.monotonic())  # fmt: skip

    async def _admit(self, plan: Plan) -> tuple[Decision, Store]:
        return await self._store.admit(plan)

    async def settle(
        self, ticket: Ticket, actual: int, usage: Usage | None = None, status: int = 200
    ) -> None:
        """Correct the reservation to ``actual`` quota tokens, once, and count the call's
        ``usage`` (what Bedrock reported, or the best count known) for its tenant: its tokens
        and what they cost. Without a usage, a call settled on its full reservation (outcome
        unknown) keeps its spend reservation too, one settled on nothing costs nothing.
        ``status``: Bedrock's answer (a 429 is counted for the quota report)."""
        if ticket.settled:
            return
        ticket.settled = True
        delta = actual - ticket.reserved
        route = ticket.route
        self.in_flight[route] = self.in_flight.get(route, 0) - ticket.reserved
        self.in_flight_output[route] = self.in_flight_output.get(route, 0) - ticket.output_reserved
        left = self.tenant_in_flight.get(ticket.tenant, 0) - 1
        if left > 0:
            self.tenant_in_flight[ticket.tenant] = left
        else:
            self.tenant_in_flight.pop(ticket.tenant, None)
        self._learn_share(ticket, actual, usage)
        spend, tally, bill = 0, None, ticket.bill
        if bill is not None:
            if usage is not None:
                spend = bill.prices.cost_micros(bill.model, ticket.route, usage)
            elif actual > 0:
                spend = ticket.spend_reserved
            tally = self.ledger.settled(ticket.tenant, bill.model, ticket.route.label,
                                        ticket.admitted.now_ms, usage, actual, spend,
                                        status == 429)  # fmt: skip
            if spend:
                self._metrics.spent(ticket.tenant, bill.model, spend)
        spend_delta = spend - ticket.spend_reserved
        await self._store.settle(ticket.store, ticket.plan, ticket.admitted, delta,
                                 spend=spend_delta, tally=tally)  # fmt: skip
        self._metrics.settled(ticket.route.label, ticket.tenant, actual, delta)
        if self.on_capacity is not None and (delta < 0 or ticket.route.max_concurrency):
            self.on_capacity(ticket.route)

    def _learn_share(self, ticket: Ticket, actual: int, usage: Usage | None) -> None:
        """What this settlement left of each part of its reservation, for the forecast. A
        call settled on nothing was not sent (nothing waiting is like it); one without a
        usage is split in proportion (an unknown outcome keeps the whole reservation)."""
        if actual <= 0:
            return
        if usage is not None:
            output = actual - usage.input_tokens - usage.cache_write_tokens
        else:
            output = ticket.output_reserved * actual // max(1, ticket.reserved)
        share = self.settled_share.get(ticket.route)
        if share is None:
            share = self.settled_share[ticket.route] = SettledShare()
        duration_ms = (time.monotonic() - ticket.admitted_at) * 1000
        share.observe(ticket.reserved, ticket.output_reserved, actual, output, duration_ms)

    async def withdraw(self, ticket: Ticket) -> None:
        """Hand back an admission nobody will use (its waiter left as it came): settled on
        nothing, and counted apart so admissions less withdrawals are the calls sent."""
        if not ticket.settled:
            self._metrics.withdrew(ticket.route.label, ticket.tenant)
        await self.settle(ticket, 0)

    def refused(self, tenant: str, model: str) -> None:
        """Count a local refusal in the tenant's usage: gathered in process and written at
        most once per ``REFUSALS_FLUSH_S`` in the background, never on the request's path."""
        tally = self.ledger.refused(tenant, model, time.time_ns() // 1_000_000)
        self._refusals = tally.merged(self._refusals)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_refusals())

    async def _flush_refusals(self) -> None:
        try:
            await asyncio.sleep(REFUSALS_FLUSH_S)
        finally:
            tally, self._refusals, self._flushing = self._refusals, None, None
            if tally is not None:
                with contextlib.suppress(StoreUnavailable):  # a failover store holds it
                    await self._store.add_tally(tally)

    async def usage(self, tenant: str, now_ms: int) -> list[dict[str, int]]:
        """Tenant ``tenant``'s minute, day and month counters (raises StoreUnavailable)."""
        return await self._store.tallies(list(self.ledger.keys(tenant, now_ms)))

    async def report_counters(
        self, pools: list[tuple[str, str]], hours: range
    ) -> dict[tuple[str, str, int], dict[str, int]]:
        """The quota report's hashes of ``pools`` ((model, route label)) and of their models'
        local refusals (route "") for ``hours`` (raises StoreUnavailable); a missing hash is
        absent. Read ``REPORT_BATCH`` keys a round trip, one after the other: the connection
        is the data plane's, and thousands of hashes at once could hold its calls past
        ``limiter.timeout_s``."""
        models = sorted({model for model, _ in pools})
        wanted = [(m, r, h) for m, r in [*pools, *((m, "") for m in models)] for h in hours]
        found: dict[tuple[str, str, int], dict[str, int]] = {}
        for at in range(0, len(wanted), REPORT_BATCH):
            batch = wanted[at : at + REPORT_BATCH]
            replies = await self._store.tallies([self.ledger.report_key(*w) for w in batch])
            found.update((w, c) for w, c in zip(batch, replies, strict=True) if c)
        return found

    async def ping(self) -> bool:
        return await self._store.ping()

    async def close(self) -> None:
        if self._flushing is not None:  # the refusals counted so far are written first
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        await self._store.close()


def usd(micros: int) -> str:
    """``$0.05``, ``$1,250.00``, ``$0.000184``: cents, or every micro-dollar when it counts."""
    if micros % 10_000 == 0:
        return f"${micros / MICROS_PER_USD:,.2f}"
    return f"${micros / MICROS_PER_USD:,.6f}".rstrip("0")


def budget_exhausted(denied: Denied) -> BudgetExhausted:
    """A tenant's spent day or month budget, said in full: which, its size, what was used, what
    this request needed, and when it resets."""
    bucket = denied.bucket
    period = "day" if bucket.period == Period.DAY else "month"
    resets = period_end_ms(denied.now_ms, bucket.period)
    when = dt.datetime.fromtimestamp(resets / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    used = denied.used or 0
    tenant = bucket.owner
    if bucket.name == "monthly_spend_usd":
        size, spent = usd(bucket.limit), usd(used)
        what = (
            f"The monthly spend budget of {tenant} ({size}) has no room for this request: "
            f"{spent} spent"
        )
    else:
        what = (f"The {period}'s token budget of {tenant} ({bucket.limit:,} quota tokens) has "
                f"no room for this request: {used:,} used")  # fmt: skip
    return BudgetExhausted(f"{what}; it resets at {when}. (bedrock-gateway: {bucket.label})",
                           resets, limit=bucket.name)  # fmt: skip


def refused_by(bucket: Bucket) -> dict[str, str]:
    """The ``limit`` and ``pool`` of a Throttled that ``bucket`` refused."""
    pool = bucket.owner.removeprefix(POOL_OWNER) if bucket.owner.startswith(POOL_OWNER) else ""
    return {"limit": bucket.name or "other", "pool": pool}


def throttled(denied: Denied) -> Throttled:
    wait = denied.retry_after_ms if denied.retry_after_ms is not None else UNKNOWN_WAIT_MS
    return Throttled(throttle_message(denied.bucket), wait, **refused_by(denied.bucket))
