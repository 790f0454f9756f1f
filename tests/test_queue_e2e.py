"""The overflow queue through the real gateway: a burst waits for capacity instead of failing."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.config import parse_config
from tests.conftest import BEARER, ClientFactory, gateway_settings, messages_body, start_gateway
from tests.servers import ServerThread


@pytest.fixture
def small_pool(simulator: ServerThread) -> Any:
    settings = gateway_settings(simulator.url)
    settings["models"]["claude-sonnet"]["routes"] = [
        {"account": "test", "region": "us-east-1", "tpm": 3500}  # ~3 reservations at once
    ]
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


def call(client: Any, n: int) -> tuple[int, dict[str, str]]:
    body = messages_body(f"burst {n} [sim:output_tokens=10] [sim:ttft_ms=150]", max_tokens=200)
    reply = client.invoke_model(modelId="claude-sonnet", body=json.dumps(body))
    return reply["ResponseMetadata"]["HTTPStatusCode"], reply["ResponseMetadata"]["HTTPHeaders"]


def test_a_burst_waits_in_the_queue_instead_of_failing(
    small_pool: ServerThread, make_client: ClientFactory
) -> None:
    client = make_client(small_pool.url)
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda n: call(client, n), range(24)))
    assert [status for status, _ in results] == [200] * 24  # nobody saw a 429
    waits = sorted(int(headers["x-gateway-queue-ms"]) for _, headers in results)
    assert waits[0] == 0  # the first ones went straight through
    assert waits[-1] >= 150  # later ones waited for earlier ones to settle


def test_a_request_may_ask_to_wait_less(
    small_pool: ServerThread, make_client: ClientFactory
) -> None:
    client = make_client(small_pool.url)

    def no_wait(request: Any, **_: Any) -> None:
        request.headers["x-gateway-max-wait-ms"] = "0"

    client.meta.events.register("before-sign.bedrock-runtime.InvokeModel", no_wait)
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(lambda n: _status(client, n), range(12)))
    assert 200 in outcomes
    assert 429 in outcomes  # without queueing, the burst overflows at once


def _status(client: Any, n: int) -> int:
    try:
        return call(client, n)[0]
    except client.exceptions.ThrottlingException:
        return 429


def test_a_request_still_waiting_when_the_server_stops_gets_an_answer(
    simulator: ServerThread, make_client: ClientFactory
) -> None:
    """The server gives up on in-flight requests after its grace (5 s in tests): a request still
    queued then is answered in Bedrock's shape, not dropped or sent a bare 500."""
    settings = gateway_settings(simulator.url)
    settings["server"]["shutdown_grace_s"] = 60
    settings["queue"] = {"max_wait_s": 50}
    settings["models"]["claude-sonnet"]["routes"] = [
        {"account": "test", "region": "us-east-1", "tpm": 1200}
    ]
    server = start_gateway(parse_config(settings))
    client = make_client(server.url)
    body = json.dumps(messages_body("first [sim:output_tokens=190]", max_tokens=200))
    client.invoke_model(modelId="claude-sonnet", body=body)  # the pool is now full for a minute
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = pool.submit(_error_code, client, body)
        batch = pool.submit(httpx.post, f"{server.url}/model/claude-sonnet/invoke", content=body,
                            headers={"authorization": f"Bearer {BEARER}",
                                     "x-gateway-priority": "batch"}, timeout=30)  # fmt: skip
        deadline = time.monotonic() + 5
        queued = ['gateway_queue_depth{model="claude-sonnet",priority="interactive"} 1.0',
                  'gateway_queue_depth{model="claude-sonnet",priority="batch"} 1.0']  # fmt: skip
        while not all(line in httpx.get(f"{server.url}/metrics").text for line in queued):
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.02)  # polling the real server's state
        server.stop()
        assert waiting.result(timeout=30) in ("ServiceUnavailableException", "ThrottlingException")
        assert batch.result(timeout=30).status_code in (429, 503)


def _error_code(client: Any, body: str) -> str:
    try:
        client.invoke_model(modelId="claude-sonnet", body=body)
    except client.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "no error"
