"""The simulator under real uvicorn, driven by real boto3 (and the Anthropic SDK)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest

from gateway.simulator import SimulatorConfig, create_simulator_app
from gateway.simulator.tokens import count_tokens
from tests.servers import ServerThread

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE = "us.anthropic.claude-3-haiku-20240307-v1:0"
ARN = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    saved = {k: os.environ.pop(k, None) for k in ("AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE")}
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    config = SimulatorConfig.model_validate(
        {"latency": {"ttft_ms": 0}, "default_region": "eu-west-1"}
    )
    with ServerThread(create_simulator_app(config)) as running:
        yield running
    for key, value in saved.items():
        if value is not None:
            os.environ[key] = value


def set_pools(sim: httpx.Client, *pools: dict[str, Any]) -> None:
    assert sim.put("/_simulator/pools", json=list(pools)).status_code == 200


def pools_by_model(sim: httpx.Client) -> dict[str, dict[str, Any]]:
    return {p["model"]: p for p in sim.get("/_simulator/stats").json()["pools"]}


def claude_body(text: str = "Hello", max_tokens: int = 100) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
        }
    )


def test_invoke_model(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.invoke_model(modelId=HAIKU, body=claude_body("Hi [sim:output_tokens=17]"))
    body = json.loads(response["body"].read())
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert body["usage"]["output_tokens"] == 17
    assert count_tokens(body["content"][0]["text"]) == 17
    assert headers["x-amzn-bedrock-output-token-count"] == "17"
    assert headers["x-amzn-bedrock-input-token-count"] == str(body["usage"]["input_tokens"])
    assert "x-amzn-bedrock-invocation-latency" in headers
    assert response["ResponseMetadata"]["RequestId"] == headers["x-amzn-requestid"]
    assert response["contentType"] == "application/json"
    # The SigV4 credential scope, not the default, names the pool's region.
    assert pools_by_model(sim)[HAIKU]["region"] == "us-east-1"


def test_converse(sim: httpx.Client, bedrock: Any) -> None:
    response = bedrock.converse(
        modelId=PROFILE,
        messages=[{"role": "user", "content": [{"text": "Hi [sim:output_tokens=8]"}]}],
        inferenceConfig={"maxTokens": 50},
    )
    assert response["stopReason"] == "end_turn"
    assert response["usage"]["outputTokens"] == 8
    assert response["usage"]["totalTokens"] == response["usage"]["inputTokens"] + 8
    text = response["output"]["message"]["content"][0]["text"]
    assert count_tokens(text) == 8
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "8"


def test_arn_and_profile_id_are_separate_pools(sim: httpx.Client, bedrock: Any) -> None:
    bedrock.invoke_model(modelId=ARN, body=claude_body())
    bedrock.invoke_model(modelId=PROFILE, body=claude_body())
    bedrock.invoke_model(modelId=PROFILE, body=claude_body())
    pools = pools_by_model(sim)
    assert pools[ARN]["admitted"] == 1
    assert pools[PROFILE]["admitted"] == 2


def test_anthropic_sdk_literal_colon_shares_the_boto3_pool(
    server: ServerThread, sim: httpx.Client, bedrock: Any
) -> None:
    client = anthropic.AnthropicBedrock(
        aws_access_key="x",
        aws_secret_key="y",
        aws_region="us-east-1",
        base_url=server.url,
        max_retries=0,
    )
    message = client.messages.create(
        model=ARN, max_tokens=20, messages=[{"role": "user", "content": "Hi [sim:output_tokens=4]"}]
    )
    assert message.usage.output_tokens == 4
    bedrock.invoke_model(modelId=ARN, body=claude_body())
    assert pools_by_model(sim)[ARN]["admitted"] == 2


def test_throttling_exception_over_tpm(sim: httpx.Client, bedrock: Any) -> None:
    set_pools(sim, {"model": HAIKU, "tpm": 1000})
    body = claude_body("[sim:output_tokens=600]", max_tokens=600)
    bedrock.invoke_model(modelId=HAIKU, body=body)
    with pytest.raises(bedrock.exceptions.ThrottlingException) as caught:
        bedrock.invoke_model(modelId=HAIKU, body=body)
    assert caught.value.response["Error"]["Message"] == (
        "Too many tokens, please wait before trying again."
    )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_validation_and_fault_exceptions(sim: httpx.Client, bedrock: Any) -> None:
    with pytest.raises(bedrock.exceptions.ValidationException):
        bedrock.invoke_model(modelId=HAIKU, body=json.dumps({"messages": []}))
    with pytest.raises(bedrock.exceptions.ServiceUnavailableException):
        bedrock.invoke_model(modelId=HAIKU, body=claude_body("[sim:status=503]"))
    with pytest.raises(bedrock.exceptions.InternalServerException):
        bedrock.invoke_model(modelId=HAIKU, body=claude_body("[sim:status=500]"))
    with pytest.raises(bedrock.exceptions.ThrottlingException):
        bedrock.converse(
            modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "[sim:status=429]"}]}]
        )


def fire(bedrock: Any, model: str, body: str, count: int) -> tuple[int, int]:
    """``count`` requests from 8 threads: (admitted, throttled)."""

    def one(_: int) -> bool:
        try:
            bedrock.invoke_model(modelId=model, body=body)
        except bedrock.exceptions.ThrottlingException:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(count)))
    return sum(results), len(results) - sum(results)


def test_rolling_mode_caps_a_3x_overload_at_tpm(sim: httpx.Client, bedrock: Any) -> None:
    set_pools(sim, {"model": HAIKU, "tpm": 3000, "mode": "rolling"})
    body = claude_body("Go [sim:output_tokens=100]", max_tokens=100)
    per_request = bedrock.invoke_model(modelId=HAIKU, body=body)["ResponseMetadata"]
    per_request_tokens = int(per_request["HTTPHeaders"]["x-amzn-bedrock-input-token-count"]) + 100
    admitted, throttled = fire(bedrock, HAIKU, body, 3 * (3000 // per_request_tokens))
    assert admitted + 1 == 3000 // per_request_tokens  # settles as reserved: exactly full
    assert throttled > 0
    pool = pools_by_model(sim)[HAIKU]
    assert pool["max_rolling_60s_tokens"] <= 3000
    assert pool["max_rolling_60s_tokens"] >= 3000 - per_request_tokens
    assert pool["throttled_by"]["tokens_per_minute"] == throttled


def test_bucket_mode_admits_its_capacity_first(sim: httpx.Client, bedrock: Any) -> None:
    body = claude_body("Go [sim:output_tokens=1000]", max_tokens=1000)  # no refunds
    probe = bedrock.invoke_model(modelId="probe", body=body)["ResponseMetadata"]["HTTPHeaders"]
    per_request = int(probe["x-amzn-bedrock-input-token-count"]) + 1000
    # Ten requests' worth; one more needs six seconds of refill (tpm / 60 per second).
    set_pools(sim, {"model": HAIKU, "tpm": 10 * per_request, "mode": "bucket"})
    for _ in range(10):
        bedrock.invoke_model(modelId=HAIKU, body=body)
    with pytest.raises(bedrock.exceptions.ThrottlingException):
        bedrock.invoke_model(modelId=HAIKU, body=body)
    pool = pools_by_model(sim)[HAIKU]
    assert (pool["mode"], pool["admitted"], pool["throttled"]) == ("bucket", 10, 1)
