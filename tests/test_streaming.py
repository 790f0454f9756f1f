"""Streaming and CountTokens end to end: boto3 / AnthropicBedrock → gateway → simulator, with the
settlement checked in the Redis buckets."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import orjson
import pytest
import redis
from botocore.exceptions import EventStreamError

from gateway import cost
from gateway.config import parse_config
from gateway.eventstream import EventStreamDecoder
from tests.conftest import (
    ENVIRON,
    KEY_ID,
    SECRET,
    SONNET,
    ClientFactory,
    messages_body,
    start_gateway,
)
from tests.servers import GatewayProcess, RedisServer, ServerThread
from tests.test_limiting import POOL, limited_settings, used
from tests.test_server import signed

BURNDOWN = 5  # claude-sonnet in tests/conftest.py


@pytest.fixture(scope="module")
def gateway(simulator: ServerThread, redis_server: RedisServer) -> Iterator[ServerThread]:
    """A gateway on Redis whose on-demand route also limits concurrency (a lease per call)."""
    settings = limited_settings(
        simulator.url, redis_server.url, on_demand={"tpm": 100_000, "max_concurrency": 4}
    )
    # Estimates as computed (no calibration factor), so settlements compare with cost.estimate.
    settings["calibration"] = {"enabled": False}
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


@pytest.fixture
def db(redis_server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return client


@pytest.fixture
def client(gateway: ServerThread, make_client: ClientFactory) -> Any:
    return make_client(gateway.url)


@pytest.fixture
def direct(simulator: ServerThread, make_client: ClientFactory) -> Any:
    """boto3 straight to the simulator (which checks no signature)."""
    return make_client(simulator.url)


def leases(db: redis.Redis) -> int:
    return int(db.zcard(f"{POOL}:conc"))


def settled(db: redis.Redis) -> int:
    """The pool's token count once the call is settled: settlement, which also releases the
    call's lease, lands just after the client has read the end of the stream."""
    deadline = time.monotonic() + 5
    while leases(db) and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting on a real server's settlement, not passing time
    return used(db, POOL)


def invoke_stream(client: Any, text: str, max_tokens: int = 200) -> Any:
    body = json.dumps(messages_body(text, max_tokens))
    return client.invoke_model_with_response_stream(modelId=SONNET, body=body)


def converse_stream(client: Any, text: str, max_tokens: int = 200) -> Any:
    return client.converse_stream(
        modelId=SONNET,
        messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"maxTokens": max_tokens},
    )


def chunks(reply: Any) -> list[dict[str, Any]]:
    """IMWRS events as their decoded model chunks, minus what differs per call."""
    events = [json.loads(event["chunk"]["bytes"]) for event in reply["body"]]
    for event in events:
        event.get("message", {}).pop("id", None)
        metrics = event.get("amazon-bedrock-invocationMetrics", {})
        metrics.pop("invocationLatency", None)
        metrics.pop("firstByteLatency", None)
    return events


def converse_events(reply: Any) -> list[dict[str, Any]]:
    events = list(reply["stream"])
    for event in events:
        event.get("metadata", {}).pop("metrics", None)
    return events


# ---- the stream itself ----------------------------------------------------------------------


def test_invoke_stream_matches_the_simulator_and_settles_its_usage(
    client: Any, direct: Any, db: redis.Redis
) -> None:
    text = "Stream me a story [sim:output_tokens=23]"
    via_gateway = invoke_stream(client, text)
    headers = via_gateway["ResponseMetadata"]["HTTPHeaders"]
    events = chunks(via_gateway)
    assert events == chunks(invoke_stream(direct, text))
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert via_gateway["contentType"] == "application/json"
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    assert headers["x-gateway-route"] == f"test/us-east-1/{SONNET}"
    assert via_gateway["ResponseMetadata"]["RequestId"]
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 23
    assert settled(db) == metrics["inputTokenCount"] + 23 * BURNDOWN
    assert leases(db) == 0


def test_converse_stream_matches_the_simulator_and_settles_its_usage(
    client: Any, direct: Any, db: redis.Redis
) -> None:
    text = "Converse in a stream [sim:output_tokens=17]"
    events = converse_events(converse_stream(client, text))
    assert events == converse_events(converse_stream(direct, text))
    assert list(events[0]) == ["messageStart"]
    usage = events[-1]["metadata"]["usage"]
    assert usage["outputTokens"] == 17
    assert settled(db) == usage["inputTokens"] + 17 * BURNDOWN
    assert leases(db) == 0


@pytest.mark.parametrize("operation", ["invoke", "converse"])
def test_the_first_event_arrives_before_the_simulator_has_finished(
    client: Any, operation: str
) -> None:
    text = "slowly [sim:output_tokens=40] [sim:token_ms=50]"  # 10 deltas, 200 ms apart
    started = time.perf_counter()
    if operation == "invoke":
        stream = iter(invoke_stream(client, text)["body"])
    else:
        stream = iter(converse_stream(client, text)["stream"])
    next(stream)
    first = time.perf_counter() - started
    rest = list(stream)
    total = time.perf_counter() - started
    assert total >= 1.9  # the simulator took its time…
    assert first < 0.5  # …and the first frame did not wait for it
    assert len(rest) >= 12


# ---- ending early ---------------------------------------------------------------------------


def in_flight(simulator: ServerThread) -> int:
    pools = httpx.get(f"{simulator.url}/_simulator/stats").json()["pools"]
    return sum(p["in_flight"] for p in pools if p["model"] == SONNET)


@pytest.mark.parametrize("operation", ["invoke", "converse"])
def test_a_client_leaving_after_the_first_event_is_settled_on_what_is_known(
    client: Any, simulator: ServerThread, db: redis.Redis, operation: str
) -> None:
    text = "leaving early [sim:output_tokens=60] [sim:token_ms=100]"  # 6 s if read to the end
    if operation == "invoke":
        reply = invoke_stream(client, text, max_tokens=300)
        first = json.loads(next(iter(reply["body"]))["chunk"]["bytes"])
        known_input = first["message"]["usage"]["input_tokens"]  # message_start: exact
        events = reply["body"]
    else:
        reply = converse_stream(client, text, max_tokens=300)
        assert "messageStart" in next(iter(reply["stream"]))
        body = {"messages": [{"role": "user", "content": [{"text": text}]}],
                "inferenceConfig": {"maxTokens": 300}}  # fmt: skip
        known_input = cost.estimate("converse-stream", body, default_max_tokens=1000).input_tokens
        events = reply["stream"]
    assert leases(db) == 1
    left = time.monotonic()
    events.close()  # hang up: boto3 closes the connection
    # Best known: the input (reported, or estimated) and no output delivered yet.
    assert settled(db) == known_input
    assert leases(db) == 0
    deadline = time.monotonic() + 3
    while in_flight(simulator) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_flight(simulator) == 0
    assert time.monotonic() - left < 2  # the simulator saw the upstream connection close


def test_a_mid_stream_exception_reaches_boto3_with_its_code(client: Any, db: redis.Redis) -> None:
    for reply, key in (
        (invoke_stream(client, "x [sim:stream_error=throttlingException]"), "body"),
        (converse_stream(client, "x [sim:stream_error=throttlingException]"), "stream"),
    ):
        with pytest.raises(EventStreamError) as caught:
            list(reply[key])
        assert caught.value.response["Error"]["Code"] == "throttlingException"
    settled(db)  # settlement lands just after boto3 has read the exception: wait for it
    assert leases(db) == 0


def test_a_broken_crc_ends_the_stream_with_an_exception_event(client: Any, db: redis.Redis) -> None:
    reply = converse_stream(client, "x [sim:stream_bad_crc=1] [sim:output_tokens=30]")
    received: list[Any] = []
    with pytest.raises(EventStreamError) as caught:
        received.extend(reply["stream"])
    assert caught.value.response["Error"]["Code"] == "internalServerException"
    assert "CRC" in caught.value.response["Error"]["Message"]
    assert len(received) == 2  # the frames before the broken one, then the exception
    assert settled(db) > 0
    assert leases(db) == 0


def test_an_upstream_error_before_the_stream_is_a_plain_error(client: Any, db: redis.Redis) -> None:
    with pytest.raises(client.exceptions.ServiceUnavailableException):
        converse_stream(client, "x [sim:status=503]")
    assert settled(db) == 0
    assert leases(db) == 0


# ---- other clients and CountTokens ----------------------------------------------------------


def test_anthropic_sdk_streams_a_message(gateway: ServerThread, db: redis.Redis) -> None:
    from anthropic import AnthropicBedrock

    sdk = AnthropicBedrock(
        base_url=gateway.url, aws_access_key=KEY_ID, aws_secret_key=SECRET,
        aws_region="us-east-1", max_retries=0,
    )  # fmt: skip
    with sdk.messages.stream(
        model=SONNET, max_tokens=100,
        messages=[{"role": "user", "content": "stream please [sim:output_tokens=9]"}],
    ) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text
    assert message.usage.output_tokens == 9
    assert settled(db) == message.usage.input_tokens + 9 * BURNDOWN


def test_count_tokens_passes_through_and_charges_nothing(
    client: Any, direct: Any, db: redis.Redis
) -> None:
    request = {"messages": [{"role": "user", "content": [{"text": "How many tokens am I?"}]}]}
    counted = client.count_tokens(modelId="claude-sonnet", input={"converse": request})
    assert (
        counted["inputTokens"]
        == direct.count_tokens(modelId=SONNET, input={"converse": request})["inputTokens"]
    )
    invoke_body = orjson.dumps(messages_body("count me"))  # boto3 base64-encodes the blob
    via_invoke = client.count_tokens(modelId=SONNET, input={"invokeModel": {"body": invoke_body}})
    assert via_invoke["inputTokens"] > 0
    assert counted["ResponseMetadata"]["HTTPHeaders"]["x-gateway-route"].endswith(SONNET)
    assert not db.exists(f"{POOL}:tpm")  # nothing admitted, nothing charged
    assert leases(db) == 0


def first_frame_then_reset(
    port: int, path: str, body: bytes, headers: dict[str, str]
) -> tuple[socket.socket, bytes]:
    """POST over cleartext HTTP/2, read the first DATA frame, then cancel the stream with
    RST_STREAM, as the JavaScript SDK does when a caller aborts, keeping the connection open
    until the gateway has settled."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.initiate_connection()
    request = [(":method", "POST"), (":path", path), (":scheme", "http"),
               (":authority", f"127.0.0.1:{port}"), *headers.items()]  # fmt: skip
    connection.send_headers(1, request)
    connection.send_data(1, body, end_stream=True)
    sock.sendall(connection.data_to_send())
    while True:
        for event in connection.receive_data(sock.recv(65536)):
            if isinstance(event, h2.events.DataReceived):
                connection.reset_stream(1)
                sock.sendall(connection.data_to_send())
                return sock, bytes(event.data)
        sock.sendall(connection.data_to_send())


def test_an_http2_stream_cancelled_by_the_client_is_settled_under_granian(
    simulator: ServerThread, redis_server: RedisServer, db: redis.Redis
) -> None:
    """The default server, and an HTTP/2 client leaving by RST_STREAM on a connection that
    stays open."""
    settings = limited_settings(
        simulator.url, redis_server.url, on_demand={"tpm": 100_000, "max_concurrency": 4}
    )
    body = orjson.dumps(messages_body("cancel me [sim:output_tokens=60] [sim:token_ms=100]", 300))
    path = f"/model/{SONNET}/invoke-with-response-stream"
    with GatewayProcess(settings, ENVIRON) as gateway:
        headers = signed(gateway.url + path, body)
        sock, first = first_frame_then_reset(gateway.port, path, body, headers)
        with sock:
            decoder = EventStreamDecoder()
            decoder.feed(first)
            chunk = orjson.loads(next(decoder).payload)["bytes"]
            start = orjson.loads(base64.b64decode(chunk))
            assert settled(db) == start["message"]["usage"]["input_tokens"]
            assert leases(db) == 0
