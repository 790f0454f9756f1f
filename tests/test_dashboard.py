"""The status page without a browser: who may open it, what its cookie is, what the JSON it
polls counts, and how its history keeps a minute per point. The browser test is
tests/test_dashboard_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from gateway.catalog import Catalog
from gateway.config import parse_config
from gateway.errors import Throttled
from gateway.limiter.adaptive import Aimd
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.memory import MemoryStore
from gateway.limiter.store import Direct
from gateway.metrics import Metrics
from gateway.statuspage.history import BudgetWatch, PoolWatch, StatusHistory
from tests.conftest import BEARER, SECRET, SONNET, gateway_settings, start_gateway
from tests.servers import ServerThread

ADMIN_KEY = "gwa-status-page-admin-key-0123456789"
POOL = f"test/us-east-1/on-demand/{SONNET}"
ROUTE = f"test/us-east-1/{SONNET}"
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture(scope="module")
def gateway(simulator: ServerThread) -> Iterator[ServerThread]:
    settings = gateway_settings(simulator.url)
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)]}
    settings["tenants"]["team-a"]["tokens_per_day"] = 1_000_000
    settings["tenants"]["team-a"]["monthly_spend_usd"] = 25
    settings["metrics"] = {"tenant_labels": False}  # budgets are on the page all the same
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


def log_in(url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/dashboard/login", data={"key": key}, headers=headers)


def test_without_a_key_the_page_is_a_login_form(gateway: ServerThread) -> None:
    reply = httpx.get(f"{gateway.url}/dashboard")
    assert reply.status_code == 200
    assert 'name="key"' in reply.text
    assert "dashboard.js" not in reply.text  # no script, no data
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert reply.headers["cache-control"] == "no-store"
    data = httpx.get(f"{gateway.url}/dashboard/data")
    assert data.status_code == 401
    assert data.json()["type"] == "UnrecognizedClientException"


@pytest.mark.parametrize("key", [BEARER, SECRET, "not-a-key-at-all"])
def test_a_tenant_key_opens_nothing(gateway: ServerThread, key: str) -> None:
    refused = log_in(gateway.url, key)
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
    assert "That is not an admin key." in refused.text
    page = httpx.get(f"{gateway.url}/dashboard", cookies={"bgw_admin": key})
    assert page.status_code == 403
    assert "dashboard.js" not in page.text
    assert "bgw_admin=" in page.headers["set-cookie"]  # the bad cookie is cleared
    data = httpx.get(f"{gateway.url}/dashboard/data", headers={"authorization": f"Bearer {key}"})
    assert data.status_code == 403
    assert data.json()["type"] == "AccessDeniedException"
    assert httpx.get(f"{gateway.url}/dashboard/data", cookies={"bgw_admin": key}).status_code == 403


def test_the_admin_key_is_kept_in_a_strict_httponly_cookie(gateway: ServerThread) -> None:
    reply = log_in(gateway.url, ADMIN_KEY)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/dashboard"
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"bgw_admin={ADMIN_KEY};")
    for part in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
        assert part in cookie
    assert "Secure" not in cookie  # plain HTTP here...
    behind_tls = log_in(gateway.url, ADMIN_KEY, **{"x-forwarded-proto": "https"})
    assert "Secure" in behind_tls.headers["set-cookie"]  # ...Secure behind a TLS proxy

    with httpx.Client(base_url=gateway.url, cookies={"bgw_admin": ADMIN_KEY}) as browser:
        page = browser.get("/dashboard")
        assert page.status_code == 200
        assert "/dashboard/static/dashboard.js" in page.text
        assert browser.get("/dashboard/data").status_code == 200
        out = browser.post("/dashboard/logout")
        assert out.status_code == 303
        assert 'bgw_admin=""' in out.headers["set-cookie"]


def test_assets_come_from_the_package(gateway: ServerThread) -> None:
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):  # fmt: skip
        reply = httpx.get(f"{gateway.url}/dashboard/static/{name}")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith(kind)
    script = httpx.get(f"{gateway.url}/dashboard/static/dashboard.js").text
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "https://" not in script
    assert httpx.get(f"{gateway.url}/dashboard/static/../app.py").status_code == 404
    assert httpx.get(f"{gateway.url}/dashboard/static/history.py").status_code == 404


def test_the_data_counts_this_replicas_requests(gateway: ServerThread, client: Any) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    before = httpx.get(f"{gateway.url}/dashboard/data", headers=admin).json()
    for _ in range(3):
        client.converse(modelId="claude-sonnet",
                        messages=[{"role": "user", "content": [{"text": "Hi"}]}])  # fmt: skip
    data = httpx.get(f"{gateway.url}/dashboard/data", headers=admin).json()
    (pool,) = [p for p in data["pools"] if p["pool"] == POOL]
    (earlier,) = [p for p in before["pools"] if p["pool"] == POOL]
    assert pool["totals"]["admitted"] - earlier["totals"]["admitted"] == 3
    assert pool["routes"] == [ROUTE]
    assert pool["models"] == ["claude-sonnet"]
    assert data["history"]["pools"][POOL]["admitted"][-1] == pool["last_minute"]["admitted"]
    assert data["requests"]["success"] >= 3
    tokens, spend = data["tenants"]  # tenant_labels off: not exported, but on the page
    assert (tokens["tenant"], tokens["budget"], tokens["unit"], tokens["limit"]) == (
        "team-a", "tokens_per_day", "tokens", 1_000_000)  # fmt: skip
    assert (spend["tenant"], spend["budget"], spend["unit"], spend["limit"]) == (
        "team-a", "monthly_spend_usd", "usd", 25.0)  # fmt: skip
    assert data["store"]["backend"] == "memory"
    assert data["store"]["state"].startswith("ok")
    assert "gateway_tenant_budget_tokens{" not in httpx.get(f"{gateway.url}/metrics").text


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def history(clock: Clock, keep_s: float = 120.0) -> tuple[StatusHistory, Metrics, list[int]]:
    config = parse_config(gateway_settings("http://127.0.0.1:9"))
    catalog = Catalog(config.models)
    metrics = Metrics()
    metrics.pools = frozenset({POOL})
    used = [0]
    pools = tuple(
        PoolWatch(name, f"{{bgw}}:pool:{name}", tpm, lambda: 0.5, lambda: used[0])
        for name, tpm in ((POOL, 1000), (f"test/us-east-1/geo/{SONNET}", None),
                          (f"test/us-west-2/on-demand/{HAIKU}", None))
    )  # fmt: skip
    budgets = (BudgetWatch("team-a", "tokens_per_day", 100, lambda: used[0]),)
    learned = LearnedQuotas(Aimd(0.7, 0.002, 0.05, 5.0, 0.95, 60.0), None, "k")
    status = StatusHistory(catalog, metrics, pools, lambda: budgets, learned, Direct(MemoryStore()),
                           backend="memory", on_store_failure="local", interval_s=5.0,
                           keep_s=keep_s, wall=clock)  # fmt: skip
    return status, metrics, used


def test_each_point_counts_the_minute_before_it() -> None:
    clock = Clock()
    status, metrics, used = history(clock, keep_s=60.0)
    status.record()  # the origin
    for _ in range(24):  # one admission every 5 s, for two minutes
        clock.now += 5
        metrics.admitted(ROUTE, "team-a")
        status.record()
    metrics.refused("team-a", "claude-sonnet", "interactive",
                    Throttled("Too many requests", 1000, limit="rpm", pool=POOL))  # fmt: skip
    used[0] = 250
    clock.now += 1
    data = status.snapshot()
    (pool, *_) = data["pools"]
    assert pool["totals"] == {"admitted": 24, "queued": 0, "refused": 1, "upstream_throttled": 0}
    assert pool["last_minute"]["admitted"] == 12  # the 12 of the last 60 s, not all 24
    assert pool["learned_tpm"] == 500
    assert pool["utilization"] == 0.5
    counts = data["history"]["pools"][POOL]["admitted"]
    assert counts == [12] * 13  # the last 60 s of samples and now, each with its own minute
    assert data["history"]["pools"][POOL]["utilization"][-1] == 0.5
    assert data["history"]["pools"][POOL]["refused"][-1] == 1
    assert data["tenants"][0]["remaining"] == 0
    assert data["tenants"][0]["ratio"] == 2.5


def test_a_young_process_counts_from_its_start() -> None:
    clock = Clock()
    status, metrics, _ = history(clock)
    status.record()
    clock.now += 5
    metrics.admitted(ROUTE, "team-a")
    metrics.admitted(ROUTE, "team-a")
    status.record()
    clock.now += 2
    data = status.snapshot()
    assert data["history"]["pools"][POOL]["admitted"] == [0, 2, 2]
    assert data["pools"][0]["last_minute"]["admitted"] == 2


def test_the_history_is_bounded() -> None:
    clock = Clock()
    status, metrics, _ = history(clock, keep_s=60.0)
    status.record()
    for _ in range(1000):
        clock.now += 5
        metrics.admitted(ROUTE, "team-a")
        status.record()
    assert len(status._history) <= (60 + 60) / 5 + 2
    clock.now += 1
    counts = status.snapshot()["history"]["pools"][POOL]["admitted"]
    assert counts == [12] * 13  # the origin is long gone: every point shown has its minute
