"""Request cost: input estimates and output caps for every body kind, quota arithmetic, and
usage read back from headers, bodies and stream events."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cost
from gateway.cost import (
    IMAGE_TOKENS,
    MEDIA_TOKENS,
    Estimate,
    Usage,
    charge,
    estimate,
    reservation,
)
from gateway.simulator.tokens import input_tokens as simulated_tokens
from gateway.usage import StreamUsage, usage_from_body, usage_from_headers

MODEL_MAX = 64_000
PROSE = (
    "The gateway reserves quota before it forwards a request and settles the real usage "
    "afterwards, so a client that asks for too much waits instead of failing upstream. "
)
CODE = (
    "def retry_after(response, default=1.0):\n"
    '    """Seconds to wait before retrying, from the response headers."""\n'
    '    value = response.headers.get("x-amz-retry-after")\n'
    "    if value is None:\n"
    "        return default\n"
    "    return max(0.0, int(value) / 1000)\n"
)


def est(body: dict[str, Any], operation: str = "invoke") -> Estimate:
    return estimate(operation, body, default_max_tokens=MODEL_MAX)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def anthropic(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 512,
        **extra,
        "messages": list(messages),
    }


def converse(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


# --- text ---------------------------------------------------------------------------


def test_text_costs_grow_with_length_and_density() -> None:
    short, long = est(anthropic(user("hello"))), est(anthropic(user(PROSE * 10)))
    assert 0 < short.input_tokens < long.input_tokens
    # Same length, denser text: punctuation and digits cost more than words.
    words = "abcd " * 40
    marks = "{}[]:" * 40
    assert est(anthropic(user(marks))).input_tokens > 3 * est(anthropic(user(words))).input_tokens


def test_non_ascii_text_costs_about_a_token_per_character() -> None:
    chinese = "我们已经收到您的订单预计三天内发货" * 10  # 170 characters
    assert est(anthropic(user(chinese))).input_tokens >= 170
    assert est(anthropic(user(chinese))).input_tokens > est(anthropic(user("a" * 170))).input_tokens


def test_string_and_block_content_cost_the_same() -> None:
    as_str = anthropic(user(PROSE), system=PROSE)
    as_blocks = anthropic(
        user([{"type": "text", "text": PROSE}]),
        system=[{"type": "text", "text": PROSE, "cache_control": {"type": "ephemeral"}}],
    )
    assert est(as_str) == est(as_blocks)


def test_every_message_adds_its_overhead() -> None:
    one = est(anthropic(user("hi")))
    three = est(anthropic(user("hi"), {"role": "assistant", "content": "hi"}, user("hi")))
    assert three.input_tokens - one.input_tokens >= 2 * cost.MESSAGE_OVERHEAD


# --- Anthropic Messages ---------------------------------------------------------------


def test_anthropic_images_documents_and_thinking() -> None:
    base = est(anthropic(user("Describe it."))).input_tokens
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(300_000)},
    }
    with_image = est(anthropic(user([image, {"type": "text", "text": "Describe it."}])))
    assert with_image.input_tokens == base + IMAGE_TOKENS  # the image's size does not matter

    pdf = {"type": "document", "source": {"type": "base64", "data": b64(35_000)}}
    assert est(anthropic(user([pdf]))).input_tokens >= 10_000  # 35 KB at 3.5 bytes a token
    text_doc = {"type": "document", "source": {"type": "text", "data": PROSE * 20}}
    assert est(anthropic(user([text_doc]))).input_tokens > est(anthropic(user(PROSE))).input_tokens
    by_url = {"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}}
    assert est(anthropic(user([by_url]))).input_tokens >= cost.UNSEEN_DOCUMENT_TOKENS

    thinking = {
        "role": "assistant",
        "content": [{"type": "thinking", "thinking": PROSE * 5, "signature": "sig"}],
    }
    assert est(anthropic(user("q"), thinking)).input_tokens > 5 * len(PROSE) / 6


def test_anthropic_tools_tool_use_and_tool_result_all_count() -> None:
    tool = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": PROSE}
    plain = est(anthropic(user("Weather in Oslo?"))).input_tokens
    with_tool = est(anthropic(user("Weather in Oslo?"), tools=[tool])).input_tokens
    full = est(
        anthropic(
            user("Weather in Oslo?"),
            {"role": "assistant", "content": [use]},
            user([result]),
            tools=[tool],
        )
    ).input_tokens
    assert plain < with_tool < full
    schema_text = orjson.dumps(tool["input_schema"]).decode()
    assert with_tool - plain >= len(schema_text) / 4  # the schema is counted as JSON text


def test_anthropic_max_tokens_and_thinking_budget() -> None:
    assert est(anthropic(user("hi"))).max_output_tokens == 512
    no_cap = {"messages": [user("hi")]}
    assert est(no_cap).max_output_tokens == MODEL_MAX  # Bedrock reserves the model maximum
    assert est(anthropic(user("hi"), max_tokens=200_000)).max_output_tokens == 200_000
    assert est(anthropic(user("hi"), max_tokens=0)).max_output_tokens == 1
    assert est(anthropic(user("hi"), max_tokens=True)).max_output_tokens == MODEL_MAX
    assert est(anthropic(user("hi"), max_tokens="100")).max_output_tokens == MODEL_MAX
    thinking = {"type": "enabled", "budget_tokens": 4000}
    assert est(anthropic(user("hi"), max_tokens=8000, thinking=thinking)).max_output_tokens == 8000
    # A budget above max_tokens (interleaved thinking) raises the cap, never past the model.
    assert est(anthropic(user("hi"), max_tokens=1000, thinking=thinking)).max_output_tokens == 4000
    huge = {"type": "enabled", "budget_tokens": 10**6}
    assert est(anthropic(user("hi"), thinking=huge)).max_output_tokens == MODEL_MAX


def test_stream_operations_estimate_like_their_twins() -> None:
    body = anthropic(user(PROSE))
    assert est(body, "invoke-with-response-stream") == est(body, "invoke")
    body = converse({"role": "user", "content": [{"text": PROSE}]})
    assert est(body, "converse-stream") == est(body, "converse")


def test_unknown_operation_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="count-tokens"):
        est({}, "count-tokens")


# --- other InvokeModel bodies ---------------------------------------------------------


def test_nova_titan_llama_mistral_cohere_bodies() -> None:
    text = {"text": PROSE}
    nova = {
        "schemaVersion": "messages-v1",
        "system": [text],
        "messages": [user([text, {"image": {"format": "png", "source": {"bytes": "AA"}}}])],
        "inferenceConfig": {"max_new_tokens": 300},
    }
    assert est(nova) == Estimate(
        est(anthropic(user(PROSE), system=PROSE)).input_tokens + IMAGE_TOKENS, 300
    )
    prose = est(anthropic(user(PROSE))).input_tokens - cost.MESSAGE_OVERHEAD
    titan = {"inputText": PROSE, "textGenerationConfig": {"maxTokenCount": 256}}
    assert est(titan) == Estimate(prose, 256)
    assert est({"prompt": PROSE, "max_gen_len": 128}) == Estimate(prose, 128)  # Llama
    assert est({"prompt": PROSE, "max_tokens": 64}) == Estimate(prose, 64)  # Mistral
    assert est({"prompt": PROSE}).max_output_tokens == MODEL_MAX
    cohere = {
        "message": PROSE,
        "chat_history": [{"role": "USER", "message": PROSE}],
        "max_tokens": 99,
    }
    assert est(cohere).max_output_tokens == 99
    assert est(cohere).input_tokens >= 2 * prose


def test_unknown_body_shape_costs_its_whole_json() -> None:
    small = est({"text_prompts": [{"text": "a red fox"}], "cfg_scale": 7})
    big = est({"text_prompts": [{"text": "a red fox " * 100}], "cfg_scale": 7})
    assert small.max_output_tokens == MODEL_MAX
    assert 0 < small.input_tokens < big.input_tokens
    assert big.input_tokens >= len("a red fox " * 100) / 5


# --- Converse -------------------------------------------------------------------------


def test_converse_blocks_each_cost_what_they_carry() -> None:
    base = est(converse(user([{"text": "q"}])), "converse").input_tokens

    def plus(block: dict[str, Any]) -> int:
        return est(converse(user([{"text": "q"}, block])), "converse").input_tokens - base

    assert plus({"image": {"format": "png", "source": {"bytes": b64(90_000)}}}) == IMAGE_TOKENS
    assert plus({"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/k"}}}}) == (
        MEDIA_TOKENS
    )
    assert plus({"cachePoint": {"type": "default"}}) == 0
    doc = {"document": {"format": "pdf", "name": "Q3", "source": {"bytes": b64(35_000)}}}
    assert plus(doc) >= 10_000
    text_doc = {"document": {"format": "txt", "name": "n", "source": {"text": PROSE}}}
    assert plus(text_doc) >= len(PROSE) / 6
    use = {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": PROSE}}}
    assert plus(use) >= len(PROSE) / 6
    result = {"toolResult": {"toolUseId": "t1", "content": [{"json": {"rows": [PROSE]}}]}}
    assert plus(result) >= len(PROSE) / 6
    reasoning = {"reasoningContent": {"reasoningText": {"text": PROSE, "signature": "s"}}}
    assert plus(reasoning) >= len(PROSE) / 6


def test_converse_system_tools_and_caps() -> None:
    spec = {
        "toolSpec": {
            "name": "lookup",
            "description": PROSE,
            "inputSchema": {"json": {"type": "object"}},
        }
    }
    bare = converse(user([{"text": "q"}]))
    full = converse(
        user([{"text": "q"}]),
        system=[{"text": PROSE}, {"cachePoint": {"type": "default"}}],
        toolConfig={"tools": [spec, {"cachePoint": {"type": "default"}}]},
        inferenceConfig={"maxTokens": 700, "temperature": 0.5},
    )
    assert (
        est(full, "converse").input_tokens > est(bare, "converse").input_tokens + 2 * len(PROSE) / 6
    )
    assert est(full, "converse").max_output_tokens == 700
    assert est(bare, "converse").max_output_tokens == MODEL_MAX  # absent: the model maximum
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    small_cap = converse(
        user([{"text": "q"}]),
        inferenceConfig={"maxTokens": 1000},
        additionalModelRequestFields=thinking,
    )
    assert est(small_cap, "converse").max_output_tokens == 2048


# --- junk and calibration -------------------------------------------------------------


def test_junk_bodies_do_not_raise() -> None:
    junk = {
        "messages": [1, None, "x", {"content": 5}, {"content": [None, 3, {"type": 7}]}],
        "system": {"not": "a list"},
        "tools": [None, "t", {"name": 1}],
        "toolConfig": {"tools": "nope"},
    }
    assert est(junk).input_tokens >= 0
    assert est(junk, "converse").max_output_tokens == MODEL_MAX
    # Tool results nested far deeper than any real request.
    deep: Any = "leaf"
    for _ in range(400):
        deep = [{"type": "tool_result", "tool_use_id": "t", "content": deep}]
    assert est(anthropic(user(deep))).input_tokens > 0


def test_typical_bodies_sit_a_little_above_the_simulator() -> None:
    tool = {
        "name": "run_sql",
        "description": PROSE,
        "input_schema": {"type": "object", "properties": {"sql": {"type": "string"}}},
    }
    call = {"type": "tool_use", "id": "t", "name": "run_sql", "input": {"sql": "SELECT 1"}}
    use = {"role": "assistant", "content": [call]}
    result = {"type": "tool_result", "tool_use_id": "t", "content": "[[1]]"}
    bodies = [
        ("invoke", anthropic(user(PROSE * 4), system=PROSE)),
        ("invoke", anthropic(user(CODE * 6 + "What does it do?"))),
        ("invoke", anthropic(user("Totals: 1,234.56; 7,890.12; 3.14159 on 2025-03-05 " * 5))),
        ("invoke", anthropic(user("Die Größe der Bestellung prüfen wir später. " * 8))),
        ("invoke", anthropic(user(PROSE), use, user([result]), tools=[tool])),
        ("converse", converse(user([{"text": PROSE * 3}]), system=[{"text": PROSE}])),
    ]
    for operation, body in bodies:
        ratio = est(body, operation).input_tokens / simulated_tokens(operation, body)
        assert 1.0 <= ratio <= 1.25, (operation, ratio)


# --- quota arithmetic -----------------------------------------------------------------


def test_reservation_and_charge_apply_burndown() -> None:
    assert reservation(Estimate(1000, 500), 1.0) == 1500
    assert reservation(Estimate(1000, 500), 5.0) == 3500
    usage = Usage(input_tokens=100, output_tokens=40, cache_read_tokens=9000, cache_write_tokens=50)
    assert charge(usage, 1.0) == 190  # cache reads are not charged, cache writes are
    assert charge(usage, 5.0) == 350


def test_burndown_rounds_up_but_not_on_float_noise() -> None:
    assert charge(Usage(0, 3), 1.5) == 5  # 4.5 → 5
    assert charge(Usage(0, 10), 0.7) == 7  # 7.000000000000001 is still 7
    assert reservation(Estimate(0, 3), 1.1) == 4  # 3.3000000000000003 → 4
    assert charge(Usage(0, 0), 15.0) == 0
    with pytest.raises(ValueError, match="burndown"):
        charge(Usage(0, 1), -1.0)
    with pytest.raises(ValueError, match="burndown"):
        reservation(Estimate(0, 1), math.nan)


# --- usage from headers and bodies ----------------------------------------------------


def test_usage_from_headers_is_case_insensitive() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"X-Amzn-Bedrock-Input-Token-Count", b"120"),
        (b"x-amzn-bedrock-output-token-count", b"33"),
        (b"X-AMZN-BEDROCK-CACHE-READ-INPUT-TOKEN-COUNT", b"4000"),
        (b"x-amzn-bedrock-cache-write-input-token-count", b"7"),
    ]
    assert usage_from_headers(headers) == Usage(120, 33, 4000, 7)
    assert usage_from_headers(headers[:3]) == Usage(120, 33)  # no cache headers: zero


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"x-amzn-bedrock-input-token-count", b"12")],  # no output count
        [(b"x-amzn-bedrock-input-token-count", b"12"), (b"x-amzn-bedrock-output-token-count", b"")],
        [
            (b"x-amzn-bedrock-input-token-count", b"-1"),
            (b"x-amzn-bedrock-output-token-count", b"1"),
        ],
        [
            (b"x-amzn-bedrock-input-token-count", b"1"),
            (b"x-amzn-bedrock-output-token-count", b"1"),
            (b"x-amzn-bedrock-cache-read-input-token-count", b"lots"),
        ],
    ],
)
def test_usage_from_headers_rejects_missing_or_junk(headers: list[tuple[bytes, bytes]]) -> None:
    assert usage_from_headers(headers) is None


def test_usage_from_converse_and_invoke_bodies() -> None:
    converse_body = {
        "output": {},
        "usage": {
            "inputTokens": 10,
            "outputTokens": 20,
            "totalTokens": 30,
            "cacheReadInputTokens": 5,
            "cacheWriteInputTokens": 6,
        },
    }
    assert usage_from_body("converse", orjson.dumps(converse_body)) == Usage(10, 20, 5, 6)
    assert usage_from_body("converse-stream", orjson.dumps(converse_body)) == Usage(10, 20, 5, 6)
    anthropic_body = {
        "type": "message",
        "usage": {
            "input_tokens": 11,
            "output_tokens": 22,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 4,
        },
    }
    assert usage_from_body("invoke", orjson.dumps(anthropic_body)) == Usage(11, 22, 4, 3)
    nulls = {"usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": None}}
    assert usage_from_body("invoke", orjson.dumps(nulls)) == Usage(1, 2)
    nova = {"usage": {"inputTokens": 7, "outputTokens": 8, "cacheReadInputTokenCount": 1}}
    assert usage_from_body("invoke", orjson.dumps(nova)) == Usage(7, 8, 1, 0)
    openai = {"usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
    assert usage_from_body("invoke", orjson.dumps(openai)) == Usage(5, 6)
    # A Converse body names its fields differently: Anthropic names do not count there.
    assert usage_from_body("converse", orjson.dumps(anthropic_body)) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"usage"',
        b'{"usage": "many"}',
        b'{"usage": {}}',
        b'{"usage": {"input_tokens": 1}}',
        b'{"usage": {"input_tokens": -1, "output_tokens": 2}}',
        b'{"usage": {"input_tokens": 1.5, "output_tokens": 2}}',
        b'{"usage": {"input_tokens": true, "output_tokens": 2}}',
        b'{"usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": "x"}}',
        b"\xff\xfe",
    ],
)
def test_usage_from_body_tolerates_junk(body: bytes) -> None:
    assert usage_from_body("invoke", body) is None


# --- stream accumulator ---------------------------------------------------------------


def test_converse_stream_usage_comes_from_metadata() -> None:
    stream = StreamUsage()
    stream.feed_converse_event("messageStart", {"role": "assistant"})
    stream.feed_converse_event(
        "contentBlockDelta", {"delta": {"text": PROSE}, "contentBlockIndex": 0}
    )
    assert stream.usage() is None
    partial = stream.best_known(Estimate(900, 4000))
    assert partial.input_tokens == 900  # estimated until Bedrock says otherwise
    assert len(PROSE) / 6 <= partial.output_tokens <= len(PROSE) / 2  # from the deltas
    metadata = {
        "usage": {
            "inputTokens": 812,
            "outputTokens": 41,
            "totalTokens": 853,
            "cacheReadInputTokens": 100,
        },
        "metrics": {"latencyMs": 5},
    }
    stream.feed_converse_event("metadata", metadata)
    assert stream.usage() == stream.best_known(Estimate(900, 4000)) == Usage(812, 41, 100, 0)


def anthropic_chunks(*deltas: int) -> list[dict[str, Any]]:
    start = {
        "type": "message_start",
        "message": {
            "role": "assistant",
            "usage": {
                "input_tokens": 25,
                "output_tokens": 1,
                "cache_read_input_tokens": 300,
                "cache_creation_input_tokens": 40,
            },
        },
    }
    text = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello there, how are you?"},
    }
    ends = [
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": n}}
        for n in deltas
    ]
    return [start, text, *ends]


def test_invoke_stream_output_is_cumulative_take_the_last() -> None:
    stream = StreamUsage()
    for chunk in anthropic_chunks()[:2]:
        stream.feed_invoke_chunk(chunk)
    assert stream.usage() is None  # message_start's output count is only a placeholder
    partial = stream.best_known(Estimate(999, 100))
    assert partial == Usage(25, partial.output_tokens, 300, 40)
    assert 7 <= partial.output_tokens <= 10  # "Hello there, how are you?" is 7 tokens
    for chunk in anthropic_chunks(10, 42)[2:]:
        stream.feed_invoke_chunk(chunk)
    assert stream.usage() == Usage(25, 42, 300, 40)  # 42, not 10 + 42
    assert stream.best_known(Estimate(999, 100)) == Usage(25, 42, 300, 40)


def test_invocation_metrics_win_over_the_model_events() -> None:
    stream = StreamUsage()
    for chunk in anthropic_chunks(42):
        stream.feed_invoke_chunk(chunk)
    stop = {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 26,
            "outputTokenCount": 43,
            "invocationLatency": 900,
            "firstByteLatency": 200,
            "cacheReadInputTokenCount": 301,
        },
    }
    stream.feed_invoke_chunk(stop)
    # Metrics win; a cache count they leave out keeps what message_start said.
    assert stream.usage() == Usage(26, 43, 301, 40)
    assert stream.best_known(Estimate(1, 1)) == Usage(26, 43, 301, 40)


def test_stream_accumulator_ignores_junk() -> None:
    stream = StreamUsage()
    stream.feed_invoke_chunk({"type": "message_start", "message": "nope"})
    stream.feed_invoke_chunk({"type": "message_delta", "usage": {"output_tokens": "many"}})
    stream.feed_invoke_chunk({"type": "content_block_delta", "delta": [1, 2]})
    stream.feed_invoke_chunk({"amazon-bedrock-invocationMetrics": {"inputTokenCount": None}})
    stream.feed_converse_event("metadata", {"usage": {"inputTokens": -3, "outputTokens": 1}})
    stream.feed_converse_event("contentBlockDelta", {"delta": None})
    assert stream.usage() is None
    assert stream.best_known(Estimate(50, 10)) == Usage(50, 0)


# --- properties -----------------------------------------------------------------------

texts = st.text(max_size=300)


@given(texts, texts)
def test_appending_text_never_lowers_the_estimate(head: str, tail: str) -> None:
    for operation, wrap in (("invoke", user), ("converse", lambda t: user([{"text": t}]))):
        shorter = est({"messages": [wrap(head)]}, operation).input_tokens
        longer = est({"messages": [wrap(head + tail)]}, operation).input_tokens
        more = est({"messages": [wrap(head), wrap(tail)]}, operation).input_tokens
        assert shorter <= longer
        assert shorter + cost.MESSAGE_OVERHEAD <= more


@given(
    st.integers(0, 10**6),
    st.integers(1, 10**6),
    st.floats(0, 20, allow_nan=False),
    st.data(),
)
def test_reservation_covers_the_charge_when_the_estimate_does(
    est_input: int, max_output: int, burndown: float, data: st.DataObject
) -> None:
    # If the estimate covers the prompt (uncached + cache writes + cache reads) and the output
    # stays within its cap, settling never costs more than was reserved.
    inp = data.draw(st.integers(0, est_input))
    write = data.draw(st.integers(0, est_input - inp))
    read = data.draw(st.integers(0, est_input - inp - write))
    out = data.draw(st.integers(0, max_output))
    usage = Usage(inp, out, read, write)
    assert charge(usage, burndown) <= reservation(Estimate(est_input, max_output), burndown)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
keys = st.sampled_from(
    [
        "messages",
        "system",
        "tools",
        "toolConfig",
        "content",
        "text",
        "type",
        "prompt",
        "inputText",
        "message",
        "max_tokens",
        "inferenceConfig",
        "source",
        "toolResult",
    ]
)


@given(
    st.sampled_from(["invoke", "converse"]),
    st.dictionaries(keys, json_values | st.lists(st.dictionaries(keys, json_values), max_size=3)),
)
def test_any_json_body_gives_a_sane_estimate(operation: str, body: dict[str, Any]) -> None:
    result = est(body, operation)
    assert result.input_tokens >= 0
    assert result.max_output_tokens >= 1
