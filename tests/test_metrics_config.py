"""How /metrics is served (scrape token, its own port, tenant labels off), the gauges read off
the request path, and readiness that reports the upstream without flapping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from gateway.catalog import Route
from gateway.config import parse_config
from gateway.errors import BudgetExhausted, Throttled
from gateway.metrics import Metrics
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig
from gateway.upstream.health import UpstreamHealth
from tests.conftest import HAIKU, SONNET, ClientFactory, start_gateway
from tests.servers import ServerThread, free_port
from tests.test_metrics_e2e import converse, scrape, settings, value

TOKEN = "scrape-token-0123456789"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    app = create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0}))
    with ServerThread(app) as server:
        yield server


def gateway_with(upstream: str, **extra: Any) -> ServerThread:
    return start_gateway(parse_config(settings(upstream, **extra)))


def test_a_scrape_token_guards_metrics(upstream: ServerThread) -> None:
    gateway = gateway_with(upstream.url, metrics={"token_sha256": hash_key(TOKEN)})
    try:
        assert httpx.get(f"{gateway.url}/metrics").status_code == 401
        wrong = {"authorization": "Bearer not-the-token"}
        assert httpx.get(f"{gateway.url}/metrics", headers=wrong).status_code == 401
        assert scrape(gateway.url, authorization=f"Bearer {TOKEN}")
    finally:
        gateway.stop()


def test_metrics_on_a_port_of_their_own(upstream: ServerThread) -> None:
    port = free_port()
    gateway = gateway_with(upstream.url, metrics={"port": port})
    try:
        assert httpx.get(f"{gateway.url}/metrics").status_code == 404
        assert value(scrape(f"http://127.0.0.1:{port}"), "gateway_limiter_degraded") == 0
    finally:
        gateway.stop()
    with pytest.raises(httpx.ConnectError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics")


def test_tenant_labels_can_be_turned_off(
    upstream: ServerThread, make_client: ClientFactory
) -> None:
    gateway = gateway_with(upstream.url, metrics={"tenant_labels": False})
    try:
        converse(make_client(gateway.url), "claude-haiku")
        samples = scrape(gateway.url)
        assert value(samples, "gateway_requests_total", tenant="", model="claude-haiku",
                     route=f"test/us-west-2/{HAIKU}", operation="Converse",
                     outcome="success") == 1  # fmt: skip
        assert not any(dict(labels).get("tenant") for _, labels in samples)
    finally:
        gateway.stop()


def test_pool_and_budget_gauges_are_refreshed_in_the_background(
    upstream: ServerThread, make_client: ClientFactory
) -> None:
    config = settings(upstream.url, metrics={"refresh_s": 1})
    config["models"]["claude-haiku"]["routes"][0]["tpm"] = 100_000
    config["tenants"]["team-a"]["tokens_per_day"] = 1_000_000
    gateway = start_gateway(parse_config(config))
    pool = f"test/us-west-2/on-demand/{HAIKU}"
    try:
        converse(make_client(gateway.url), "claude-haiku")
        deadline = time.monotonic() + 5
        while not value(samples := scrape(gateway.url), "gateway_pool_used_tokens", pool=pool):
            assert time.monotonic() < deadline, "the usage was never refreshed"
            time.sleep(0.1)
        used = value(samples, "gateway_pool_used_tokens", pool=pool)
        assert value(samples, "gateway_pool_quota_tokens_per_minute", pool=pool) == 100_000
        assert value(samples, "gateway_pool_learned_quota_tokens_per_minute", pool=pool) == 100_000
        assert value(samples, "gateway_pool_utilization_ratio", pool=pool) == used / 100_000
        budget = {"tenant": "team-a", "budget": "tokens_per_day"}
        assert value(samples, "gateway_tenant_budget_tokens", **budget) == 1_000_000
        remaining = value(samples, "gateway_tenant_budget_remaining_tokens", **budget)
        assert 0 < remaining < 1_000_000
    finally:
        gateway.stop()


def _eventually(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 5
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)  # polling the real server's background refresh
    return found


def test_a_tenant_made_at_runtime_gets_its_budget_gauges_and_loses_them_when_deleted(
    upstream: ServerThread,
) -> None:
    admin_key = "gwk-admin-metrics-runtime-0123456789"
    config = settings(upstream.url, metrics={"refresh_s": 1},
                      admin={"key_sha256": hash_key(admin_key)})  # fmt: skip
    gateway = start_gateway(parse_config(config))
    admin = httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {admin_key}"})
    budget = {"tenant": "made-later", "budget": "tokens_per_day"}
    try:
        created = admin.post("/admin/tenants", json={"id": "made-later", "tokens_per_day": 5000,
                                                     "monthly_spend_usd": 2.5})  # fmt: skip
        assert created.status_code == 201, created.text

        def new_gauges() -> Any:
            samples = scrape(gateway.url)
            return samples if value(samples, "gateway_tenant_budget_tokens", **budget) else None

        samples = _eventually(new_gauges, "no gauge for the new tenant")
        assert value(samples, "gateway_tenant_budget_remaining_tokens", **budget) == 5000
        assert value(samples, "gateway_tenant_spend_budget_usd", tenant="made-later") == 2.5
        page = admin.get("/dashboard/data").json()
        assert any(t["tenant"] == "made-later" for t in page["tenants"])
        assert admin.patch("/admin/tenants/made-later", json={"tokens_per_day": 7000}).is_success
        _eventually(lambda: value(scrape(gateway.url), "gateway_tenant_budget_tokens",
                                  **budget) == 7000, "the changed budget never showed")  # fmt: skip
        assert admin.delete("/admin/tenants/made-later").status_code == 204
        _eventually(lambda: "made-later" not in httpx.get(f"{gateway.url}/metrics").text,
                    "the deleted tenant's gauges stayed")  # fmt: skip
    finally:
        admin.close()
        gateway.stop()


def test_readiness_reports_an_unreachable_upstream_after_failures_in_a_row(
    make_client: ClientFactory,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = settings(dead)
    config["upstream"]["max_attempts"] = 1
    gateway = start_gateway(parse_config(config))
    client = make_client(gateway.url)
    route = f"test/us-east-1/{SONNET}"
    try:  # (a readiness check before any call would probe it: one failure already)
        for failures in (1, 2):
            with pytest.raises(client.exceptions.ServiceUnavailableException):
                converse(client, "claude-sonnet")
            ready = httpx.get(f"{gateway.url}/health/ready")  # not after one or two failures
            assert (ready.status_code, ready.json()["components"]["upstream"]) == (200, "ok")
            assert value(scrape(gateway.url), "gateway_upstream_errors_total", route=route,
                         error="connect") == failures  # fmt: skip
        with pytest.raises(client.exceptions.ServiceUnavailableException):
            converse(client, "claude-sonnet")
        ready = httpx.get(f"{gateway.url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["components"]["upstream"].startswith("unreachable: 1 of 1")
        assert value(scrape(gateway.url), "gateway_requests_total", tenant="team-a",
                     model="claude-sonnet", route=route, operation="Converse",
                     outcome="unavailable") == 3  # fmt: skip
    finally:
        gateway.stop()


def _route(region: str) -> Route:
    return Route("a", region, "m", "on-demand", "m", None, None, None, None)


async def test_upstream_health_counts_failures_in_a_row_and_probes_when_idle() -> None:
    now = [0.0]
    probes: list[tuple[str, int]] = []
    answers = [True]

    async def probe(host: str, port: int, limit_s: float) -> bool:
        probes.append((host, port))
        return answers[0]

    endpoints = {("a", "us-east-1"): "https://one.example",
                 ("a", "eu-west-1"): "http://two.example:9000"}  # fmt: skip
    health = UpstreamHealth(endpoints, probe=probe, clock=lambda: now[0])
    assert await health.state() == "ok"  # never seen: both probed
    assert sorted(probes) == [("one.example", 443), ("two.example", 9000)]
    east, west = _route("us-east-1"), _route("eu-west-1")
    for _ in range(2):
        health.upstream_failed(east, "connect")
    assert await health.state() == "ok"
    health.upstream_failed(east, "connection")  # broke mid-call: Bedrock was reached
    health.upstream_failed(east, "timeout")
    assert (await health.state()).startswith("degraded: 1 of 2")
    health.upstream_answered(east, 503, 0.1)  # any answer: reachable
    assert await health.state() == "ok"
    for _ in range(3):
        health.upstream_failed(east, "connect")
        health.upstream_failed(west, "connect")
    assert (await health.state()).startswith("unreachable: 2 of 2")
    probes.clear()
    answers[0] = False
    now[0] = 31.0  # idle for longer than probe_after_s: a probe counts like a call
    assert (await health.state()).startswith("unreachable")
    assert len(probes) == 2
    answers[0] = True
    now[0] = 62.0
    assert await health.state() == "ok"  # one good probe: reachable again


def test_a_refusal_is_labelled_by_what_refused_it_never_by_raw_text() -> None:
    metrics = Metrics()
    metrics.watch_pool("x/us-east-1/on-demand/m", 1000, lambda: 1.0, lambda: 0)
    known = Throttled("no room", 500, limit="tpm", pool="x/us-east-1/on-demand/m",
                      reason="hopeless")  # fmt: skip
    stray = Throttled("no room", 500, limit="made-up", pool="not/a/pool", reason="queue_timeout")
    budget = BudgetExhausted("spent", 0, limit="monthly_spend_usd")
    for error in (known, stray, budget):
        metrics.refused("team", "m", "interactive", error)

    def count(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    throttles = "gateway_throttles_total"
    assert count(throttles, tenant="team", model="m", limit="tpm",
                 pool="x/us-east-1/on-demand/m") == 1  # fmt: skip
    assert count(throttles, tenant="team", model="m", limit="other", pool="other") == 1
    assert count(throttles, tenant="team", model="m", limit="monthly_spend_usd", pool="") == 1
    refusals = "gateway_queue_refusals_total"
    assert count(refusals, model="m", pool="x/us-east-1/on-demand/m", priority="interactive",
                 reason="hopeless") == 1  # fmt: skip
    assert count(refusals, model="m", pool="", priority="interactive",
                 reason="budget_exhausted") == 1  # fmt: skip
