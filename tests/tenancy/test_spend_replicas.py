"""A monthly spend budget held by 3 replicas (separate ``bedrock-gateway serve`` processes, one
Redis) against 50 concurrent calls: the overshoot is at most one call's cost, and the settled
spend is the price table applied to the usage the simulator reported, to the micro-dollar."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_CEILING, Decimal
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from tests.conftest import ENVIRON, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

ADMIN = "gwk-admin-spend-replicas-0123456789"
BUDGET = Decimal("0.05")
INPUT, OUTPUT = Decimal("0.003"), Decimal("0.015")  # USD per 1,000 tokens
CALLS = 50
MICRO = Decimal("0.000001")


def cost(usage: dict[str, int]) -> Decimal:
    usd = (usage["inputTokens"] * INPUT + usage["outputTokens"] * OUTPUT) / 1000
    return usd.quantize(MICRO, rounding=ROUND_CEILING)


@pytest.fixture(scope="module")
def replicas(simulator: ServerThread, redis_server: RedisServer) -> Iterator[list[GatewayProcess]]:
    settings = gateway_settings(simulator.url)
    settings["server"] = {"http": "h1"}
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url, "replicas": 3,
                           "key_prefix": "spend" + os.urandom(3).hex()}  # fmt: skip
    settings["admin"] = {"key_sha256": [hash_key(ADMIN)]}
    settings["models"]["claude-haiku"]["price"] = {"input": float(INPUT), "output": float(OUTPUT)}
    settings["tenants"]["team-a"]["monthly_spend_usd"] = float(BUDGET)
    started: list[GatewayProcess] = []
    try:
        for _ in range(3):
            started.append(GatewayProcess(settings, ENVIRON).start())
        yield started
    finally:
        for process in started:
            process.stop()


def _call(client: Any, n: int) -> tuple[str, dict[str, int] | None]:
    text = f"call {n}: spend some [sim:output_tokens=120]"
    try:
        reply = client.converse(
            modelId="claude-haiku", messages=[{"role": "user", "content": [{"text": text}]}],
            inferenceConfig={"maxTokens": 150},
        )  # fmt: skip
    except client.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"]), None
    return "ok", reply["usage"]


def test_fifty_concurrent_calls_overshoot_a_spend_budget_by_at_most_one_call(
    replicas: list[GatewayProcess], make_client: ClientFactory
) -> None:
    clients = [make_client(r.url) for r in replicas]
    with ThreadPoolExecutor(CALLS) as pool:
        results = list(pool.map(lambda n: _call(clients[n % 3], n), range(CALLS)))
    served = [usage for outcome, usage in results if usage is not None]
    refused = [outcome for outcome, usage in results if usage is None]
    assert set(refused) <= {"ServiceQuotaExceededException"}, refused
    assert refused, "the budget held every call: the test proves nothing"
    spent = sum((cost(u) for u in served), Decimal(0))
    most = max(cost(u) for u in served)
    print(f"\nserved {len(served)}, refused {len(refused)}; settled ${spent} of ${BUDGET} "
          f"(one call at most ${most})")  # fmt: skip
    assert spent <= BUDGET + most

    admin = {"authorization": f"Bearer {ADMIN}"}
    for replica in replicas:  # every replica reads the same shared figures
        usage = httpx.get(f"{replica.url}/admin/tenants/team-a/usage", headers=admin).json()
        month = usage["periods"]["month"]
        assert Decimal(str(month["spend_usd"])) == spent
        assert month["requests"] == len(served)
        (budget,) = usage["budgets"]
        assert Decimal(str(budget["used"])) == spent  # nothing left reserved
