"""Upstream retries through the real gateway and simulator, settlement checked in Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateway.config import parse_config
from gateway.simulator.tokens import input_tokens
from tests.conftest import (
    SONNET,
    SONNET_PROFILE,
    ClientFactory,
    gateway_settings,
    messages_body,
    start_gateway,
)
from tests.servers import RedisServer, ServerThread

POOL = f"{{bgw}}:pool:test:us-east-1:on-demand:{SONNET}:tpm"
PROFILE_POOL = f"{{bgw}}:pool:test:us-east-1:geo:{SONNET}:tpm"


@pytest.fixture
def gateway(simulator: ServerThread, redis_server: RedisServer) -> Iterator[tuple[Any, Any]]:
    db = redis.Redis.from_url(redis_server.url)
    db.flushdb()
    settings = gateway_settings(simulator.url)
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url}
    for route in settings["models"]["claude-sonnet"]["routes"]:
        route["tpm"] = 100_000
    server = start_gateway(parse_config(settings))
    yield server, db
    server.stop()


def used(db: Any, key: str) -> int:
    return int(db.hget(key, "t") or 0)


@pytest.mark.parametrize("status", [503, 500, 429])
def test_injected_failures_are_retried_answered_and_settled_once(
    gateway: tuple[Any, Any], make_client: ClientFactory, status: int
) -> None:
    server, db = gateway
    document = messages_body(f"flaky [sim:status={status}] [sim:fail_times=2] "
                             f"[sim:output_tokens=6]", max_tokens=50)  # fmt: skip
    reply = make_client(server.url).invoke_model(modelId="claude-sonnet", body=json.dumps(document))
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert headers["x-gateway-attempts"] == "3"
    charged = input_tokens("invoke", document) + 6 * 5
    # failed attempts were refunded; the one that answered is charged its usage, once
    assert used(db, POOL) + used(db, PROFILE_POOL) == charged


def test_a_throttled_route_is_left_for_the_next(
    gateway: tuple[Any, Any], make_client: ClientFactory
) -> None:
    server, _ = gateway
    document = messages_body("busy [sim:status=429] [sim:fail_times=1]", max_tokens=50)
    reply = make_client(server.url).invoke_model(modelId="claude-sonnet", body=json.dumps(document))
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-gateway-attempts"] == "2"
    assert headers["x-gateway-route"].endswith(SONNET_PROFILE)


def test_validation_errors_are_not_retried(
    gateway: tuple[Any, Any], make_client: ClientFactory
) -> None:
    server, db = gateway
    client = make_client(server.url)
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.invoke_model(modelId="claude-sonnet",
                            body=json.dumps(messages_body("no [sim:status=400]")))  # fmt: skip
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["x-gateway-attempts"] == "1"
    assert used(db, POOL) == 0
