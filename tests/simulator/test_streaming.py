"""Streaming operations and CountTokens under real uvicorn with boto3."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import botocore.config
import botocore.eventstream
import botocore.exceptions
import httpx
import pytest

from gateway.simulator import SimulatorConfig, create_simulator_app
from gateway.simulator.tokens import MESSAGE_OVERHEAD, count_tokens
from tests.servers import ServerThread

MODEL = "us.anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
    config = SimulatorConfig.model_validate({"latency": {"ttft_ms": 0}})
    with ServerThread(create_simulator_app(config)) as running:
        yield running


def claude_body(text: str, max_tokens: int = 200) -> str:
    messages = [{"role": "user", "content": text}]
    return json.dumps(
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": max_tokens, "messages": messages}
    )


def converse_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def only_pool(sim: httpx.Client) -> dict[str, Any]:
    (pool,) = sim.get("/_simulator/stats").json()["pools"]
    assert isinstance(pool, dict)
    return pool


def test_invoke_with_response_stream(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.invoke_model_with_response_stream(
        modelId=MODEL, body=claude_body("Hi [sim:output_tokens=23]")
    )
    assert response["contentType"] == "application/json"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    events = [json.loads(event["chunk"]["bytes"]) for event in response["body"]]
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert count_tokens(text) == 23
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 23
    assert events[-2]["usage"]["output_tokens"] == 23
    pool = only_pool(sim)
    assert pool["tokens"] == metrics["inputTokenCount"] + 23
    assert pool["in_flight"] == 0


def test_converse_stream(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.converse_stream(
        modelId=MODEL,
        messages=converse_messages("Hi [sim:output_tokens=11]"),
        inferenceConfig={"maxTokens": 5},
    )
    events = list(response["stream"])
    assert list(events[0]) == ["messageStart"]
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert count_tokens(text) == 5
    assert events[-2] == {"messageStop": {"stopReason": "max_tokens"}}
    usage = events[-1]["metadata"]["usage"]
    assert usage["outputTokens"] == 5
    assert only_pool(sim)["tokens"] == usage["totalTokens"]


PROMPT = "[sim:output_tokens=100] [sim:stream_error=throttlingException]"


def test_mid_stream_throttling_exception(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.converse_stream(
        modelId=MODEL,
        messages=converse_messages(
            "[sim:output_tokens=100] [sim:stream_error=throttlingException]"
        ),
    )
    received: list[dict[str, Any]] = []
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        received.extend(response["stream"])
    assert caught.value.response["Error"]["Code"] == "throttlingException"
    assert not isinstance(caught.value, bedrock.exceptions.ThrottlingException)
    sent = sum(count_tokens(e["contentBlockDelta"]["delta"]["text"]) for e in received[1:])
    assert sent == 8
    pool = only_pool(sim)
    assert pool["settled"] == 1  # on what was sent, not on the 100 tokens asked for
    inputs = count_tokens(PROMPT) + MESSAGE_OVERHEAD
    assert pool["tokens"] == inputs + sent


def test_imwrs_stream_error_code(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.invoke_model_with_response_stream(
        modelId=MODEL, body=claude_body("[sim:stream_error=serviceUnavailableException]")
    )
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        list(response["body"])
    assert caught.value.response["Error"]["Code"] == "serviceUnavailableException"


def test_bad_crc_is_detected_by_botocore(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.invoke_model_with_response_stream(
        modelId=MODEL, body=claude_body("[sim:output_tokens=30] [sim:stream_bad_crc=1]")
    )
    with pytest.raises(botocore.eventstream.ChecksumMismatch):
        list(response["body"])


def test_throttled_before_the_stream_starts(sim: httpx.Client, bedrock: Any) -> None:
    sim.put("/_simulator/pools", json=[{"model": MODEL, "tpm": 300}])
    bedrock.invoke_model_with_response_stream(modelId=MODEL, body=claude_body("a", max_tokens=250))
    with pytest.raises(bedrock.exceptions.ThrottlingException):
        bedrock.invoke_model_with_response_stream(
            modelId=MODEL, body=claude_body("a", max_tokens=250)
        )


def test_frames_are_sent_as_generated(sim: httpx.Client, bedrock: Any) -> None:
    started = time.monotonic()
    response = bedrock.converse_stream(
        modelId=MODEL, messages=converse_messages("[sim:output_tokens=40] [sim:token_ms=20]")
    )
    stream = iter(response["stream"])
    next(stream)
    first = time.monotonic() - started
    list(stream)
    total = time.monotonic() - started
    assert total >= 0.8  # 40 tokens x 20 ms
    assert first < total / 2  # the first event did not wait for the last


def test_client_disconnect_settles_at_what_was_sent(
    server: ServerThread, sim: httpx.Client
) -> None:
    body = claude_body("[sim:output_tokens=400] [sim:token_ms=10]", max_tokens=400)
    path = f"/model/{MODEL}/invoke-with-response-stream"
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("POST", path, content=body) as response,
    ):
        assert response.status_code == 200
        frames = response.iter_raw()  # kept: a dropped generator closes the connection
        next(frames)  # some frames have arrived
        assert only_pool(sim)["in_flight"] == 1
    deadline = time.monotonic() + 5
    while only_pool(sim)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the server to notice, not passing quota time
    pool = only_pool(sim)
    assert pool["in_flight"] == 0
    inputs = count_tokens("[sim:output_tokens=400] [sim:token_ms=10]") + MESSAGE_OVERHEAD
    assert inputs <= pool["tokens"] < inputs + 400  # not the full answer: it stopped early


def test_count_tokens_matches_what_invoke_and_converse_charge(
    sim: httpx.Client, bedrock: Any
) -> None:
    body = claude_body("How many tokens is this sentence, exactly?")
    invoked = bedrock.invoke_model(modelId=MODEL, body=body)
    charged = int(invoked["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"])
    counted = bedrock.count_tokens(modelId=MODEL, input={"invokeModel": {"body": body.encode()}})
    assert counted["inputTokens"] == charged

    messages = converse_messages("How many tokens is this sentence, exactly?")
    conversed = bedrock.converse(modelId=MODEL, messages=messages, system=[{"text": "Be exact."}])
    counted = bedrock.count_tokens(
        modelId=MODEL, input={"converse": {"messages": messages, "system": [{"text": "Be exact."}]}}
    )
    assert counted["inputTokens"] == conversed["usage"]["inputTokens"]
    assert only_pool(sim)["admitted"] == 2  # counting is free


def test_count_tokens_rejects_bad_input(sim: httpx.Client) -> None:
    for payload in [
        {},
        {"input": {}},
        {"input": {"invokeModel": {"body": "%%%"}}},
        {"input": {"other": {}}},
    ]:
        response = sim.post(f"/model/{MODEL}/count-tokens", json=payload)
        assert response.status_code == 400, payload
        assert response.headers["x-amzn-errortype"].startswith("ValidationException")
