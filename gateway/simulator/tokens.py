"""The simulator's tokenizer: the ground truth the gateway's own estimator is measured against.

Deterministic and tokenizer-like (not ``len / 4``): words, digit groups, punctuation and
whitespace runs are tokens, long words split every four characters. Also counts request bodies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from itertools import cycle
from typing import Any

import orjson

from gateway.simulator.config import CountingConfig

# A lone space is not a token: like BPE's " word", it rides on the word after it.
_TOKEN = re.compile(r"[A-Za-z]+|\d{1,3}|[^\S ]+| {2,}|\S")
_SHORT_WORD = 6  # words up to this length are one token; longer ones gain one per 4 chars

IMAGE_TOKENS = 1600  # a fixed cost per image, about what Claude charges a 1 MP image
MEDIA_TOKENS = 3000  # video / audio blocks: there is no text to count
MESSAGE_OVERHEAD = 3  # role markers and separators around each message
BYTES_PER_TOKEN = 4  # binary documents, for which only the size is known

# Output vocabulary: every word is at most _SHORT_WORD letters, so each piece is one token.
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "bold",
    "wizard",
    "calmly",
    "mix",
    "warm",
    "jam",
    "for",
    "sixty",
    "hungry",
    "otters",
    "near",
    "the",
    "old",
    "river",
    "and",
    "every",
    "cloud",
    "drifts",
    "east",
]
_SENTENCE = 11  # a full stop after every eleventh word


def count_tokens(text: str) -> int:
    """Tokens in ``text``: the same text always gives the same count."""
    pieces = _TOKEN.findall(text)
    extra = sum((len(p) - 3) // 4 for p in pieces if len(p) > _SHORT_WORD)
    return len(pieces) + extra


def json_tokens(value: Any) -> int:
    """Tokens of a JSON value as the model would see it (compact JSON text)."""
    if isinstance(value, str):
        return count_tokens(value)
    return count_tokens(orjson.dumps(value).decode())


def output_pieces(n: int) -> Iterator[str]:
    """``n`` strings of exactly one token each; joined, they count as ``n`` tokens."""
    words = cycle(_WORDS)
    for i in range(n):
        if i % (_SENTENCE + 1) == _SENTENCE:
            yield "."
        else:
            word = next(words)
            yield word.capitalize() if i == 0 else " " + word


def output_text(n: int) -> str:
    """Generated model output of exactly ``n`` tokens."""
    return "".join(output_pieces(n))


def non_ascii_chars(body: Mapping[str, Any]) -> int:
    """Non-ASCII characters in a parsed body (each one token to the built-in tokenizer)."""
    text = orjson.dumps(body).decode()
    return len(text) - len(text.encode("ascii", "ignore"))


def counted(counting: CountingConfig, model: str, tokens: int, body: Mapping[str, Any]) -> int:
    """``tokens`` (the built-in count of ``body``) as an upstream with ``counting``'s bias
    counts them; the body is scanned for non-ASCII text only when that bias is set."""
    foreign = non_ascii_chars(body) if counting.non_ascii_scale != 1.0 else 0
    return counting.adjust(model, tokens, foreign)


def input_tokens(operation: str, body: Mapping[str, Any]) -> int:
    """Input tokens of a request body: ``operation`` is ``invoke`` (Anthropic Messages)
    or ``converse``; the body is assumed to have passed validation of its top-level shape."""
    if operation == "converse":
        return _converse_tokens(body)
    return _messages_tokens(body)


def _listed(value: Any) -> list[Any]:
    """``value`` if it is a list, else nothing: a field of the wrong type counts no tokens (the
    model's validation is what refuses it), where iterating it would fail (``"tools": true``)."""
    return value if isinstance(value, list) else []


# --- Anthropic Messages (InvokeModel) -------------------------------------------------


def _messages_tokens(body: Mapping[str, Any]) -> int:
    total = _anthropic_content(body.get("system"))
    for message in _listed(body.get("messages")):
        if isinstance(message, Mapping):
            total += MESSAGE_OVERHEAD + _anthropic_content(message.get("content"))
    for tool in _listed(body.get("tools")):
        if isinstance(tool, Mapping):
            total += _tool_tokens(
                tool.get("name"), tool.get("description"), tool.get("input_schema")
            )
    return total


def _anthropic_content(content: Any) -> int:
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    return sum(_anthropic_block(b) for b in content if isinstance(b, Mapping))


def _anthropic_block(block: Mapping[str, Any]) -> int:
    kind = block.get("type")
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "tool_use":
        return json_tokens(block.get("name") or "") + json_tokens(block.get("input") or {})
    if kind == "tool_result":
        return _anthropic_content(block.get("content"))
    if kind == "document":
        return _anthropic_document(block.get("source"))
    if kind == "thinking":
        return count_tokens(str(block.get("thinking") or ""))
    text = block.get("text")
    return count_tokens(text) if isinstance(text, str) else 0


def _anthropic_document(source: Any) -> int:
    if not isinstance(source, Mapping):
        return 0
    data = source.get("data")
    if source.get("type") == "text" and isinstance(data, str):
        return count_tokens(data)
    if isinstance(data, str):  # base64: three bytes per four characters
        return len(data) * 3 // 4 // BYTES_PER_TOKEN
    return _anthropic_content(source.get("content"))


def _tool_tokens(name: Any, description: Any, schema: Any) -> int:
    total = json_tokens(name or "") + json_tokens(description or "")
    return total + (json_tokens(schema) if schema is not None else 0)


# --- Converse --------------------------------------------------------------------------


def _converse_tokens(body: Mapping[str, Any]) -> int:
    total = sum(_converse_block(b) for b in _listed(body.get("system")) if isinstance(b, Mapping))
    for message in _listed(body.get("messages")):
        if isinstance(message, Mapping):
            total += MESSAGE_OVERHEAD + _converse_content(message.get("content"))
    tool_config = body.get("toolConfig")
    tools = tool_config.get("tools") if isinstance(tool_config, Mapping) else None
    for tool in _listed(tools):
        spec = tool.get("toolSpec") if isinstance(tool, Mapping) else None
        if isinstance(spec, Mapping):
            schema = spec.get("inputSchema")
            schema = schema.get("json") if isinstance(schema, Mapping) else None
            total += _tool_tokens(spec.get("name"), spec.get("description"), schema)
    return total


def _converse_content(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(_converse_block(b) for b in content if isinstance(b, Mapping))


def _converse_block(block: Mapping[str, Any]) -> int:
    total = 0
    for key, value in block.items():
        if key == "text" and isinstance(value, str):
            total += count_tokens(value)
        elif key == "image":
            total += IMAGE_TOKENS
        elif key in ("video", "audio"):
            total += MEDIA_TOKENS
        elif key == "document" and isinstance(value, Mapping):
            total += _converse_document(value)
        elif key == "toolUse" and isinstance(value, Mapping):
            total += json_tokens(value.get("name") or "") + json_tokens(value.get("input") or {})
        elif key == "toolResult" and isinstance(value, Mapping):
            total += _converse_content(value.get("content"))
        elif key == "json":
            total += json_tokens(value)
        elif key in ("guardContent", "reasoningContent") and isinstance(value, Mapping):
            total += _nested_text(value)
    return total


def _converse_document(document: Mapping[str, Any]) -> int:
    source = document.get("source")
    total = count_tokens(str(document.get("name") or ""))
    if not isinstance(source, Mapping):
        return total
    if isinstance(source.get("text"), str):
        return total + count_tokens(source["text"])
    data = source.get("bytes")
    if isinstance(data, str | bytes):  # JSON carries the bytes base64-encoded
        return total + len(data) * 3 // 4 // BYTES_PER_TOKEN
    return total + _converse_content(source.get("content"))


def _nested_text(value: Mapping[str, Any]) -> int:
    # guardContent {text: {text}} and reasoningContent {reasoningText: {text}}
    for inner in value.values():
        if isinstance(inner, Mapping) and isinstance(inner.get("text"), str):
            return count_tokens(inner["text"])
    return 0
