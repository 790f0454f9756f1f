"""The simulator app in process (httpx ASGI transport) on a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
import orjson
import pytest

from gateway.simulator.tokens import count_tokens
from tests.simulator.conftest import ManualClock, SimFactory, converse_body, messages_body

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET_4 = "us.anthropic.claude-sonnet-4-20250514-v1:0"
THROTTLE_BODY = b'{"message":"Too many tokens, please wait before trying again."}'
CORAL = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
SIGV4 = (
    "AWS4-HMAC-SHA256 Credential=AKID/20260101/{region}/bedrock/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


async def invoke(
    client: httpx.AsyncClient, body: bytes, model: str = HAIKU, op: str = "invoke", **headers: str
) -> httpx.Response:
    return await client.post(f"/model/{model}/{op}", content=body, headers=headers)


async def pool_stats(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/_simulator/stats", params=query)
    assert response.status_code == 200
    pools: list[dict[str, Any]] = response.json()["pools"]
    return pools


def error_type(response: httpx.Response) -> str:
    return response.headers["x-amzn-errortype"].removesuffix(CORAL)


async def test_invoke_response_shape_and_headers(make_sim: SimFactory) -> None:
    _, client = make_sim()
    response = await invoke(client, messages_body("Say hi [sim:output_tokens=9]"))
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == HAIKU
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    assert body["usage"]["output_tokens"] == 9
    assert count_tokens(body["content"][0]["text"]) == 9
    headers = response.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-bedrock-output-token-count"] == "9"
    assert headers["x-amzn-bedrock-input-token-count"] == str(body["usage"]["input_tokens"])
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0
    assert headers["x-amzn-requestid"]


async def test_output_is_capped_at_max_tokens(make_sim: SimFactory) -> None:
    _, client = make_sim()
    response = await invoke(client, messages_body(max_tokens=5), **{"x-sim-output-tokens": "50"})
    body = response.json()
    assert body["usage"]["output_tokens"] == 5
    assert body["stop_reason"] == "max_tokens"


async def test_converse_shape_and_default_output(make_sim: SimFactory) -> None:
    _, client = make_sim(default_output_tokens=12)
    response = await invoke(client, converse_body("Hi there"), op="converse")
    assert response.status_code == 200
    body = response.json()
    assert body["stopReason"] == "end_turn"
    assert body["output"]["message"]["role"] == "assistant"
    assert count_tokens(body["output"]["message"]["content"][0]["text"]) == 12
    usage = body["usage"]
    assert usage["outputTokens"] == 12
    assert usage["totalTokens"] == usage["inputTokens"] + 12
    assert "latencyMs" in body["metrics"]
    assert response.headers["x-amzn-bedrock-output-token-count"] == "12"


async def test_converse_without_max_tokens_reserves_the_default(make_sim: SimFactory) -> None:
    _, client = make_sim(default_quota={"tpm": 4000}, converse_default_max_tokens=4096)
    response = await invoke(client, converse_body(max_tokens=None), op="converse")
    assert response.status_code == 400
    assert "max_tokens 4096" in response.json()["message"]


async def test_burndown_and_settled_tokens(make_sim: SimFactory) -> None:
    _, client = make_sim()
    response = await invoke(client, messages_body("[sim:output_tokens=10]"), model=SONNET_4)
    inputs = response.json()["usage"]["input_tokens"]
    (pool,) = await pool_stats(client)
    assert pool["burndown"] == 5
    assert pool["tokens"] == inputs + 10 * 5
    assert pool["in_flight"] == 0


async def test_throttle_has_bedrock_wire_shape(make_sim: SimFactory) -> None:
    _, client = make_sim(default_quota={"tpm": 1000})
    body = messages_body(max_tokens=600, text="[sim:output_tokens=600]")
    assert (await invoke(client, body)).status_code == 200
    response = await invoke(client, body)
    assert response.status_code == 429
    assert response.headers["x-amzn-errortype"] == "ThrottlingException" + CORAL
    assert response.content == THROTTLE_BODY
    assert len(response.content) == 63  # what real Bedrock sends
    assert "x-amz-retry-after" not in response.headers  # Bedrock sends no hint
    assert response.headers["x-amzn-requestid"]


async def test_rolling_minute_on_the_manual_clock(make_sim: SimFactory) -> None:
    clock = ManualClock()
    _, client = make_sim(clock=clock, default_quota={"tpm": 1000})
    body = messages_body(max_tokens=400, text="[sim:output_tokens=400]")
    assert (await invoke(client, body)).status_code == 200
    clock.advance(30)
    assert (await invoke(client, body)).status_code == 200
    assert (await invoke(client, body)).status_code == 429
    clock.advance(30)  # the first request's start leaves the window
    assert (await invoke(client, body)).status_code == 200
    (pool,) = await pool_stats(client)
    assert pool["max_rolling_60s_tokens"] <= 1000
    assert (pool["admitted"], pool["throttled"]) == (3, 1)


async def test_requests_per_minute_message(make_sim: SimFactory) -> None:
    _, client = make_sim(default_quota={"rpm": 1})
    assert (await invoke(client, messages_body())).status_code == 200
    response = await invoke(client, messages_body())
    assert response.status_code == 429
    assert response.json()["message"] == "Too many requests, please wait before trying again."
    (pool,) = await pool_stats(client)
    assert pool["throttled_by"]["requests_per_minute"] == 1


async def test_tokens_per_day_message_and_utc_day_rollover(make_sim: SimFactory) -> None:
    wall = ManualClock(86_400 * 20_000 + 86_000)  # 400 s before a UTC midnight
    clock = ManualClock()
    _, client = make_sim(clock=clock, wall=wall, default_quota={"tokens_per_day": 300})
    body = messages_body(max_tokens=200, text="[sim:output_tokens=200]")
    assert (await invoke(client, body)).status_code == 200
    clock.advance(120)
    wall.advance(120)
    response = await invoke(client, body)
    assert response.status_code == 429
    assert response.json()["message"] == "Too many tokens per day, please wait before trying again."
    clock.advance(300)
    wall.advance(300)
    assert (await invoke(client, body)).status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "Malformed input request"),
        (b"[1, 2]", "expected type: JSONObject"),
        (orjson.dumps({"messages": []}), "required key [max_tokens] not found"),
        (orjson.dumps({"max_tokens": "10", "messages": []}), "#/max_tokens"),
        (orjson.dumps({"max_tokens": 0, "messages": []}), "#/max_tokens"),
        (orjson.dumps({"max_tokens": 10}), "required key [messages] not found"),
        (orjson.dumps({"max_tokens": 10, "messages": {}}), "#/messages"),
    ],
)
async def test_bad_invoke_bodies_are_validation_errors(
    make_sim: SimFactory, body: bytes, fragment: str
) -> None:
    _, client = make_sim()
    response = await invoke(client, body)
    assert response.status_code == 400
    assert error_type(response) == "ValidationException"
    assert fragment in response.json()["message"]


async def test_bad_converse_bodies_are_validation_errors(make_sim: SimFactory) -> None:
    _, client = make_sim()
    for body in [{}, {"messages": [], "inferenceConfig": {"maxTokens": 0}}, {"messages": 3}]:
        response = await invoke(client, orjson.dumps(body), op="converse")
        assert response.status_code == 400, body
        assert error_type(response) == "ValidationException"


async def test_a_reservation_over_the_whole_tpm_is_a_validation_error(make_sim: SimFactory) -> None:
    _, client = make_sim(default_quota={"tpm": 1000})
    response = await invoke(client, messages_body(max_tokens=1001))
    assert response.status_code == 400
    assert error_type(response) == "ValidationException"
    assert "1000 tokens per minute" in response.json()["message"]
    (pool,) = await pool_stats(client)
    assert (pool["rejected"], pool["throttled"]) == (1, 0)


@pytest.mark.parametrize(
    ("status", "shape"),
    [
        (503, "ServiceUnavailableException"),
        (500, "InternalServerException"),
        (429, "ThrottlingException"),
        (408, "ModelTimeoutException"),
        (424, "ModelErrorException"),
        (400, "ValidationException"),
    ],
)
async def test_fault_directives(make_sim: SimFactory, status: int, shape: str) -> None:
    _, client = make_sim()
    response = await invoke(client, messages_body(f"boom [sim:status={status}]"))
    assert response.status_code == status
    assert error_type(response) == shape
    assert "message" in response.json()
    assert await pool_stats(client) == []  # a fault comes before any quota is touched


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/model/{HAIKU}/invoke"),
        ("POST", f"/model/{HAIKU}/frobnicate"),
        ("POST", "/nothing/here"),
        ("GET", "/_simulator/nope"),
    ],
)
async def test_unknown_paths_are_404(make_sim: SimFactory, method: str, path: str) -> None:
    _, client = make_sim()
    response = await client.request(method, path, content=b"{}")
    assert response.status_code == 404
    assert error_type(response) == "UnknownOperationException"


async def test_pools_are_keyed_by_region_and_decoded_model(make_sim: SimFactory) -> None:
    _, client = make_sim(default_region="eu-central-1")
    await invoke(client, messages_body(), model="us.anthropic.claude-3-haiku-20240307-v1%3A0")
    await invoke(client, messages_body(), model="us.anthropic.claude-3-haiku-20240307-v1:0")
    signed = SIGV4.format(region="ap-south-1")
    await invoke(
        client,
        messages_body(),
        model="us.anthropic.claude-3-haiku-20240307-v1:0",
        authorization=signed,
    )
    await invoke(client, messages_body(), authorization="Bearer abc")
    pools = await pool_stats(client)
    keys = {(p["region"], p["model"], p["admitted"]) for p in pools}
    assert keys == {
        ("eu-central-1", "us.anthropic.claude-3-haiku-20240307-v1:0", 2),
        ("ap-south-1", "us.anthropic.claude-3-haiku-20240307-v1:0", 1),
        ("eu-central-1", HAIKU, 1),
    }


async def test_put_pools_lowers_a_live_quota_and_reset_keeps_it(make_sim: SimFactory) -> None:
    _, client = make_sim(pools=[{"model": HAIKU, "tpm": 50_000}])
    assert (await invoke(client, messages_body(max_tokens=500))).status_code == 200
    response = await client.put("/_simulator/pools", json=[{"model": HAIKU, "tpm": 300, "rpm": 5}])
    assert response.status_code == 200
    assert (await client.get("/_simulator/pools")).json() == {
        "pools": [{"model": HAIKU, "tpm": 300, "rpm": 5}]
    }
    assert (await invoke(client, messages_body(max_tokens=500))).status_code == 400
    (pool,) = await pool_stats(client)
    assert (pool["tpm"], pool["rpm"]) == (300, 5)

    assert (await client.post("/_simulator/reset")).status_code == 200
    assert await pool_stats(client) == []
    await invoke(client, messages_body(max_tokens=100))
    (pool,) = await pool_stats(client)
    assert (pool["tpm"], pool["admitted"], pool["rejected"]) == (300, 1, 0)

    await client.post("/_simulator/reset", params={"config": "1"})
    await invoke(client, messages_body(max_tokens=100))
    (pool,) = await pool_stats(client)
    assert pool["tpm"] == 50_000


async def test_put_pools_rejects_bad_lists(make_sim: SimFactory) -> None:
    _, client = make_sim()
    for body in [b"{}", b"[{}]", b'[{"model": "m", "tpm": -1}]', b"nope"]:
        response = await client.put("/_simulator/pools", content=body)
        assert response.status_code == 400, body
        assert error_type(response) == "ValidationException"


async def test_stats_shape_and_timeline(make_sim: SimFactory) -> None:
    clock, wall = ManualClock(500.0), ManualClock(1_800_000_000.25)
    _, client = make_sim(clock=clock, wall=wall, default_quota={"tpm": 10_000, "rpm": 100})
    await invoke(client, messages_body("[sim:output_tokens=3]"))
    clock.advance(2)
    wall.advance(2)
    await invoke(client, messages_body("[sim:output_tokens=3]"))
    document = (await client.get("/_simulator/stats", params={"timeline": "1"})).json()
    assert document["mode"] == "rolling"
    (pool,) = document["pools"]
    assert set(pool) >= {
        "region", "model", "tpm", "rpm", "tokens_per_day", "admitted", "throttled",
        "throttled_by", "requests", "tokens", "in_flight", "max_rolling_60s_tokens",
        "max_rolling_60s_requests", "timeline",
    }  # fmt: skip
    per_request = pool["tokens"] // 2
    assert pool["timeline"] == [
        {"second": 1_800_000_000, "tokens": per_request, "requests": 1},
        {"second": 1_800_000_002, "tokens": per_request, "requests": 1},
    ]
    assert "timeline" not in (await pool_stats(client))[0]


async def test_reservation_is_held_during_latency(make_sim: SimFactory) -> None:
    _, client = make_sim()
    body = messages_body("[sim:ttft_ms=100] [sim:output_tokens=1]", max_tokens=700)
    request = asyncio.create_task(invoke(client, body))
    pools: list[dict[str, Any]] = []
    while not pools or pools[0]["in_flight"] == 0:  # wait until it has been admitted
        await asyncio.sleep(0.005)
        pools = await pool_stats(client)
    assert pools[0]["window_tokens"] > 700  # input + max_tokens, not the 1-token answer
    response = await asyncio.wait_for(request, 5)
    (after,) = await pool_stats(client)
    assert after["in_flight"] == 0
    assert after["window_tokens"] == response.json()["usage"]["input_tokens"] + 1


async def test_health(make_sim: SimFactory) -> None:
    _, client = make_sim()
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_a_bug_is_a_500_without_traceback(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = make_sim()

    def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.sim.registry, "pool", broken)
    response = await invoke(client, messages_body())
    assert response.status_code == 500
    assert error_type(response) == "InternalServerException"
    assert b"secret" not in response.content
    assert b"Traceback" not in response.content


async def test_lifespan_protocol(make_sim: SimFactory) -> None:
    app, _ = make_sim()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize(
    ("counting", "factor"),
    [({"scale": 1.05}, 1.05), ({"scale": 0.9}, 0.9),
     ({"models": {"claude-3-haiku": 1.2, "claude": 0.5}}, 1.2)],
)  # fmt: skip
async def test_counting_bias_scales_every_input_count(
    make_sim: SimFactory, counting: dict[str, Any], factor: float
) -> None:
    # An upstream that counts differently from the built-in tokenizer, the same way in the
    # answer's usage, its headers, the quota it charges and CountTokens.
    text = "A question of some length about quotas, " * 20
    _, plain = make_sim()
    _, biased = make_sim(counting=counting)
    body = messages_body(text, max_tokens=5)
    base = (await invoke(plain, body)).json()["usage"]["input_tokens"]
    answer = await invoke(biased, body)
    assert answer.json()["usage"]["input_tokens"] == round(base * factor)
    assert answer.headers["x-amzn-bedrock-input-token-count"] == str(round(base * factor))
    stats = (await pool_stats(biased))[0]
    assert stats["tokens"] == round(base * factor) + answer.json()["usage"]["output_tokens"]
    counted = orjson.dumps({"input": {"converse": orjson.loads(converse_body(text))}})
    plain_count = (await invoke(plain, counted, op="count-tokens")).json()["inputTokens"]
    biased_count = (await invoke(biased, counted, op="count-tokens")).json()["inputTokens"]
    assert biased_count == round(plain_count * factor)


async def test_non_ascii_bias_applies_to_foreign_text_only(make_sim: SimFactory) -> None:
    _, plain = make_sim()
    _, biased = make_sim(counting={"non_ascii_scale": 2.0})
    english = messages_body("plain english words " * 10, max_tokens=5)
    japanese = messages_body("日本語の文章です" * 10, max_tokens=5)
    for body, grows in ((english, False), (japanese, True)):
        base = (await invoke(plain, body)).json()["usage"]["input_tokens"]
        seen = (await invoke(biased, body)).json()["usage"]["input_tokens"]
        assert (seen > base * 1.5) is grows, (base, seen)
