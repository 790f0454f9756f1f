"""Fallback models: a full model hands a call to its configured fallback, for tenants that may."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.config import parse_config
from tests.conftest import SONNET, ClientFactory, gateway_settings, messages_body, start_gateway
from tests.servers import ServerThread


@pytest.fixture
def gateway(simulator: ServerThread) -> Iterator[ServerThread]:
    settings = gateway_settings(simulator.url)
    sonnet = settings["models"]["claude-sonnet"]
    sonnet["routes"] = [{"account": "test", "region": "us-east-1", "tpm": 1200}]
    sonnet["fallback"] = ["claude-haiku", "nova"]
    settings["models"]["nova"] = {
        "model_id": "amazon.nova-lite-v1:0",
        "routes": [{"account": "test", "region": "us-east-1"}],
    }
    settings["tenants"]["team-a"]["allow_fallback"] = True
    settings["tenants"]["team-b"]["models"] = ["claude-sonnet", "claude-haiku"]
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


def _wait_ms(ms: int) -> Any:
    def add(request: Any, **_: Any) -> None:
        request.headers["x-gateway-max-wait-ms"] = str(ms)

    return add


def _occupy(client: Any, simulator: ServerThread) -> threading.Thread:
    """A slow call that holds the whole sonnet pool while the test runs: returns once the
    simulator is serving it."""
    body = json.dumps(messages_body("hold [sim:ttft_ms=2500] [sim:output_tokens=5]", 200))
    thread = threading.Thread(target=client.invoke_model, kwargs={"modelId": "claude-sonnet",
                                                                  "body": body})  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 5
    while not any(p["model"] == SONNET and p["in_flight"] for p in _pools(simulator)):
        assert time.monotonic() < deadline, "the holding call never reached the simulator"
        time.sleep(0.01)  # polling a real server's state, not passing time
    return thread


def _pools(simulator: ServerThread) -> list[dict[str, Any]]:
    pools: list[dict[str, Any]] = httpx.get(f"{simulator.url}/_simulator/stats").json()["pools"]
    return pools


def test_a_full_model_falls_back_for_a_tenant_that_allows_it(
    gateway: ServerThread, make_client: ClientFactory, simulator: ServerThread
) -> None:
    client = make_client(gateway.url)
    holder = _occupy(client, simulator)
    client.meta.events.register("before-sign.bedrock-runtime.Converse", _wait_ms(1200))
    reply = client.converse(
        modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "hi"}]}],
        inferenceConfig={"maxTokens": 200},
    )  # fmt: skip
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-gateway-model"] == "claude-haiku"
    assert headers["x-gateway-route"].startswith("test/us-west-2/")
    holder.join()


def test_invoke_model_falls_back_only_within_a_vendor(
    gateway: ServerThread, make_client: ClientFactory, simulator: ServerThread
) -> None:
    client = make_client(gateway.url)
    holder = _occupy(client, simulator)
    client.meta.events.register("before-sign.bedrock-runtime.InvokeModel", _wait_ms(1200))
    reply = client.invoke_model(modelId="claude-sonnet", body=json.dumps(messages_body("x", 200)))
    assert reply["ResponseMetadata"]["HTTPHeaders"]["x-gateway-model"] == "claude-haiku"  # not nova
    holder.join()


def test_a_tenant_without_fallback_waits_and_is_throttled(
    gateway: ServerThread, make_client: ClientFactory, simulator: ServerThread
) -> None:
    from tests.conftest import OTHER_KEY_ID

    holder = _occupy(make_client(gateway.url), simulator)
    other = make_client(gateway.url, key_id=OTHER_KEY_ID, secret="other-secret-0123456789")
    other.meta.events.register("before-sign.bedrock-runtime.Converse", _wait_ms(600))
    with pytest.raises(other.exceptions.ThrottlingException):
        other.converse(
            modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "hi"}]}],
            inferenceConfig={"maxTokens": 200},
        )  # fmt: skip
    holder.join()
