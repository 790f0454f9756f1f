"""Prometheus metrics. Every metric lives in an injected registry, so tests get a fresh one.

Names follow Prometheus conventions (base units, ``_total`` counters, ``_seconds`` histograms).
Labels take only values the config bounds: configured model names, route labels, pool names and
tenant names, and small fixed sets (operation, outcome, limit, reason); a client's raw strings
never become a label. ``tenant_labels=False`` puts ``""`` in every tenant label (the same as no
label in PromQL). docs/operations.md lists every metric and what it counts.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Hashable
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.catalog import Route
from gateway.cost import Usage
from gateway.errors import BudgetExhausted, Throttled

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

_LIMITS = frozenset({"tpm", "rpm", "tokens_per_day", "tokens_per_month", "max_concurrency",
                     "monthly_spend_usd", "queue_full", "draining"})  # fmt: skip
"""The ``limit`` label's values: the config field of the limit that refused, or the queue's
condition; anything else is "other"."""


def pool_name(route: Route) -> str:
    """The ``pool`` label: account/region/scope/base model, as the limiter's messages say it."""
    return f"{route.account}/{route.region}/{route.scope}/{route.base_model}"


def _version() -> str:
    try:
        return metadata.version("bedrock-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Cached:
    """Label children resolved once per label tuple: the hot path does one dict lookup."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[Hashable, Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, tenant_labels: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tenant_labels = tenant_labels
        self.pools: frozenset[str] = frozenset()
        """Configured pool names (``pool_name``): the only values the pool label takes."""
        r = self.registry
        self.build_info = Gauge("gateway_build_info", "Always 1; the labels say what runs.",
                                ["version", "python"], registry=r)  # fmt: skip
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.asyncio_tasks = Gauge(
            "gateway_asyncio_tasks",
            "Asyncio tasks alive in this process: flat under a steady load, or something leaks.",
            registry=r,
        )  # fmt: skip
        self._init_requests(r)
        self._init_upstream(r)
        self._init_limiter(r)
        self._init_pools(r)

    def _init_requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests",
            "Data-plane requests answered, by tenant, model, route that answered ('none' if "
            "no route was admitted), operation and outcome (client_gone: the caller left "
            "before its answer, or its body broke off).",
            ["tenant", "model", "route", "operation", "outcome"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to complete response, by operation.",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time a request spent in the gateway itself: its whole duration less the time "
            "upstream (or relaying a stream), queued for capacity and backing off for a retry.",
            ["operation"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens Bedrock reported, by tenant, model and kind: input, output, cache_read, "
            "cache_write, and quota (input + cache writes + output x burndown).",
            ["tenant", "model", "kind"], registry=r,
        )  # fmt: skip
        self.throttles = Counter(
            "gateway_throttles",
            "Requests the gateway itself answered with a ThrottlingException, once per request, "
            "by tenant, model, the limit that refused (a config field, or queue_full/draining) "
            "and its pool ('' for a tenant's own budget).",
            ["tenant", "model", "limit", "pool"], registry=r,
        )  # fmt: skip
        self.queue_refusals = Counter(
            "gateway_queue_refusals",
            "Local ThrottlingExceptions by model, pool, priority and reason: no_capacity "
            "(refused without waiting), queue_timeout, hopeless (forecast past the deadline), "
            "queue_full, draining.",
            ["model", "pool", "priority", "reason"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time admitted requests waited for capacity (0 when admitted at once), by model "
            "and priority.",
            ["model", "priority"], buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests waiting for capacity in this replica, by model and priority.",
            ["model", "priority"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "gateway_retries",
            "Upstream attempts retried, by model, the route that failed and why: throttled, "
            "upstream_5xx, connection.",
            ["model", "route", "reason"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Requests passed on to a fallback model because the requested one had no capacity "
            "in time, by requested model and fallback.",
            ["model", "fallback"], registry=r,
        )  # fmt: skip

    def _init_upstream(self, r: CollectorRegistry) -> None:
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream calls that failed, by route and error: connect (no connection), timeout, "
            "connection (broken mid-call), http_5xx (Bedrock answered 5xx).",
            ["route", "error"], registry=r,
        )  # fmt: skip
        self.upstream_throttles = Counter(
            "gateway_upstream_throttles",
            "ThrottlingExceptions (429) answered by Bedrock itself, by route.",
            ["route"], registry=r,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "gateway_upstream_latency_seconds",
            "Upstream calls from sending to the end of the answer (a stream: its last byte), "
            "by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_ttfb = Histogram(
            "gateway_upstream_ttfb_seconds",
            "Upstream calls from sending to the first byte: the response headers of a plain "
            "call, the first body chunk of a stream, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def _init_limiter(self, r: CollectorRegistry) -> None:
        self.admissions = Counter(
            "gateway_admissions", "Requests admitted by the limiter, by route taken and tenant.",
            ["route", "tenant"], registry=r,
        )  # fmt: skip
        self.withdrawn = Counter(
            "gateway_admissions_withdrawn",
            "Admissions handed back at once because the queued request they were for had gone "
            "as they came (its deadline or its caller): never sent upstream, refunded in full.",
            ["route", "tenant"], registry=r,
        )  # fmt: skip
        self.denials = Counter(
            "gateway_limiter_denials",
            "Store decisions that denied an admission, by limit, including every re-check of a "
            "waiting queue head: store load, not refused requests (see gateway_throttles_total).",
            ["limit"], registry=r,
        )  # fmt: skip
        self.settled_tokens = Counter(
            "gateway_settled_tokens",
            "Quota tokens charged after settlement (input + cache writes + output x burndown).",
            ["route", "tenant"], registry=r,
        )  # fmt: skip
        self.settlement_corrections = Counter(
            "gateway_settlement_correction_tokens",
            "Quota tokens given back (refund) or added (overcharge) at settlement.",
            ["direction"], registry=r,
        )  # fmt: skip
        self.estimate_factor = Gauge(
            "gateway_estimate_calibration_factor",
            "Factor the input estimate is scaled by: a high quantile of Bedrock's true input "
            "count over the estimate, per configured model and body family.",
            ["model", "family"], registry=r,
        )  # fmt: skip
        self.store_failures = Counter(
            "gateway_limiter_store_failures",
            "Calls to the shared quota store (Redis) that failed, by operation.",
            ["operation"], registry=r,
        )  # fmt: skip
        self.store_latency = Histogram(
            "gateway_limiter_store_latency_seconds",
            "Calls to the shared quota store (Redis), by operation, failed ones included.",
            ["operation"], buckets=_STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.store_degraded = Gauge(
            "gateway_limiter_degraded",
            "1 while the shared quota store is unreachable and this replica runs on its fallback.",
            registry=r,
        )

    def _init_pools(self, r: CollectorRegistry) -> None:
        self.quota_factor = Gauge(
            "gateway_pool_quota_factor",
            "Fraction of a pool's configured tokens per minute in use after learning from "
            "Bedrock's 429s (1 = the configured quota).", ["pool"], registry=r,
        )  # fmt: skip
        self.pool_quota = Gauge(
            "gateway_pool_quota_tokens_per_minute",
            "A pool's configured tokens per minute.", ["pool"], registry=r,
        )  # fmt: skip
        self.pool_learned = Gauge(
            "gateway_pool_learned_quota_tokens_per_minute",
            "A pool's tokens per minute after learning from Bedrock's 429s.", ["pool"], registry=r,
        )  # fmt: skip
        self.pool_used = Gauge(
            "gateway_pool_used_tokens",
            "Quota tokens a pool holds in its rolling minute, all replicas (refreshed every "
            "few seconds off the request path).", ["pool"], registry=r,
        )  # fmt: skip
        self.pool_utilization = Gauge(
            "gateway_pool_utilization_ratio",
            "gateway_pool_used_tokens / gateway_pool_learned_quota_tokens_per_minute.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.budget_limit = Gauge(
            "gateway_tenant_budget_tokens", "A tenant's configured token budget, by budget.",
            ["tenant", "budget"], registry=r,
        )  # fmt: skip
        self.budget_remaining = Gauge(
            "gateway_tenant_budget_remaining_tokens",
            "What is left of a tenant's token budget, all replicas (refreshed every few "
            "seconds off the request path).", ["tenant", "budget"], registry=r,
        )  # fmt: skip
        self.spend = Counter(
            "gateway_spend_usd_total",
            "US dollars the calls cost, by the price table (settled usage; micro-dollar exact).",
            ["tenant", "model"], registry=r,
        )  # fmt: skip
        self.spend_budget = Gauge(
            "gateway_tenant_spend_budget_usd", "A tenant's monthly spend budget (USD).",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.spend_remaining = Gauge(
            "gateway_tenant_spend_budget_remaining_usd",
            "What is left of a tenant's monthly spend budget (USD), all replicas (refreshed "
            "every few seconds off the request path).", ["tenant"], registry=r,
        )  # fmt: skip
        self.request_child = _Cached(self.requests)
        self.duration_child = _Cached(self.duration)
        self.overhead_child = _Cached(self.overhead)
        self.tokens_child = _Cached(self.tokens)
        self.spend_child = _Cached(self.spend)
        self.wait_child = _Cached(self.queue_wait)
        self.latency_child = _Cached(self.upstream_latency)
        self.ttfb_child = _Cached(self.upstream_ttfb)
        self.admission_child = _Cached(self.admissions)
        self.settled_child = _Cached(self.settled_tokens)
        self.store_child = _Cached(self.store_latency)

    def tenant(self, name: str) -> str:
        return name if self.tenant_labels else ""

    # ---- the data plane ---------------------------------------------------------------------

    def request(self, tenant: str, model: str, route: str, operation: str, outcome: str,
                elapsed: float, overhead: float | None) -> None:  # fmt: skip
        self.request_child(self.tenant(tenant), model, route, operation, outcome).inc()
        self.duration_child(operation).observe(elapsed)
        if overhead is not None:
            self.overhead_child(operation).observe(max(0.0, overhead))

    def used_tokens(self, tenant: str, model: str, usage: Usage, quota: int) -> None:
        tenant = self.tenant(tenant)
        counts = (("input", usage.input_tokens), ("output", usage.output_tokens),
                  ("cache_read", usage.cache_read_tokens),
                  ("cache_write", usage.cache_write_tokens), ("quota", quota))  # fmt: skip
        for kind, count in counts:
            if count:
                self.tokens_child(tenant, model, kind).inc(count)

    def spent(self, tenant: str, model: str, micros: int) -> None:
        self.spend_child(self.tenant(tenant), model).inc(micros / 1_000_000)

    def refused(self, tenant: str, model: str, priority: str,
                error: Throttled | BudgetExhausted) -> None:  # fmt: skip
        """One local refusal the client gets: counted once per request."""
        limit = error.limit if error.limit in _LIMITS else "other"
        pool = error.pool if not error.pool or error.pool in self.pools else "other"
        reason = error.reason
        self.throttles.labels(self.tenant(tenant), model, limit, pool).inc()
        self.queue_refusals.labels(model, pool, priority, reason).inc()

    def waited(self, model: str, priority: str, seconds: float) -> None:
        self.wait_child(model, priority).observe(seconds)

    def retried(self, model: str, route: Route, reason: str) -> None:
        self.retries.labels(model, route.label, reason).inc()

    def fell_back(self, model: str, fallback: str) -> None:
        self.fallbacks.labels(model, fallback).inc()

    # ---- the upstream client's listener -----------------------------------------------------

    def upstream_answered(self, route: Route, status: int, ttfb_s: float) -> None:
        self.ttfb_child(route.label).observe(ttfb_s)
        if status == 429:
            self.upstream_throttles.labels(route.label).inc()
        elif status >= 500:
            self.upstream_errors.labels(route.label, "http_5xx").inc()

    def upstream_done(self, route: Route, seconds: float) -> None:
        self.latency_child(route.label).observe(seconds)

    def upstream_failed(self, route: Route, error: str) -> None:
        self.upstream_errors.labels(route.label, error).inc()

    # ---- the limiter's listener interface ---------------------------------------------------

    def admitted(self, route: str, tenant: str) -> None:
        self.admission_child(route, self.tenant(tenant)).inc()

    def withdrew(self, route: str, tenant: str) -> None:
        self.withdrawn.labels(route, self.tenant(tenant)).inc()

    def throttled(self, reason: str, tenant: str) -> None:
        """A denial by the limit named ``reason`` (a bucket's ``name``: ``tpm``, ``rpm``, …)."""
        self.denials.labels(reason if reason in _LIMITS else "other").inc()

    def settled(self, route: str, tenant: str, tokens: int, delta: int) -> None:
        self.settled_child(route, self.tenant(tenant)).inc(tokens)
        if delta:
            self.settlement_corrections.labels("refund" if delta < 0 else "overcharge").inc(
                abs(delta)
            )

    def store_failed(self, operation: str) -> None:
        self.store_failures.labels(operation).inc()

    def store_call(self, operation: str, seconds: float) -> None:
        self.store_child(operation).observe(seconds)

    def degraded(self, on: bool) -> None:
        self.store_degraded.set(1 if on else 0)

    # ---- gauges read on scrape --------------------------------------------------------------

    def watch_quota(self, pool: str, factor: Callable[[], float]) -> None:
        self.quota_factor.labels(pool).set_function(factor)

    def watch_pool(self, pool: str, tpm: int | None, factor: Callable[[], float],
                   used: Callable[[], int]) -> None:  # fmt: skip
        """A configured pool's gauges; ``used`` reads the last refreshed value (no I/O)."""
        self.pools = self.pools | {pool}
        self.quota_factor.labels(pool).set_function(factor)
        self.pool_used.labels(pool).set_function(used)
        if tpm is None:
            return
        self.pool_quota.labels(pool).set(tpm)
        self.pool_learned.labels(pool).set_function(lambda: tpm * factor())
        self.pool_utilization.labels(pool).set_function(lambda: used() / max(1.0, tpm * factor()))

    def watch_budget(self, tenant: str, budget: str, limit: int,
                     used: Callable[[], int]) -> None:  # fmt: skip
        """A token budget, or ``monthly_spend_usd`` (``limit`` and ``used`` in micro-dollars)."""
        if budget == "monthly_spend_usd":
            self.spend_budget.labels(tenant).set(limit / 1_000_000)
            self.spend_remaining.labels(tenant).set_function(
                lambda: max(0, limit - used()) / 1_000_000
            )
            return
        self.budget_limit.labels(tenant, budget).set(limit)
        self.budget_remaining.labels(tenant, budget).set_function(lambda: max(0, limit - used()))

    def unwatch_budget(self, tenant: str, budget: str) -> None:
        """Drop a budget's gauges (its tenant was deleted, or the budget lifted)."""
        gauges = ((self.spend_budget, self.spend_remaining) if budget == "monthly_spend_usd"
                  else (self.budget_limit, self.budget_remaining))  # fmt: skip
        labels = (tenant,) if budget == "monthly_spend_usd" else (tenant, budget)
        for gauge in gauges:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
