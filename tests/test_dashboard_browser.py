"""The status page in a real browser: Redis, the simulator and ``bedrock-gateway serve``, a
known load through real boto3, then /dashboard in headless Chromium (Playwright driving
Debian's chromium, put in .venv/bin by scripts/install-chromium).

The load gives each pool numbers it can only have from that load: the sonnet pool admits 8
calls (its rpm) and refuses 2; the opus pool (one call at a time) admits a slow call, one that
queued behind it, and one Bedrock throttled once and the retry answered (4 admissions, 1
queued, 1 upstream 429). The page must show exactly those, in its tiles and as the last point
of its charts, and a tenant's key must not open it. The screenshot goes to the test's tmp
folder, and also to ``$DASHBOARD_SCREENSHOT`` when that is set (docs/img/dashboard.png was
made so).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from tests.conftest import BEARER, ENVIRON, KEY_ID, SECRET, SONNET, ClientFactory
from tests.servers import GatewayProcess, RedisServer, ServerThread

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

ADMIN_KEY = "gwa-dashboard-admin-key-0123456789"
OPUS = "anthropic.claude-opus-4-20250514-v1:0"
SONNET_POOL = f"test/us-east-1/on-demand/{SONNET}"
OPUS_POOL = f"test/us-east-2/on-demand/{OPUS}"
DAY_BUDGET = 2_000_000


def chromium() -> str | None:
    """scripts/install-chromium's wrapper, else a chromium on PATH."""
    local = Path(sys.executable).parent / "chromium"
    if local.exists():
        return str(local)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser_path() -> str:
    path = chromium()
    if path is None:
        pytest.skip(
            "chromium is not installed: scripts/install-chromium (run by scripts/test) could "
            "not unpack Debian's chromium into .venv/bin here (no apt-get/dpkg-deb, or no "
            "package source)"
        )
    return path


def settings(upstream: str, redis_url: str) -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "upstream": {"connect_timeout_s": 2, "read_timeout_s": 10, "retry_base_s": 0.05},
        "queue": {"recheck_s": 0.2, "max_wait_s": 10},
        "limiter": {"backend": "redis", "redis_url": redis_url, "key_prefix": "dash"},
        "metrics": {"refresh_s": 1},
        "accounts": {"test": {"access_key_id_env": "TEST_UPSTREAM_KEY",
                              "secret_access_key_env": "TEST_UPSTREAM_SECRET",
                              "endpoint_url": upstream}},
        "models": {
            "claude-sonnet": {"model_id": SONNET, "routes": [
                {"account": "test", "region": "us-east-1", "tpm": 200_000, "rpm": 8}]},
            "claude-opus": {"model_id": OPUS, "routes": [
                {"account": "test", "region": "us-east-2", "tpm": 100_000,
                 "max_concurrency": 1}]},
        },
        "tenants": {"team-a": {"key_sha256": hash_key(BEARER),
                               "access_keys": [{"id": KEY_ID, "secret_env": "TEST_TENANT_SECRET"}],
                               "tokens_per_day": DAY_BUDGET}},
        "admin": {"key_sha256": [hash_key(ADMIN_KEY)]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    """A simulator of its own: nothing another test sent counts in its quotas."""
    from gateway.simulator.app import create_simulator_app
    from gateway.simulator.config import SimulatorConfig

    app = create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0}))
    with ServerThread(app) as server:
        yield server


def converse(client: Any, model: str, text: str = "Hello", wait_ms: int | None = None) -> Any:
    def header(request: Any, **_: Any) -> None:
        if wait_ms is not None:
            request.headers["x-gateway-max-wait-ms"] = str(wait_ms)

    client.meta.events.register_first("before-sign.bedrock-runtime.Converse", header)
    try:
        return client.converse(
            modelId=model, messages=[{"role": "user", "content": [{"text": text}]}],
            inferenceConfig={"maxTokens": 50},
        )  # fmt: skip
    finally:
        client.meta.events.unregister("before-sign.bedrock-runtime.Converse", header)


def attempts(reply: Any) -> int:
    return int(reply["ResponseMetadata"]["HTTPHeaders"]["x-gateway-attempts"])


def drive(client: Any) -> dict[str, dict[str, int]]:
    """The load; returns what each pool must show, counted from the replies."""
    sonnet = {"admitted": 0, "queued": 0, "refused": 0, "upstream_throttled": 0}
    opus = dict(sonnet)
    for _ in range(8):  # the sonnet pool's 8 requests a minute...
        sonnet["admitted"] += attempts(
            converse(client, "claude-sonnet", "Hi [sim:output_tokens=12]")
        )
    for _ in range(2):  # ...then 2 refused at once: they may not wait
        with pytest.raises(client.exceptions.ThrottlingException):
            converse(client, "claude-sonnet", wait_ms=0)
        sonnet["refused"] += 1

    slow = threading.Thread(target=converse, args=(client, "claude-opus", "[sim:ttft_ms=1500]"))
    slow.start()  # opus takes one call at a time: the next one queues behind this one
    time.sleep(0.5)
    queued = converse(client, "claude-opus", "Behind the slow one")
    slow.join()
    assert int(queued["ResponseMetadata"]["HTTPHeaders"]["x-gateway-queue-ms"]) >= 200
    opus["admitted"] += 1 + attempts(queued)
    opus["queued"] += 1
    # Bedrock throttles the first attempt; the retry (a second admission) is answered
    retried = converse(client, "claude-opus", "Once [sim:status=429][sim:fail_times=1]")
    assert attempts(retried) == 2
    opus["admitted"] += attempts(retried)
    opus["upstream_throttled"] += 1
    return {SONNET_POOL: sonnet, OPUS_POOL: opus}


def test_the_status_page_shows_a_known_load(
    upstream: ServerThread, redis_server: RedisServer, make_client: ClientFactory,
    browser_path: str, tmp_path: Path,
) -> None:  # fmt: skip
    started = time.monotonic()
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    with GatewayProcess(settings(upstream.url, redis_server.url), ENVIRON) as gateway:
        expected = drive(make_client(gateway.url, KEY_ID, SECRET))

        # a tenant's key opens nothing: not as a bearer token, not in the cookie
        for key in (BEARER, SECRET):
            reply = httpx.get(f"{gateway.url}/dashboard/data",
                              headers={"authorization": f"Bearer {key}"})  # fmt: skip
            assert reply.status_code == 403, reply.text
            reply = httpx.get(f"{gateway.url}/dashboard", cookies={"bgw_admin": key})
            assert reply.status_code == 403
            assert "dashboard.js" not in reply.text
        assert httpx.get(f"{gateway.url}/dashboard/data").status_code == 401

        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors = check_page(page, gateway.url, expected, quota_tokens(gateway.url))
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("DASHBOARD_SCREENSHOT"):
                    page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"], full_page=True)
                assert errors == []  # no script error, no CSP violation, no failed asset
            finally:
                browser.close()
    assert time.monotonic() - started < 60


def quota_tokens(url: str) -> dict[str, int]:
    """Quota tokens charged per model, as /metrics counts them: what the pools' rolling
    minute and the tenant's day budget must hold."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, int] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "gateway_tokens_total" and sample.labels["kind"] == "quota":
                model = sample.labels["model"]
                found[model] = found.get(model, 0) + int(sample.value)
    return found


def shown(page: Any, selector: str, text: str) -> None:
    """Wait (polls are 3 s apart) until the element at ``selector`` shows ``text``."""
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.textContent === text",
        arg=[selector, text], timeout=15_000,
    )  # fmt: skip


def check_page(
    page: Any, url: str, expected: dict[str, dict[str, int]], tokens: dict[str, int]
) -> list[str]:
    """Drive the page; returns the script errors and failed loads seen once logged in."""
    page.goto(f"{url}/dashboard")
    assert page.locator("input[name=key]").is_visible()  # the login form, no data
    assert page.locator("[data-pool]").count() == 0

    page.fill("input[name=key]", BEARER)  # a tenant's key is refused
    page.click("button[type=submit]")
    assert page.inner_text("[data-testid=login-error]") == "That is not an admin key."
    assert page.context.cookies() == []

    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/dashboard")
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "bgw_admin", True, "Strict", "/dashboard")  # fmt: skip
    assert page.evaluate("document.cookie") == ""  # the page's script cannot read the key

    # the first poll draws the pools; then every number is the load's
    page.wait_for_selector(f'[data-pool="{SONNET_POOL}"] polyline[data-series="admitted"]')
    for pool, counts in expected.items():
        card = page.locator(f'.pool[data-pool="{pool}"]')
        for kind, count in counts.items():
            assert card.locator(f'[data-stat="{kind}-total"]').inner_text() == str(count)
            assert card.locator(f'[data-stat="{kind}-minute"]').inner_text() == str(count)
            line = card.locator(f'[data-chart="counts"] polyline[data-series="{kind}"]')
            assert line.get_attribute("data-last") == str(count)
            assert int(line.get_attribute("data-points") or 0) >= 2  # origin and now: a line
        utilization = card.locator('[data-chart="utilization"] polyline')
        assert utilization.get_attribute("data-series") == "utilization"

    # pool usage and budgets come from the gauges' refresh (every second here): the quota
    # tokens the load was charged, all of it in the last minute
    assert min(tokens["claude-sonnet"], tokens["claude-opus"]) > 0
    for pool, model in ((SONNET_POOL, "claude-sonnet"), (OPUS_POOL, "claude-opus")):
        shown(page, f'.pool[data-pool="{pool}"] [data-stat="used"]', f"{tokens[model]:,}")
    day = '#tenants tr[data-tenant="team-a"][data-budget="tokens_per_day"]'
    shown(page, f'{day} [data-stat="used"]', f"{sum(tokens.values()):,}")
    # Bedrock's 429 lowered the opus pool's learned quota; the table says so
    learned = page.locator(f'#learned tr[data-pool="{OPUS_POOL}"] [data-stat="factor"]')
    assert float(learned.inner_text()) < 1
    assert page.locator("#store-state").inner_text() == "ok"
    assert page.locator('[data-outcome="success"] b').inner_text() == "11"
    assert page.locator('[data-outcome="throttled"] b').inner_text() == "2"
    return errors
