"""The data plane end to end: unmodified boto3 → gateway (uvicorn) → simulator (uvicorn)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import trustme

from gateway.api.app import create_app
from gateway.config import parse_config
from tests.conftest import (
    BEARER,
    ENVIRON,
    HAIKU,
    OTHER_KEY_ID,
    SONNET,
    SONNET_PROFILE,
    ClientFactory,
    gateway_settings,
    messages_body,
    start_gateway,
)
from tests.servers import ServerThread, free_port


def _headers(response: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = response["ResponseMetadata"]["HTTPHeaders"]
    return headers


def test_invoke_model_returns_the_simulators_answer(client: Any) -> None:
    body = messages_body("Count these words please [sim:output_tokens=7]", max_tokens=20)
    reply = client.invoke_model(modelId="claude-sonnet", body=json.dumps(body))
    answer = json.loads(reply["body"].read())
    headers = _headers(reply)
    assert answer["type"] == "message"
    assert answer["usage"]["output_tokens"] == 7
    assert headers["x-amzn-bedrock-output-token-count"] == "7"
    assert headers["x-amzn-bedrock-input-token-count"] == str(answer["usage"]["input_tokens"])
    assert headers["x-gateway-route"] == f"test/us-east-1/{SONNET}"
    assert reply["ResponseMetadata"]["RequestId"]


def test_converse_returns_usage_and_token_headers(client: Any) -> None:
    reply = client.converse(
        modelId=SONNET,
        messages=[{"role": "user", "content": [{"text": "Hi [sim:output_tokens=5]"}]}],
        inferenceConfig={"maxTokens": 100},
    )
    assert reply["usage"]["outputTokens"] == 5
    assert reply["output"]["message"]["role"] == "assistant"
    headers = _headers(reply)
    assert headers["x-amzn-bedrock-input-token-count"] == str(reply["usage"]["inputTokens"])


def test_inference_profile_and_arn_use_the_profile_route(
    client: Any, simulator: ServerThread
) -> None:
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{SONNET_PROFILE}"
    for model_id in (SONNET_PROFILE, arn):
        reply = client.invoke_model(modelId=model_id, body=json.dumps(messages_body()))
        assert _headers(reply)["x-gateway-route"] == f"test/us-east-1/{SONNET_PROFILE}"
    pools = httpx.get(f"{simulator.url}/_simulator/stats").json()["pools"]
    assert any(p["model"] == SONNET_PROFILE and p["admitted"] >= 2 for p in pools)


def test_foundation_model_arn_uses_the_on_demand_route(client: Any) -> None:
    arn = f"arn:aws:bedrock:us-west-2::foundation-model/{HAIKU}"
    reply = client.invoke_model(modelId=arn, body=json.dumps(messages_body()))
    assert _headers(reply)["x-gateway-route"] == f"test/us-west-2/{HAIKU}"


def test_anthropic_sdk_through_the_gateway(gateway: ServerThread) -> None:
    from anthropic import AnthropicBedrock

    from tests.conftest import KEY_ID, SECRET

    sdk = AnthropicBedrock(
        base_url=gateway.url, aws_access_key=KEY_ID, aws_secret_key=SECRET,
        aws_region="us-east-1", max_retries=0,
    )  # fmt: skip
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{SONNET_PROFILE}"
    for model in (arn, SONNET_PROFILE, "claude-haiku"):
        raw = sdk.messages.with_raw_response.create(
            model=model, max_tokens=30,
            messages=[{"role": "user", "content": "hello [sim:output_tokens=4]"}],
        )  # fmt: skip
        assert raw.parse().usage.output_tokens == 4
        expected = "us-west-2/" + HAIKU if model == "claude-haiku" else SONNET_PROFILE
        assert raw.headers["x-gateway-route"].endswith(expected)


def test_bearer_key_over_tls(
    simulator: ServerThread, make_client: ClientFactory, tmp_path: Any, monkeypatch: Any
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    config = parse_config(gateway_settings(simulator.url))
    app_server = ServerThread(
        create_app(config, environ=ENVIRON), ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)
    ).start()
    try:
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", BEARER)
        client = make_client(app_server.url, verify=str(cafile))
        reply = client.converse(
            modelId="claude-sonnet",
            messages=[{"role": "user", "content": [{"text": "hi [sim:output_tokens=3]"}]}],
        )
        assert reply["usage"]["outputTokens"] == 3
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "gwk-not-a-key")
        with pytest.raises(client.exceptions.AccessDeniedException):
            make_client(app_server.url, verify=str(cafile)).converse(
                modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "x"}]}]
            )
    finally:
        app_server.stop()


# ---- errors, each raised by boto3 as its own exception class -------------------------------


def _converse(client: Any, model: str = "claude-sonnet", text: str = "hi") -> Any:
    return client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": text}]}])


def test_wrong_secret_is_access_denied(gateway: ServerThread, make_client: ClientFactory) -> None:
    client = make_client(gateway.url, secret="not-the-secret")
    with pytest.raises(client.exceptions.AccessDeniedException, match="signature"):
        _converse(client)


def test_unknown_key_is_access_denied(gateway: ServerThread, make_client: ClientFactory) -> None:
    client = make_client(gateway.url, key_id="GWNOSUCHKEY00000001")
    with pytest.raises(client.exceptions.AccessDeniedException, match="unknown access key"):
        _converse(client)


def test_tampered_body_is_access_denied(client: Any) -> None:
    def tamper(request: Any, **_: Any) -> None:
        request.body = request.body.replace(b"hello", b"HELLO")

    client.meta.events.register("before-send.bedrock-runtime.InvokeModel", tamper)
    with pytest.raises(client.exceptions.AccessDeniedException, match="does not match"):
        client.invoke_model(modelId="claude-sonnet", body=json.dumps(messages_body("hello")))


def test_stale_date_is_access_denied(simulator: ServerThread, make_client: ClientFactory) -> None:
    config = parse_config(gateway_settings(simulator.url))
    skewed = start_gateway(config, wall_clock=lambda: time.time() + 600)
    try:
        client = make_client(skewed.url)
        with pytest.raises(client.exceptions.AccessDeniedException, match="expired"):
            _converse(client)
    finally:
        skewed.stop()


def test_missing_credentials_are_access_denied(gateway: ServerThread) -> None:
    reply = httpx.post(f"{gateway.url}/model/claude-sonnet/converse", json={"messages": []})
    assert reply.status_code == 403
    assert reply.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "Missing Authentication Token" in reply.json()["message"]


def test_tenant_may_not_use_other_models(gateway: ServerThread, make_client: ClientFactory) -> None:
    client = make_client(gateway.url, key_id=OTHER_KEY_ID, secret="other-secret-0123456789")
    with pytest.raises(client.exceptions.AccessDeniedException, match="may not use"):
        _converse(client, "claude-sonnet")
    assert _converse(client, "claude-haiku")["usage"]["outputTokens"] > 0


def test_malformed_json_is_a_validation_error(client: Any) -> None:
    with pytest.raises(client.exceptions.ValidationException, match="not valid JSON"):
        client.invoke_model(modelId="claude-sonnet", body=b"{not json")


def test_unknown_model_is_a_validation_error(client: Any) -> None:
    with pytest.raises(client.exceptions.ValidationException, match="model identifier"):
        _converse(client, "no-such-model")


def test_oversized_body_is_a_validation_error(
    simulator: ServerThread, make_client: ClientFactory
) -> None:
    small = start_gateway(parse_config(gateway_settings(simulator.url, max_body_bytes=2048)))
    try:
        client = make_client(small.url)
        with pytest.raises(client.exceptions.ValidationException, match="larger than"):
            client.invoke_model(modelId="claude-sonnet",
                                body=json.dumps(messages_body("x" * 4096)))  # fmt: skip
    finally:
        small.stop()


def test_upstream_down_is_service_unavailable(make_client: ClientFactory) -> None:
    dead = start_gateway(parse_config(gateway_settings(f"http://127.0.0.1:{free_port()}")))
    try:
        client = make_client(dead.url)
        with pytest.raises(client.exceptions.ServiceUnavailableException, match="connect"):
            _converse(client)
    finally:
        dead.stop()


def test_upstream_timeout_is_model_timeout(
    simulator: ServerThread, make_client: ClientFactory
) -> None:
    settings = gateway_settings(simulator.url)
    settings["upstream"]["read_timeout_s"] = 0.3
    slow = start_gateway(parse_config(settings))
    try:
        client = make_client(slow.url)
        with pytest.raises(client.exceptions.ModelTimeoutException):
            _converse(client, text="slow [sim:ttft_ms=2000]")
    finally:
        slow.stop()


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, "ServiceUnavailableException"), (500, "InternalServerException"),
     (429, "ThrottlingException")],
)  # fmt: skip
def test_upstream_errors_pass_through_with_their_type(client: Any, status: int, error: str) -> None:
    with pytest.raises(getattr(client.exceptions, error)) as caught:
        _converse(client, text=f"fail [sim:status={status}]")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert "x-gateway-route" in caught.value.response["ResponseMetadata"]["HTTPHeaders"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/model/x/explode"), ("GET", "/nope"),
                                              ("POST", "/async-invoke")])  # fmt: skip
def test_unknown_paths_answer_in_bedrock_shape(
    gateway: ServerThread, method: str, path: str
) -> None:
    reply = httpx.request(method, gateway.url + path)
    assert reply.status_code == 404
    assert reply.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert set(reply.json()) == {"message"}


def test_health_and_metrics(gateway: ServerThread, client: Any) -> None:
    assert httpx.get(f"{gateway.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200
    assert ready.json()["components"]["credentials"] == "ok"
    _converse(client)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert (
        'gateway_requests_total{model="claude-sonnet",operation="Converse",outcome="success",'
        f'route="test/us-east-1/{SONNET}",tenant="team-a"}}' in metrics
    )
