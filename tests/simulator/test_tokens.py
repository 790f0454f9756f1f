"""The simulator's tokenizer: deterministic, tokenizer-like, and exact for generated output."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.simulator.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    count_tokens,
    input_tokens,
    output_pieces,
    output_text,
)


def test_counts_words_numbers_and_punctuation() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello") == 1
    assert count_tokens("hello world") == 2  # a single space rides on the next word
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("12345") == 2  # digits go in groups of three
    assert count_tokens("a\n\nb") == 3  # a newline run is a token


def test_long_words_split_every_four_characters() -> None:
    assert count_tokens("abcdef") == 1
    assert count_tokens("abcdefg") == 2
    assert count_tokens("internationalization") == 5  # 20 letters


def test_is_not_a_character_ratio() -> None:
    # Same length, very different counts: the estimator has to model text, not bytes.
    assert count_tokens("a " * 50) == 50
    assert count_tokens("abcd" * 25) == 25
    assert count_tokens("!" * 100) == 100


@given(st.text(max_size=400))
def test_deterministic_and_bounded(text: str) -> None:
    count = count_tokens(text)
    assert count == count_tokens(text)
    assert len(text.split()) <= count <= len(text)  # every word costs, no char costs twice


@given(st.integers(min_value=0, max_value=3000))
def test_generated_output_has_exactly_n_tokens(n: int) -> None:
    assert count_tokens(output_text(n)) == n


def test_output_pieces_are_one_token_each() -> None:
    pieces = list(output_pieces(200))
    assert len(pieces) == 200
    assert all(count_tokens(p) == 1 for p in pieces)
    assert "".join(pieces) == output_text(200)


def test_messages_body_counts_every_part() -> None:
    tool = {"name": "lookup", "description": "Find a thing", "input_schema": {"type": "object"}}
    body = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "What is up?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                ],
            },
        ],
        "tools": [tool],
    }
    expected = (
        count_tokens("Be brief.")
        + 3 * MESSAGE_OVERHEAD
        + count_tokens("What is up?")
        + count_tokens("lookup")
        + count_tokens(orjson.dumps({"q": 1}).decode())
        + count_tokens("done")
        + IMAGE_TOKENS
        + count_tokens("lookup")
        + count_tokens("Find a thing")
        + count_tokens('{"type":"object"}')
    )
    assert input_tokens("invoke", body) == expected


def test_system_blocks_count_like_a_string() -> None:
    as_text = {"system": "Be brief.", "messages": []}
    as_blocks = {"system": [{"type": "text", "text": "Be brief."}], "messages": []}
    assert input_tokens("invoke", as_text) == input_tokens("invoke", as_blocks) > 0


def test_converse_body_counts_every_part() -> None:
    body = {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "What is up?"}, {"image": {"format": "png"}}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}],
            },
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "ok"}]}}],
            },
        ],
        "toolConfig": {
            "tools": [
                {"toolSpec": {"name": "f", "description": "Do it", "inputSchema": {"json": {}}}}
            ]
        },
    }
    expected = (
        count_tokens("Be brief.")
        + 3 * MESSAGE_OVERHEAD
        + count_tokens("What is up?")
        + IMAGE_TOKENS
        + count_tokens("f")
        + count_tokens("{}")
        + count_tokens("ok")
        + count_tokens("f")
        + count_tokens("Do it")
        + count_tokens("{}")
    )
    assert input_tokens("converse", body) == expected


def test_same_text_costs_the_same_in_both_forms() -> None:
    text = "The rain in Spain stays mainly in the plain, 1234 times."
    invoke = {"messages": [{"role": "user", "content": text}]}
    converse = {"messages": [{"role": "user", "content": [{"text": text}]}]}
    assert input_tokens("invoke", invoke) == input_tokens("converse", converse)


def test_garbage_shapes_do_not_crash() -> None:
    weird = {"system": 5, "messages": [None, {"content": 7}, {"content": [1, {"type": "x"}]}]}
    assert input_tokens("invoke", weird) == 2 * MESSAGE_OVERHEAD
    assert input_tokens("converse", {"messages": "no", "toolConfig": {"tools": [None]}}) == 0
