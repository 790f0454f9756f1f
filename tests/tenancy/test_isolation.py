"""Tenant isolation: A's credentials cannot spend B's budgets or read B's usage, and the
RateLimit headers A sees count A's budget alone, whatever B does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from gateway.config import parse_config
from tests.conftest import BEARER, OTHER_KEY_ID, ClientFactory, gateway_settings, start_gateway
from tests.servers import ServerThread

ADMIN = "gwk-admin-isolation-0123456789"
OTHER_SECRET = "other-secret-0123456789"


@pytest.fixture(scope="module")
def two_tenants(simulator: ServerThread) -> Iterator[ServerThread]:
    settings = gateway_settings(simulator.url)
    settings["admin"] = {"key_sha256": [hash_key(ADMIN)]}
    settings["models"]["claude-haiku"]["price"] = {"input": 0.001, "output": 0.005}
    settings["tenants"]["team-a"].update(tpm=40_000, monthly_spend_usd=0.001,
                                         models=["claude-haiku"])  # fmt: skip
    settings["tenants"]["team-b"].update(tpm=60_000, monthly_spend_usd=1.0)
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


def _call(client: Any, output_tokens: int = 50) -> dict[str, Any]:
    text = f"hello [sim:output_tokens={output_tokens}]"
    reply: dict[str, Any] = client.converse(
        modelId="claude-haiku", messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"maxTokens": output_tokens},
    )  # fmt: skip
    return reply


def _left(reply: dict[str, Any]) -> tuple[str, int]:
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    return headers["ratelimit-policy"], int(headers["ratelimit"].split("r=")[1])


def _usage(server: ServerThread, tenant: str) -> dict[str, Any]:
    reply = httpx.get(f"{server.url}/admin/tenants/{tenant}/usage",
                      headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    found: dict[str, Any] = reply.json()
    return found


def test_a_cannot_spend_b_or_read_b_and_sees_only_its_own_budget(
    two_tenants: ServerThread, make_client: ClientFactory
) -> None:
    a = make_client(two_tenants.url)
    b = make_client(two_tenants.url, OTHER_KEY_ID, OTHER_SECRET)

    policy, before = _left(_call(a))
    assert policy == '"tpm";q=40000;w=60'
    for _ in range(3):  # B's traffic does not move A's budget
        b_policy, _ = _left(_call(b, 200))
        assert b_policy == '"tpm";q=60000;w=60'
    _, after = _left(_call(a))
    a_first = _usage(two_tenants, "team-a")["periods"]["minute"]["quota_tokens"]
    assert before - after <= a_first  # at most A's own settled use came off between them

    # A spends its $0.001 month: refused, B is not
    outcomes = []
    for _ in range(20):
        try:
            _call(a)
        except a.exceptions.ServiceQuotaExceededException as exc:
            outcomes.append(exc.response["Error"]["Message"])
            break
    assert outcomes, "A's budget never ran out"
    assert "tenant 'team-a'" in outcomes[0]
    assert _call(b)["usage"]["outputTokens"] == 50
    usage_a, usage_b = _usage(two_tenants, "team-a"), _usage(two_tenants, "team-b")
    assert usage_b["periods"]["month"]["requests"] == 4
    assert usage_b["periods"]["month"]["throttled"] == 0
    assert usage_a["budgets"][-1]["name"] == "monthly_spend_usd"
    assert usage_b["budgets"][-1]["remaining"] > 0.99

    # A's credentials never read anything under /admin: its bearer key, or its SigV4 pair
    sigv4 = "AWS4-HMAC-SHA256 Credential=GWTESTTENANTKEY0001/x"
    for headers in ({"authorization": f"Bearer {BEARER}"}, {"authorization": sigv4}):
        refused = httpx.get(f"{two_tenants.url}/admin/tenants/team-b/usage", headers=headers)
        assert refused.status_code in (401, 403)
        assert "team-b" not in refused.text
        assert "requests" not in refused.text
