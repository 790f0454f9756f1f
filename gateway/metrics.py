"""Prometheus metrics. Every metric lives in an injected registry, so tests get a fresh one."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.catalog import Route

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "gateway_requests",
            "Data-plane requests answered, by operation, model, tenant and status code.",
            ["operation", "model", "tenant", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to complete response, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream calls that failed before a response (timeouts, refused connections).",
            ["account", "region", "error"],
            registry=self.registry,
        )

        self.admissions = Counter(
            "gateway_admissions",
            "Requests admitted by the limiter, by route taken and tenant.",
            ["route", "tenant"],
            registry=self.registry,
        )
        self.throttles = Counter(
            "gateway_throttles",
            "Requests the limiter could not admit, by the limit that refused and tenant.",
            ["limit", "tenant"],
            registry=self.registry,
        )
        self.settled_tokens = Counter(
            "gateway_settled_tokens",
            "Quota tokens charged after settlement (input + cache writes + output x burndown).",
            ["route", "tenant"],
            registry=self.registry,
        )
        self.settlement_corrections = Counter(
            "gateway_settlement_correction_tokens",
            "Quota tokens given back (refund) or added (overcharge) at settlement.",
            ["direction"],
            registry=self.registry,
        )
        self.upstream_throttles = Counter(
            "gateway_upstream_throttles",
            "ThrottlingExceptions answered by Bedrock itself (the gateway let too much through).",
            ["route"],
            registry=self.registry,
        )
        self.quota_factor = Gauge(
            "gateway_pool_quota_factor",
            "Fraction of a pool's configured tokens per minute in use after learning from "
            "Bedrock's 429s (1 = the configured quota).",
            ["pool"],
            registry=self.registry,
        )
        self.estimate_factor = Gauge(
            "gateway_estimate_calibration_factor",
            "Factor the input estimate is scaled by: a high quantile of Bedrock's true input "
            "count over the estimate, per configured model and body family.",
            ["model", "family"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests waiting for capacity in this replica, by model.",
            ["model"],
            registry=self.registry,
        )
        self.store_failures = Counter(
            "gateway_limiter_store_failures",
            "Calls to the shared quota store (Redis) that failed, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.store_degraded = Gauge(
            "gateway_limiter_degraded",
            "1 while the shared quota store is unreachable and this replica runs on its fallback.",
            registry=self.registry,
        )

    # ---- the limiter's listener interface -------------------------------------------------

    def admitted(self, route: str, tenant: str) -> None:
        self.admissions.labels(route, tenant).inc()

    def throttled(self, reason: str, tenant: str) -> None:
        self.throttles.labels(reason, tenant).inc()

    def settled(self, route: str, tenant: str, tokens: int, delta: int) -> None:
        self.settled_tokens.labels(route, tenant).inc(tokens)
        if delta:
            self.settlement_corrections.labels("refund" if delta < 0 else "overcharge").inc(
                abs(delta)
            )

    def upstream_throttled(self, route: Route) -> None:
        self.upstream_throttles.labels(route.label).inc()

    def watch_quota(self, pool: str, factor: Callable[[], float]) -> None:
        self.quota_factor.labels(pool).set_function(factor)

    def store_failed(self, operation: str) -> None:
        self.store_failures.labels(operation).inc()

    def degraded(self, on: bool) -> None:
        self.store_degraded.set(1 if on else 0)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
