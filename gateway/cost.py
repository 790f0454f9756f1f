"""Token cost of one request: the input estimate and output cap reserved before forwarding, and
the quota a reservation and a reported usage each cost under docs/bedrock.md §4 (reserve input +
max_tokens × burndown, settle input + cacheWrite + output × burndown). usage.py reads usage."""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Per-character token weights, fitted over bench/estimator_error.py's corpus to the simulator's
# tokenizer and then raised about 7 %: an under-estimate admits more than Bedrock will count,
# an over-estimate only holds capacity until settlement. Letters and spaces come about four to
# a token, every punctuation mark or newline is about one, digits go about two to a token, and
# each non-ASCII character (CJK, Cyrillic, accents) is about one.
LETTER = 0.24  # ASCII letters and spaces
MARK = 1.12  # ASCII punctuation, symbols, newlines, tabs
DIGIT = 0.5
FOREIGN = 1.06  # any non-ASCII character
SPLIT = 0.5  # see _text

MESSAGE_OVERHEAD = 4  # role markers and separators around each message (the simulator: 3)
TOOL_OVERHEAD = 4  # framing of each tool definition in the prompt the model sees
# Images are not decoded, so every image is charged what Claude charges its largest
# (about 1.15 MP after down-scaling: width × height / 750 ≈ 1,600 tokens).
IMAGE_TOKENS = 1600
MEDIA_TOKENS = 3000  # video / audio: no size the estimator can read cheaply
UNSEEN_DOCUMENT_TOKENS = 3000  # a document by reference (S3, URL, file id): about a dense page
BYTES_PER_TOKEN = 3.5  # documents sent as base64 bytes (PDF, DOCX, …): only the size is known
_NESTING = 8  # tool results inside tool results: deeper than this is costed as raw JSON

_SPARSE = (string.ascii_letters + " ").encode()  # deleted to leave marks and digits
_DIGITS = string.digits.encode()


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request may cost before it runs: estimated input and its output cap."""

    input_tokens: int
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What Bedrock reports a request cost."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


def estimate(operation: str, body: Mapping[str, Any], *, default_max_tokens: int) -> Estimate:
    """Estimate a request before forwarding it. ``default_max_tokens`` is the model's maximum
    output, what Bedrock reserves when the body sets no cap. A cap the body does set is kept
    as sent, even above the model's maximum: Bedrock rejects that request, and second-guessing
    the client here would only hide the error."""
    if operation in ("converse", "converse-stream"):
        cost = _converse(body)
        config = body.get("inferenceConfig")
        requested = config.get("maxTokens") if isinstance(config, dict) else None
        budget = _thinking_budget(body.get("additionalModelRequestFields"))
    elif operation in ("invoke", "invoke-with-response-stream"):
        cost = _invoke(body)
        requested = _requested_max(body)
        budget = _thinking_budget(body)
    else:
        raise ValueError(f"not a model operation: {operation!r}")
    return Estimate(math.ceil(cost), _max_output(requested, budget, default_max_tokens))


def reservation(est: Estimate, burndown: float) -> int:
    """Quota to hold while the request runs: input + max output × burndown."""
    return est.input_tokens + output_reservation(est, burndown)


def output_reservation(est: Estimate, burndown: float) -> int:
    """The part of the reservation held for the output: max output × burndown."""
    return _burn(est.max_output_tokens, burndown)


def charge(usage: Usage, burndown: float) -> int:
    """Quota a finished request costs: input + cache writes + output × burndown.
    Cache reads are free against the quota."""
    return usage.input_tokens + usage.cache_write_tokens + _burn(usage.output_tokens, burndown)


def _burn(tokens: int, burndown: float) -> int:
    if not burndown >= 0:  # also catches NaN
        raise ValueError(f"burndown must be >= 0, got {burndown}")
    # Rounded first so float noise (10 × 0.7 = 7.000000000000001) does not add a token.
    return math.ceil(round(tokens * burndown, 6))


# --- output cap ----------------------------------------------------------------------

_MAX_KEYS = (
    "max_tokens",  # Anthropic, Mistral, Cohere, AI21, OpenAI-style
    "max_gen_len",  # Meta Llama
    "max_completion_tokens",
    "max_tokens_to_sample",  # Anthropic Text Completions
    "maxTokens",
)
_CONFIGS = ("inferenceConfig", "textGenerationConfig")  # Amazon Nova, Amazon Titan
_CONFIG_MAX_KEYS = ("max_new_tokens", "maxTokens", "maxTokenCount")


def _requested_max(body: Mapping[str, Any]) -> Any:
    for key in _MAX_KEYS:
        if key in body:
            return body[key]
    for name in _CONFIGS:
        config = body.get(name)
        if isinstance(config, dict):
            for key in _CONFIG_MAX_KEYS:
                if key in config:
                    return config[key]
    return None


def _thinking_budget(fields: Any) -> Any:
    thinking = fields.get("thinking") if isinstance(fields, dict) else None
    return thinking.get("budget_tokens") if isinstance(thinking, dict) else None


def _max_output(requested: Any, budget: Any, default: int) -> int:
    # Absent or malformed: Bedrock reserves the model maximum, so do we.
    cap = requested if is_count(requested) else default
    if is_count(budget):  # interleaved thinking may budget past max_tokens; never past the model
        cap = max(cap, min(budget, default))
    return max(1, cap)


def is_count(value: Any) -> bool:
    return type(value) is int  # not bool, not float


# --- text ----------------------------------------------------------------------------


def text_tokens(text: str) -> float:
    # Character classes counted by C-speed passes only (encode, translate): a per-character
    # Python loop or a regex would cost ten times the budget of the whole estimate.
    if text.isascii():
        return _ascii(text.encode(), 0)
    raw = text.encode("ascii", "ignore")
    foreign = len(text) - len(raw)
    # An accented letter splits the Latin word it sits in ("después"): at most one extra
    # token per foreign character, and no more than about one per ASCII word.
    return _ascii(raw, foreign) + min(foreign, len(raw) / 6) * SPLIT


def _ascii(raw: bytes, foreign: int) -> float:
    dense = raw.translate(None, _SPARSE)
    marks = len(dense.translate(None, _DIGITS))
    return (
        (len(raw) - len(dense)) * LETTER
        + marks * MARK
        + (len(dense) - marks) * DIGIT
        + foreign * FOREIGN
    )


def _json(value: Any) -> float:
    """A structured value (tool input, schema) as the model sees it: compact JSON text."""
    if isinstance(value, str):
        return text_tokens(value)
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:  # not JSON at all (or absurdly deep): Bedrock rejects it
        return 0.0
    return _ascii(raw, 0) if raw.isascii() else text_tokens(raw.decode())


def _base64(data: Any) -> float:
    return len(data) * 0.75 / BYTES_PER_TOKEN if isinstance(data, str | bytes) else 0.0


# --- InvokeModel bodies --------------------------------------------------------------


def _invoke(body: Mapping[str, Any]) -> float:
    if isinstance(body.get("messages"), list):  # Anthropic, Nova, OpenAI-style, AI21
        return _messages(body, body["messages"])
    for key in ("inputText", "prompt"):  # Titan; Llama, Mistral, Cohere Command, DeepSeek
        if isinstance(body.get(key), str):
            return text_tokens(body[key])
    if isinstance(body.get("message"), str):  # Cohere Command R
        return _cohere(body)
    return _json(body)  # unknown shape: every character of it, on the safe side


def _messages(body: Mapping[str, Any], messages: list[Any]) -> float:
    cost = _content(body.get("system"), 0)
    for message in messages:
        if isinstance(message, dict):
            cost += MESSAGE_OVERHEAD + _content(message.get("content"), 0)
    tools = body.get("tools")
    if isinstance(tools, list):
        cost += sum(_tool(tool) for tool in tools)
    config = body.get("toolConfig")  # Nova carries Converse's tool config
    if isinstance(config, dict):
        cost += _converse_tools(config)
    return cost


def _content(content: Any, depth: int) -> float:
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        return 0.0
    if depth > _NESTING:
        return _json(content)
    cost = 0.0
    for block in content:
        if isinstance(block, dict):
            kind = block.get("type")
            cost += _block(block, kind, depth) if kind else _converse_block(block, depth)
    return cost


def _block(block: Mapping[str, Any], kind: Any, depth: int) -> float:
    """One Anthropic content block."""
    if kind == "text":
        return text_tokens(block["text"]) if isinstance(block.get("text"), str) else 0.0
    if kind in ("image", "image_url"):  # image_url: OpenAI-style bodies
        return IMAGE_TOKENS
    if kind == "tool_use":
        return _json(block.get("name") or "") + _json(block.get("input") or {})
    if kind == "tool_result":
        return _content(block.get("content"), depth + 1)
    if kind == "document":
        return _document(block.get("source"), depth)
    if kind == "thinking":
        return text_tokens(block["thinking"]) if isinstance(block.get("thinking"), str) else 0.0
    if kind == "redacted_thinking":
        return _base64(block.get("data"))
    return _json(block)  # a block type this estimator does not know: all of it


def _document(source: Any, depth: int) -> float:
    if not isinstance(source, dict):
        return 0.0
    kind, data = source.get("type"), source.get("data")
    if kind == "text" and isinstance(data, str):
        return text_tokens(data)
    if kind == "base64":
        return _base64(data)
    if kind == "content":
        return _content(source.get("content"), depth + 1)
    return UNSEEN_DOCUMENT_TOKENS  # url / file id: the estimator cannot see it


def _tool(tool: Any) -> float:
    if not isinstance(tool, dict):
        return 0.0
    if isinstance(tool.get("toolSpec"), dict):
        return _tool_spec(tool["toolSpec"])
    spec = tool.get("function")  # OpenAI-style
    if isinstance(spec, dict):
        return _tool_parts(spec.get("name"), spec.get("description"), spec.get("parameters"))
    if "input_schema" in tool:
        return _tool_parts(tool.get("name"), tool.get("description"), tool["input_schema"])
    return TOOL_OVERHEAD + _json(tool)  # a server tool (bash, web search): only its JSON


def _tool_parts(name: Any, description: Any, schema: Any) -> float:
    return TOOL_OVERHEAD + _json(name or "") + _json(description or "") + _json(schema or {})


def _cohere(body: Mapping[str, Any]) -> float:
    cost = text_tokens(body["message"]) + _json(body.get("preamble") or "")
    history = body.get("chat_history")
    for turn in history if isinstance(history, list) else ():
        if isinstance(turn, dict):
            cost += MESSAGE_OVERHEAD + _json(turn.get("message") or "")
    return cost + _json(body.get("documents") or "") + _json(body.get("tools") or "")


# --- Converse bodies -----------------------------------------------------------------


def _converse(body: Mapping[str, Any]) -> float:
    cost = _content(body.get("system"), 0)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            cost += MESSAGE_OVERHEAD + _content(message.get("content"), 0)
    config = body.get("toolConfig")
    return cost + (_converse_tools(config) if isinstance(config, dict) else 0.0)


def _converse_tools(config: Mapping[str, Any]) -> float:
    tools = config.get("tools")
    if not isinstance(tools, list):
        return 0.0
    return sum(_tool_spec(t["toolSpec"]) for t in tools if has_dict(t, "toolSpec"))


def _tool_spec(spec: Mapping[str, Any]) -> float:
    schema = spec.get("inputSchema")
    schema = schema.get("json") if isinstance(schema, dict) else None
    return _tool_parts(spec.get("name"), spec.get("description"), schema)


def has_dict(value: Any, key: str) -> bool:
    return isinstance(value, dict) and isinstance(value.get(key), dict)


def _converse_block(block: Mapping[str, Any], depth: int) -> float:
    """One Converse (or Nova) content block: a union, so normally a single key."""
    cost = 0.0
    for key, value in block.items():
        if key == "text":
            cost += text_tokens(value) if isinstance(value, str) else 0.0
        elif key == "image":
            cost += IMAGE_TOKENS
        elif key in ("video", "audio"):
            cost += MEDIA_TOKENS
        elif key == "document" and isinstance(value, dict):
            cost += _converse_document(value, depth)
        elif key == "toolUse" and isinstance(value, dict):
            cost += _json(value.get("name") or "") + _json(value.get("input") or {})
        elif key == "toolResult" and isinstance(value, dict):
            cost += _content(value.get("content"), depth + 1)
        elif key in ("reasoningContent", "guardContent") and isinstance(value, dict):
            cost += _wrapped(value)
        elif key != "cachePoint":  # cache points cost nothing; anything unknown costs its JSON
            cost += _json(value)
    return cost


def _converse_document(document: Mapping[str, Any], depth: int) -> float:
    cost = _json(document.get("name") or "")
    source = document.get("source")
    if not isinstance(source, dict):
        return cost
    if isinstance(source.get("text"), str):
        return cost + text_tokens(source["text"])
    if "bytes" in source:
        return cost + _base64(source["bytes"])
    if "content" in source:
        return cost + _content(source["content"], depth + 1)
    return cost + UNSEEN_DOCUMENT_TOKENS  # s3Location


def _wrapped(value: Mapping[str, Any]) -> float:
    # reasoningContent {reasoningText: {text}} | {redactedContent: b64};
    # guardContent {text: {text}} | {image: …}
    cost = 0.0
    for key, inner in value.items():
        if isinstance(inner, dict) and isinstance(inner.get("text"), str):
            cost += text_tokens(inner["text"])
        elif key == "image":
            cost += IMAGE_TOKENS
        elif key == "redactedContent":
            cost += _base64(inner)
    return cost
