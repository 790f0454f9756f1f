"""The quota-increase report, against figures computed by hand.

First the arithmetic, with an injected clock: calls recorded through the ledger's tallies into
the memory store over two weeks, and the report of them checked figure by figure. Then a
recorded load through a real gateway on Redis and the simulator (successes, a call over 25,000
input tokens, a stream, one upstream 429 retried elsewhere, local refusals), and
``bedrock-gateway quota-report`` as a shell runs it, against what the responses themselves
reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import quota_report
from gateway.auth import hash_key
from gateway.config import UsageConfig, parse_config
from gateway.cost import Usage
from gateway.limiter.ledger import Ledger
from gateway.limiter.memory import MemoryStore
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig
from tests.conftest import ClientFactory, start_gateway
from tests.servers import RedisServer, ServerThread
from tests.test_metrics_e2e import HAIKU_ROUTE, ON_DEMAND, OPUS_ROUTE, PROFILE, converse, settings

HOUR_MS, MINUTE_MS, DAY_MS = 3_600_000, 60_000, 86_400_000
NOW_MS = 1_796_000_000 // 3600 * HOUR_MS + 30 * MINUTE_MS  # half past an hour
EAST, WEST = "acct/us-east-1/model-x", "acct/us-west-2/model-x"


def _at(hours_ago: float, minute: int) -> int:
    """ms: ``minute`` past the hour ``hours_ago`` hours before NOW_MS's."""
    return int((NOW_MS // HOUR_MS - hours_ago) * HOUR_MS) + minute * MINUTE_MS


def _recorded() -> tuple[Ledger, MemoryStore]:
    ledger, store = Ledger("t", UsageConfig()), MemoryStore(lambda: NOW_MS)
    served = [  # (when, route, usage or None (outcome unknown), quota tokens)
        (_at(0, 5), EAST, Usage(1000, 200), 2000),
        (_at(0, 5), EAST, Usage(20_000, 100, cache_read_tokens=10_000), 30_500),
        (_at(0, 5), EAST, Usage(500, 50), 750),
        (_at(0, 10), EAST, Usage(26_000, 0), 26_000),
        (_at(0, 10), EAST, None, 5000),
        (_at(1, 59), EAST, Usage(100, 10), 150),
        (_at(30, 0), EAST, Usage(600, 50), 850),
        (_at(9 * 24, 0), EAST, Usage(400, 20), 500),  # before the report; the week before
        (_at(0, 5), WEST, Usage(700, 70), 1050),
    ]
    for when, route, usage, quota in served:
        tally = ledger.settled("team", "m", route, when, usage, quota, 0)
        assert tally is not None
        store.add_tally_now(tally, when)
    throttled = ledger.settled("team", "m", EAST, _at(0, 5), None, 0, 0, upstream_throttled=True)
    assert throttled is not None
    store.add_tally_now(throttled, _at(0, 5))
    for _ in range(2):
        store.add_tally_now(ledger.refused("team", "m", _at(0, 6)), _at(0, 6))
    return ledger, store


def _report(days: int) -> quota_report.Report:
    ledger, store = _recorded()
    pools = [("m", EAST), ("m", WEST)]
    hours = list(quota_report.needed_hours(NOW_MS / 1000, days))
    wanted = [(m, r, h) for m, r in [*pools, ("m", "")] for h in hours]
    found = asyncio.run(store.tallies([ledger.report_key(*w) for w in wanted]))
    table = dict(zip(wanted, found, strict=True))
    return quota_report.build(pools, lambda m, r, h: table[(m, r, h)], NOW_MS / 1000, days)


def test_the_figures_are_those_computed_by_hand() -> None:
    report = _report(days=7)
    east, west = report.pools
    assert (east.model, east.route, west.route) == ("m", EAST, WEST)
    # active minutes of the east pool: :05 (3 calls), :10 (2), an hour ago (1), 30 h ago (1);
    # the call 9 days ago is outside the 7 days
    assert east.requests == 7
    assert east.active_minutes == 4
    # RPM [3, 2, 1, 1] -> sorted [1, 1, 2, 3]: nearest rank p50 = 2nd = 1, p90 = 4th = 3
    assert (east.rpm_p50, east.rpm_p90, east.rpm_max) == (1, 3, 3)
    # TPM [33,250, 31,000, 150, 850] -> sorted [150, 850, 31,000, 33,250]
    assert (east.tpm_p50, east.tpm_p90, east.tpm_max) == (850, 33_250, 33_250)
    assert east.quota_tokens == 33_250 + 31_000 + 150 + 850
    # 6 calls reported a usage (the one with an unknown outcome did not); true input counts the
    # cache: 1,000 + 30,000 + 500 + 26,000 + 100 + 600 = 58,200
    assert east.avg_input_tokens == 9700.0
    assert east.avg_output_tokens == round((200 + 100 + 50 + 0 + 10 + 50) / 6, 1)
    assert east.over_25k_share == round(2 / 6, 4)  # 30,000 (with its cache) and 26,000
    assert (east.upstream_throttled, east.upstream_throttled_share) == (1, 1 / 8)
    # the model's refusals: 2 of 2 + 8 calls served (7 east, 1 west)
    assert east.local_throttled_share == west.local_throttled_share == 0.2
    # quota tokens in the last 168 whole hours (150 + 850) against the 168 before (500)
    assert east.growth_wow == 1.0
    assert west.growth_wow is None  # nothing the week before
    assert (west.requests, west.rpm_p50, west.tpm_p90, west.upstream_throttled_share) == (
        1, 1, 1050, 0.0)  # fmt: skip
    hours = {int(h.start * 1000): h for h in report.hours}
    assert len(hours) == 7 * 24
    now = hours[_at(0, 0)]
    assert (now.served, now.throttled_local, now.throttled_upstream) == (3 + 2 + 1, 2, 1)
    assert hours[_at(1, 0)].served == hours[_at(30, 0)].served == 1
    assert sum(h.served for h in report.hours) == 8
    assert report.start == _at(7 * 24 - 1, 0) / 1000
    assert report.end == NOW_MS / 1000


def test_a_shorter_report_keeps_its_week_over_week() -> None:
    report = _report(days=1)
    east = report.pools[0]
    assert (east.requests, east.active_minutes) == (6, 3)  # 30 h ago is outside the day
    assert east.growth_wow == 1.0
    assert len(report.hours) == 24


def test_an_idle_pool_has_no_averages_and_renders() -> None:
    report = quota_report.build([("m", EAST)], lambda m, r, h: {}, NOW_MS / 1000, 7)
    (idle,) = report.pools
    assert (idle.requests, idle.tpm_p90, idle.avg_input_tokens, idle.over_25k_share) == (
        0, 0, None, None)  # fmt: skip
    assert (idle.upstream_throttled_share, idle.local_throttled_share, idle.growth_wow) == (
        None, None, None)  # fmt: skip
    data = json.loads(json.dumps(report.to_json()))
    assert f"| m | `{EAST}` | 0 | 0 |" in quota_report.markdown(data)
    assert quota_report.svg(data).startswith("<svg")


def test_markdown_and_svg_show_the_figures() -> None:
    data = json.loads(json.dumps(_report(days=7).to_json()))
    text = quota_report.markdown(data)
    row = next(line for line in text.splitlines() if EAST in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["m", f"`{EAST}`", "7", "4", "850", "33,250", "33,250", "1", "3", "3",
                     "9,700.0", "68.3", "33.3 %", "12.5 %", "20.0 %", "100.0 %"]  # fmt: skip
    assert "Calls served 8, refused by the gateway 2, throttled by Bedrock 1." in text
    chart = quota_report.svg(data)
    assert chart.count("<polyline") == 2
    assert "served 8" in chart
    assert "throttled 3" in chart


# ---------------------------------------------------------------- a recorded load

ADMIN_KEY = "gwk-admin-quota-report-0123456789"
EXE = os.path.join(os.path.dirname(sys.executable), "bedrock-gateway")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    """A simulator of its own: nothing another test sent counts in its quotas."""
    app = create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0}))
    with ServerThread(app) as server:
        yield server


def _usage(reply: dict[str, Any]) -> tuple[int, int]:
    return reply["usage"]["inputTokens"], reply["usage"]["outputTokens"]


def _refusals_written(url: str) -> None:
    """Refusals are gathered and written in the background (at most REFUSALS_FLUSH_S late)."""
    deadline = time.monotonic() + 10
    while True:
        reply = httpx.get(f"{url}/admin/quota-report", params={"days": 1},
                          headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        if sum(h["throttled_local"] for h in reply.json()["hours"]) >= 2:
            return
        assert time.monotonic() < deadline, reply.json()
        time.sleep(0.05)


def test_the_report_of_a_recorded_load(
    upstream: ServerThread, redis_server: RedisServer, make_client: ClientFactory,
    tmp_path: Any,
) -> None:  # fmt: skip
    # Keys of its own: Redis is the session's, and a gateway of another test still running on
    # the default prefix would restore its own tenants (other budgets) into a flushed store.
    limiter = {"backend": "redis", "redis_url": redis_server.url,
               "key_prefix": "report" + os.urandom(3).hex()}  # fmt: skip
    config = settings(upstream.url, limiter=limiter, admin={"key_sha256": hash_key(ADMIN_KEY)})
    gateway = start_gateway(parse_config(config))
    try:
        if time.time() % 60 > 45:  # the load takes a few seconds: keep it in one minute
            time.sleep(61 - time.time() % 60)
        client = make_client(gateway.url)
        on_demand = [_usage(converse(client, "claude-sonnet", f"Hi {i} [sim:output_tokens=10]"))
                     for i in range(2)]  # fmt: skip
        on_demand.append(_usage(converse(client, "claude-sonnet", "long " * 26_000)))
        stream = client.converse_stream(
            modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "Go"}]}],
            inferenceConfig={"maxTokens": 50},
        )  # fmt: skip
        events = list(stream["stream"])
        meta = next(e["metadata"]["usage"] for e in events if "metadata" in e)
        on_demand.append((meta["inputTokens"], meta["outputTokens"]))
        # Bedrock throttles the first attempt on demand; the retry is served by the profile
        retried = converse(client, "claude-sonnet", "Once [sim:status=429][sim:fail_times=1]")
        profile = [_usage(retried)]
        haiku = [_usage(converse(client, "claude-haiku")) for _ in range(2)]  # rpm 2...
        for _ in range(2):  # ...so these are refused by the gateway at once
            with pytest.raises(client.exceptions.ThrottlingException):
                converse(client, "claude-haiku", wait_ms=0)
        _refusals_written(gateway.url)
        svg = tmp_path / "hours.svg"
        environ = {**os.environ, "BEDROCK_GATEWAY_URL": gateway.url,
                   "BEDROCK_GATEWAY_ADMIN_KEY": ADMIN_KEY}  # fmt: skip
        ran = subprocess.run([EXE, "quota-report", "--days", "2", "--json", "--svg", str(svg)],
                             env=environ, capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        markdown = subprocess.run([EXE, "quota-report"], env=environ, capture_output=True,
                                  text=True, timeout=60, check=True).stdout  # fmt: skip
    finally:
        gateway.stop()
    report = json.loads(ran.stdout)
    pools = {(p["model"], p["route"]): p for p in report["pools"]}

    def check(pool: dict[str, Any], calls: list[tuple[int, int]], burndown: int) -> None:
        quota = sum(i + o * burndown for i, o in calls)  # input + output x burndown, by hand
        assert pool["requests"] == pool["rpm_p50"] == pool["rpm_p90"] == len(calls)
        assert pool["active_minutes"] == 1
        assert pool["tpm_p50"] == pool["tpm_p90"] == pool["quota_tokens"] == quota
        assert pool["avg_input_tokens"] == round(sum(i for i, _ in calls) / len(calls), 1)
        assert pool["avg_output_tokens"] == round(sum(o for _, o in calls) / len(calls), 1)
        assert pool["over_25k_share"] == round(
            sum(1 for i, _ in calls if i >= 25_000) / len(calls), 4)  # fmt: skip

    assert any(i >= 25_000 for i, _ in on_demand)  # the long call is over 25k as Bedrock counts
    check(pools[("claude-sonnet", ON_DEMAND)], on_demand, burndown=5)
    check(pools[("claude-sonnet", PROFILE)], profile, burndown=5)
    check(pools[("claude-haiku", HAIKU_ROUTE)], haiku, burndown=1)
    sonnet = pools[("claude-sonnet", ON_DEMAND)]
    assert (sonnet["upstream_throttled"], sonnet["upstream_throttled_share"]) == (1, 0.2)
    assert sonnet["local_throttled_share"] == 0.0
    assert pools[("claude-haiku", HAIKU_ROUTE)]["local_throttled_share"] == 0.5  # 2 of 4
    assert pools[("claude-opus", OPUS_ROUTE)]["requests"] == 0
    assert sum(h["served"] for h in report["hours"]) == 7
    assert sum(h["throttled_local"] for h in report["hours"]) == 2
    assert sum(h["throttled_upstream"] for h in report["hours"]) == 1
    assert len(report["hours"]) == 48
    assert report["days"] == 2
    assert svg.read_text().count("<polyline") == 2
    assert f"| claude-haiku | `{HAIKU_ROUTE}` | 2 | 1 |" in markdown
