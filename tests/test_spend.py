"""Spend in dollars and usage per tenant, end to end: real boto3 (both generations) and the
Anthropic SDK → the gateway → the simulator.

Every figure is checked against the usage the simulator reported to the client, priced here
by hand (Decimal, rounded up to the micro-dollar per call), not by the gateway's own price code.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from gateway.auth import hash_key
from gateway.config import parse_config
from tests.conftest import KEY_ID, SECRET, ClientFactory, gateway_settings, start_gateway
from tests.servers import ServerThread
from tests.test_newest_boto3 import calls, python  # noqa: F401  (the newest boto3's venv)

ADMIN = "gwk-admin-spend-0123456789"
INPUT, OUTPUT = Decimal("0.0008"), Decimal("0.004")  # USD per 1,000 tokens (claude-haiku)
MICRO = Decimal("0.000001")


def cost(usage: dict[str, int]) -> Decimal:
    """What a call's reported usage costs, rounded up to the micro-dollar."""
    usd = (usage["inputTokens"] * INPUT + usage["outputTokens"] * OUTPUT) / 1000
    return usd.quantize(MICRO, rounding=ROUND_CEILING)


def _settings(simulator: ServerThread, spend_usd: float | None) -> dict[str, Any]:
    settings = gateway_settings(simulator.url)
    settings["models"]["claude-haiku"]["price"] = {"input": float(INPUT), "output": float(OUTPUT)}
    settings["admin"] = {"key_sha256": [hash_key(ADMIN)]}
    if spend_usd is not None:
        settings["tenants"]["team-a"]["monthly_spend_usd"] = spend_usd
    return settings


@pytest.fixture
def priced(simulator: ServerThread) -> Iterator[ServerThread]:
    server = start_gateway(parse_config(_settings(simulator, None)))
    yield server
    server.stop()


def _usage(server: ServerThread, tenant: str = "team-a") -> dict[str, Any]:
    reply = httpx.get(f"{server.url}/admin/tenants/{tenant}/usage",
                      headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


def _converse(client: Any, output_tokens: int, max_tokens: int = 100) -> dict[str, Any]:
    text = f"what does this cost [sim:output_tokens={output_tokens}]"
    reply: dict[str, Any] = client.converse(
        modelId="claude-haiku", messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"maxTokens": max_tokens},
    )  # fmt: skip
    return reply


def test_spend_is_the_price_table_applied_to_the_reported_usage(
    priced: ServerThread, make_client: ClientFactory
) -> None:
    client = make_client(priced.url)
    usages = [_converse(client, n)["usage"] for n in (5, 40, 77)]
    stream = client.converse_stream(
        modelId="claude-haiku", inferenceConfig={"maxTokens": 100},
        messages=[{"role": "user", "content": [{"text": "stream it [sim:output_tokens=33]"}]}],
    )  # fmt: skip
    usages += [e["metadata"]["usage"] for e in stream["stream"] if "metadata" in e]
    assert len(usages) == 4
    spent = sum((cost(u) for u in usages), Decimal(0))

    usage = _usage(priced)
    for period in ("minute", "day", "month"):
        counts = usage["periods"][period]
        assert Decimal(str(counts["spend_usd"])) == spent
        assert counts["requests"] == 4
        assert counts["input_tokens"] == sum(u["inputTokens"] for u in usages)
        assert counts["output_tokens"] == sum(u["outputTokens"] for u in usages)
        assert counts["quota_tokens"] == counts["input_tokens"] + counts["output_tokens"]
    assert usage["models"]["claude-haiku"]["month"] == usage["periods"]["month"]
    metric = re.search(r'^gateway_spend_usd_total\{model="claude-haiku",tenant="team-a"\} (\S+)$',
                       httpx.get(f"{priced.url}/metrics").text, re.M)  # fmt: skip
    assert metric is not None
    assert float(metric.group(1)) == pytest.approx(float(spent), abs=1e-9)
    now = dt.datetime.now(dt.UTC)
    month = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC).timestamp()
    assert usage["periods"]["month"]["start"] == month
    assert usage["budgets"] == []  # team-a has no budget in this config

    # An unpriced model costs nothing but is counted all the same.
    hello = [{"role": "user", "content": [{"text": "hi [sim:output_tokens=3]"}]}]
    client.converse(modelId="claude-sonnet", inferenceConfig={"maxTokens": 10}, messages=hello)
    sonnet = _usage(priced)["models"]["claude-sonnet"]["day"]
    assert (sonnet["requests"], sonnet["output_tokens"], sonnet["spend_usd"]) == (1, 3, 0)


def test_a_tenant_cannot_read_usage_and_an_unknown_tenant_is_404(priced: ServerThread) -> None:
    from tests.conftest import BEARER

    refused = httpx.get(f"{priced.url}/admin/tenants/team-a/usage",
                        headers={"authorization": f"Bearer {BEARER}"})  # fmt: skip
    assert refused.status_code == 403
    assert "team-a" not in refused.text
    missing = httpx.get(f"{priced.url}/admin/tenants/nobody/usage",
                        headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert missing.status_code == 404
    assert missing.json()["field"] == "tenant_id"
    listed = httpx.get(f"{priced.url}/admin/usage", headers={"authorization": f"Bearer {ADMIN}"})
    assert [t["tenant"] for t in listed.json()["tenants"]] == ["team-a", "team-b"]


def _budget_exhausted_count(server: ServerThread) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.findall(r'^gateway_requests_total\{[^}]*outcome="budget_exhausted"[^}]*\} (\S+)$',
                       text, re.M)  # fmt: skip
    return sum(float(v) for v in found)


@pytest.fixture
def small_budget(simulator: ServerThread) -> Iterator[ServerThread]:
    """team-a may spend $0.0003 a month: three calls of 20 output tokens ($0.00008 each plus
    their input) fit, a fourth does not."""
    server = start_gateway(parse_config(_settings(simulator, 0.0003)))
    yield server
    server.stop()


def test_a_spent_budget_is_a_final_error_that_names_it_for_every_sdk(
    small_budget: ServerThread,
    python: Path,  # noqa: F811
) -> None:
    # the newest boto3 (standard retries, honours retry hints): 3 calls fit, the 4th is refused
    # once, not retried
    newest = calls(python, small_budget.url, 5, key_id=KEY_ID, secret=SECRET)["calls"]
    assert [c.get("error") for c in newest] == [None, None, None] + [
        "ServiceQuotaExceededException"] * 2  # fmt: skip
    assert [c["retries"] for c in newest] == [0] * 5
    assert _budget_exhausted_count(small_budget) == 2

    # botocore 1.40 in standard mode, 3 attempts: one attempt all the same
    older = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=small_budget.url,
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )  # fmt: skip
    with pytest.raises(older.exceptions.ServiceQuotaExceededException) as spent:
        _converse(older, 20, max_tokens=20)
    meta = spent.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], meta["RetryAttempts"]) == (400, 0)
    assert meta["HTTPHeaders"]["x-should-retry"] == "false"
    message = spent.value.response["Error"]["Message"]
    first_of_next_month = _next_month_start()
    assert message.startswith("The monthly spend budget of tenant 'team-a' ($0.0003) has no "
                              "room for this request: $0.000")  # fmt: skip
    assert f"it resets at {first_of_next_month}" in message
    assert int(meta["HTTPHeaders"]["x-gateway-budget-resets-at"]) == int(
        dt.datetime.fromisoformat(first_of_next_month).timestamp())  # fmt: skip
    assert _budget_exhausted_count(small_budget) == 3

    # the Anthropic SDK (2 retries by default): one request reaches the gateway
    from anthropic import AnthropicBedrock, BadRequestError

    sdk = AnthropicBedrock(base_url=small_budget.url, aws_access_key=KEY_ID,
                           aws_secret_key=SECRET, aws_region="us-east-1")  # fmt: skip
    assert sdk.max_retries == 2
    hello: Any = [{"role": "user", "content": "hi [sim:output_tokens=20]"}]
    with pytest.raises(BadRequestError) as anthropic_spent:
        sdk.messages.create(model="claude-haiku", max_tokens=20, messages=hello)
    assert anthropic_spent.value.status_code == 400
    assert _budget_exhausted_count(small_budget) == 4

    # what the usage says: three calls served and priced, four refusals, the budget's state
    usage = _usage(small_budget)
    month = usage["periods"]["month"]
    assert month["requests"] == 3
    spent_usd = Decimal(str(month["spend_usd"]))
    assert Decimal("0.00024") < spent_usd <= Decimal("0.0003")
    (budget,) = usage["budgets"]
    assert budget["name"] == "monthly_spend_usd"
    assert budget["limit"] == 0.0003
    assert Decimal(str(budget["used"])) == spent_usd  # settled: nothing held in flight
    deadline = time.monotonic() + 5
    while usage["periods"]["month"]["throttled"] < 4:  # refusals are written within ~1 s
        assert time.monotonic() < deadline, usage["periods"]["month"]
        time.sleep(0.1)
        usage = _usage(small_budget)
    assert usage["periods"]["month"]["throttled"] == 4


def _next_month_start() -> str:
    now = dt.datetime.now(dt.UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
