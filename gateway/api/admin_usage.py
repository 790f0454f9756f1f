"""The admin API's usage routes: what each tenant used this minute, today and this month, and
the quota-increase report (``gateway.quota_report``) of every configured pool.

Read from the counters every settlement adds to (``gateway.limiter.ledger``) and from the
tenant's budget buckets themselves, so the figures are the ones the limiter enforces: a
minute, a UTC day and a UTC month, by the store's clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway import quota_report
from gateway.api.admin import error_responses
from gateway.limiter import ledger
from gateway.limiter.core import Bucket, Kind, period_end_ms
from gateway.limiter.service import Limiter
from gateway.limiter.store import StoreUnavailable
from gateway.pricing import MICROS_PER_USD
from gateway.tenancy.errors import NotFound, StoreDown


class PeriodUsage(BaseModel):
    start: float
    """Unix seconds: when the minute, UTC day or UTC month began."""
    end: float
    requests: int
    """Calls Bedrock served (each attempt of a retried request counts)."""
    throttled: int
    """Requests the gateway refused (ThrottlingException or a spent budget)."""
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    quota_tokens: int
    """What the calls cost in Bedrock quota: input + cache writes + output x burndown."""
    spend_usd: float
    """The price table applied to the usage (0 for a model without a price)."""


class BudgetUsage(BaseModel):
    name: str
    """``tpm``, ``tokens_per_day``, ``tokens_per_month`` or ``monthly_spend_usd``."""
    limit: float
    used: float
    """Including what calls in flight hold until they settle."""
    remaining: float
    resets_at: float | None
    """Unix seconds; null for ``tpm``, a rolling minute."""


class TenantUsage(BaseModel):
    tenant: str
    at: float
    periods: dict[str, PeriodUsage]
    """``minute``, ``day``, ``month``."""
    models: dict[str, dict[str, PeriodUsage]] = {}
    """The same by model (model name, then period)."""
    budgets: list[BudgetUsage]


class UsageList(BaseModel):
    tenants: list[TenantUsage]
    """Every tenant (without ``models``), in id order."""


def _period(counts: ledger.Counts, bounds: tuple[int, int]) -> PeriodUsage:
    return PeriodUsage(
        start=bounds[0] / 1000, end=bounds[1] / 1000, requests=counts.requests,
        throttled=counts.throttled, input_tokens=counts.input_tokens,
        output_tokens=counts.output_tokens, cache_read_tokens=counts.cache_read_tokens,
        cache_write_tokens=counts.cache_write_tokens, quota_tokens=counts.quota_tokens,
        spend_usd=counts.spend_micros / MICROS_PER_USD,
    )  # fmt: skip


def usage_router(
    limiter: Limiter, tenants: Callable[[], list[str]], read: Callable[[Bucket], Awaitable[int]],
    pools: Callable[[], list[tuple[str, str]]], clock: Callable[[], float] = time.time,
) -> APIRouter:  # fmt: skip
    """``pools``: every configured (model, route label), as they are now."""
    router = APIRouter(prefix="/admin", tags=["usage"])

    async def usage_of(tenant: str, with_models: bool) -> TenantUsage:
        now_ms = int(clock() * 1000)
        try:
            hashes = await limiter.usage(tenant, now_ms)
            budgets = [(name, bucket, await read(bucket))
                       for name, bucket in limiter.budgets(tenant)]  # fmt: skip
        except StoreUnavailable as exc:
            raise StoreDown(f"The quota store did not answer: {exc}") from exc
        periods: dict[str, PeriodUsage] = {}
        models: dict[str, dict[str, PeriodUsage]] = {}
        for period, counters in zip(ledger.PERIODS, hashes, strict=True):
            bounds = ledger.period_bounds_ms(period, now_ms)
            total, by_model = ledger.read(counters)
            periods[period] = _period(total, bounds)
            for model, counts in by_model.items() if with_models else ():
                models.setdefault(model, {})[period] = _period(counts, bounds)
        out = []
        for name, bucket, used in budgets:
            scale = MICROS_PER_USD if name == "monthly_spend_usd" else 1
            resets = (
                None if bucket.kind == Kind.WINDOW else period_end_ms(now_ms, bucket.period) / 1000
            )
            out.append(BudgetUsage(name=name, limit=bucket.limit / scale, used=used / scale,
                                   remaining=max(0, bucket.limit - used) / scale,
                                   resets_at=resets))  # fmt: skip
        return TenantUsage(tenant=tenant, at=now_ms / 1000, periods=periods, models=models,
                           budgets=out)  # fmt: skip

    @router.get("/tenants/{tenant_id}/usage", operation_id="showTenantUsage",
                responses=error_responses(503))  # fmt: skip
    async def tenant_usage(tenant_id: str) -> TenantUsage:
        """One tenant's usage this minute, today and this month (UTC), in total and by
        model: requests, refusals, tokens by kind, quota tokens and spend; and its budgets."""
        if not limiter.has_tenant(tenant_id):
            raise NotFound(f"No tenant {tenant_id!r}.", "tenant_id")
        return await usage_of(tenant_id, with_models=True)

    @router.get("/usage", operation_id="listUsage", responses=error_responses(503))
    async def all_usage(
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> UsageList:
        """Every tenant's usage (totals and budgets, no per-model split), in id order."""
        names = sorted(n for n in tenants() if after is None or n > after)[:limit]
        return UsageList(tenants=list(await asyncio.gather(*(usage_of(n, False) for n in names))))

    @router.get("/quota-report", operation_id="showQuotaReport",
                responses=error_responses(503))  # fmt: skip
    async def report(
        days: Annotated[int, Query(ge=1, le=35)] = 7,
    ) -> quota_report.Report:
        """What an AWS quota-increase request asks for, per model and route over the last
        ``days`` × 24 hours: steady (p50) and peak (p90) TPM and RPM, average input and output
        tokens, the share of calls over 25,000 input tokens, throttled shares (local and
        upstream) and week-over-week growth; and calls served and throttled per hour. Kept
        ``usage.retain_report_d`` days (35 by default)."""
        now = clock()
        configured = pools()
        try:
            found = await limiter.report_counters(configured, quota_report.needed_hours(now, days))
        except StoreUnavailable as exc:
            raise StoreDown(f"The quota store did not answer: {exc}") from exc
        return quota_report.build(configured, lambda m, r, h: found.get((m, r, h), {}), now, days)

    return router
