"""Quota enforcement through the data plane, settlement checked in the Redis buckets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateway.config import parse_config
from tests.conftest import (
    SONNET,
    SONNET_PROFILE,
    ClientFactory,
    gateway_settings,
    messages_body,
    start_gateway,
)
from tests.servers import RedisServer, ServerThread, free_port

POOL = f"{{bgw}}:pool:test:us-east-1:on-demand:{SONNET}"
PROFILE_POOL = f"{{bgw}}:pool:test:us-east-1:geo:{SONNET}"
TENANT = "{bgw}:tenant:team-a"


@pytest.fixture
def db(redis_server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return client


def limited_settings(upstream: str, redis_url: str, **routes: Any) -> dict[str, Any]:
    settings = gateway_settings(upstream)
    settings["limiter"] = {"backend": "redis", "redis_url": redis_url}
    sonnet = settings["models"]["claude-sonnet"]
    sonnet["max_output_tokens"] = 1000
    sonnet["routes"][0].update(routes.get("on_demand", {"tpm": 100_000}))
    sonnet["routes"][1].update(routes.get("profile", {"tpm": 100_000}))
    settings["tenants"]["team-a"].update(routes.get("tenant", {}))
    return settings


@pytest.fixture
def limited(simulator: ServerThread, redis_server: RedisServer, db: redis.Redis) -> Iterator[Any]:
    servers: list[ServerThread] = []

    def start(upstream: str | None = None, **kwargs: Any) -> ServerThread:
        settings = limited_settings(upstream or simulator.url, redis_server.url, **kwargs)
        if "read_timeout_s" in kwargs:
            settings["upstream"]["read_timeout_s"] = kwargs["read_timeout_s"]
        server = start_gateway(parse_config(settings))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def used(db: redis.Redis, key: str) -> int:
    return int(db.hget(f"{key}:tpm", "t") or 0)


def invoke(client: Any, text: str, max_tokens: int = 100, model: str = "claude-sonnet") -> Any:
    return client.invoke_model(modelId=model, body=json.dumps(messages_body(text, max_tokens)))


def test_settled_tokens_equal_the_simulators_usage(
    limited: Any, make_client: ClientFactory, db: redis.Redis
) -> None:
    client = make_client(limited().url)
    reply = invoke(client, "What is a quota? [sim:output_tokens=12]", max_tokens=400)
    usage = json.loads(reply["body"].read())["usage"]
    expected = usage["input_tokens"] + 12 * 5  # output burndown 5 for Claude Sonnet 4
    assert used(db, POOL) == expected
    assert used(db, TENANT) == 0  # team-a has no budget configured: no tenant bucket


def test_answers_carry_the_tenants_remaining_budget(
    limited: Any, make_client: ClientFactory
) -> None:
    client = make_client(limited(tenant={"tpm": 50_000}).url)
    first = invoke(client, "one [sim:output_tokens=10]", max_tokens=100)["ResponseMetadata"]
    second = invoke(client, "two [sim:output_tokens=10]", max_tokens=100)["ResponseMetadata"]
    policy = first["HTTPHeaders"]["ratelimit-policy"]
    assert policy == '"tpm";q=50000;w=60'
    left = [int(r["HTTPHeaders"]["ratelimit"].split("r=")[1]) for r in (first, second)]
    assert 50_000 - 600 < left[0] < 50_000  # the first reservation (~input + 100 x 5)
    assert left[1] < left[0]  # the second left less, though the first was refunded to its use


def test_tenant_budget_throttles_with_retry_hints(
    limited: Any, make_client: ClientFactory, db: redis.Redis
) -> None:
    client = make_client(limited(tenant={"tpm": 3000}).url)
    invoke(client, "first [sim:output_tokens=100]", max_tokens=500)  # ~2,500 reserved, 500+ kept
    invoke(client, "second [sim:output_tokens=300]", max_tokens=400)

    def short_wait(request: Any, **_: Any) -> None:
        request.headers["x-gateway-max-wait-ms"] = "300"

    client.meta.events.register("before-sign.bedrock-runtime.InvokeModel", short_wait)
    with pytest.raises(client.exceptions.ThrottlingException) as caught:
        invoke(client, "third", max_tokens=500)
    error = caught.value.response
    headers = error["ResponseMetadata"]["HTTPHeaders"]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "tenant 'team-a'" in error["Error"]["Message"]
    wait_ms = int(headers["x-amz-retry-after"])
    assert 0 < wait_ms <= 60_750  # window 60 s + margin 0.5 s, in 250 ms slots
    assert headers["retry-after-ms"] == str(wait_ms)
    assert int(headers["retry-after"]) == -(-wait_ms // 1000)
    assert used(db, TENANT) <= 3000


def test_a_reservation_larger_than_every_pool_is_a_validation_error(
    limited: Any, make_client: ClientFactory
) -> None:
    client = make_client(limited(on_demand={"tpm": 2000}, profile={"tpm": 3000}).url)
    with pytest.raises(client.exceptions.ValidationException, match="more than the whole quota"):
        invoke(client, "hi", max_tokens=1000)  # 1000 x burndown 5 > 3000


def test_a_reservation_larger_than_the_tenants_budget_says_so_in_words(
    limited: Any, make_client: ClientFactory
) -> None:
    client = make_client(limited(tenant={"tpm": 3000}).url)
    with pytest.raises(client.exceptions.ValidationException) as caught:
        invoke(client, "hi", max_tokens=1000)  # 1000 x burndown 5 > 3000
    message = caught.value.response["Error"]["Message"]
    assert "more than the whole budget of tenant 'team-a' (3000 quota tokens)" in message
    assert "'s" not in message


def test_a_full_route_spills_to_the_next(limited: Any, make_client: ClientFactory) -> None:
    client = make_client(limited(on_demand={"tpm": 1200}, profile={"tpm": 100_000}).url)
    routes = [
        invoke(client, "spill [sim:output_tokens=150]", max_tokens=200)["ResponseMetadata"][
            "HTTPHeaders"
        ]["x-gateway-route"]
        for _ in range(3)
    ]
    assert routes[0] == f"test/us-east-1/{SONNET}"
    assert routes[-1] == f"test/us-east-1/{SONNET_PROFILE}"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_upstream_errors_refund_the_reservation(
    limited: Any, make_client: ClientFactory, db: redis.Redis, status: int
) -> None:
    client = make_client(limited().url)
    with pytest.raises(client.exceptions.ClientError):
        invoke(client, f"fail [sim:status={status}]")
    assert used(db, POOL) == 0


def test_an_unreachable_upstream_refunds(
    limited: Any, make_client: ClientFactory, db: redis.Redis
) -> None:
    client = make_client(limited(upstream=f"http://127.0.0.1:{free_port()}").url)
    with pytest.raises(client.exceptions.ServiceUnavailableException):
        invoke(client, "nobody home")
    assert used(db, POOL) == 0
    assert db.exists(f"{POOL}:tpm")  # it was charged, then refunded


def test_an_upstream_timeout_keeps_the_full_reservation(
    limited: Any, make_client: ClientFactory, db: redis.Redis
) -> None:
    client = make_client(limited(read_timeout_s=0.3).url)
    with pytest.raises(client.exceptions.ModelTimeoutException):
        invoke(client, "slow [sim:ttft_ms=1500]", max_tokens=100)
    # Bedrock may have run the model: the reservation (input estimate + 100 x 5) stays
    assert used(db, POOL) > 500


def test_a_client_that_disconnects_is_still_settled(limited: Any, db: redis.Redis) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from gateway.simulator.tokens import input_tokens
    from tests.conftest import KEY_ID, SECRET

    gateway = limited()
    document = messages_body("leaving early [sim:output_tokens=9] [sim:ttft_ms=300]")
    body = json.dumps(document).encode()
    url = f"{gateway.url}/model/claude-sonnet/invoke"
    request = AWSRequest("POST", url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "bedrock", "us-east-1").add_auth(request)
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    raw = (f"POST /model/claude-sonnet/invoke HTTP/1.1\r\nhost: 127.0.0.1:{gateway.port}\r\n"
           f"content-length: {len(body)}\r\n{head}\r\n").encode() + body  # fmt: skip
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(raw)  # and hang up at once, long before the simulator answers
    expected = input_tokens("invoke", document) + 9 * 5
    deadline = time.monotonic() + 5
    while used(db, POOL) != expected and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting on a real server's settlement, not passing time
    assert used(db, POOL) == expected
