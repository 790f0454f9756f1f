"""Bedrock quota names (docs/bedrock.md §7): what a ``QuotaName`` limits, and which model id its
display name means. Pure: strings in, values out.

A quota names its model by display name (``Anthropic Claude 3.5 Sonnet V2``), not by id
(``anthropic.claude-3-5-sonnet-20241022-v2:0``); ``model_key`` brings both to one token set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["tpm", "rpm", "tpd"]
QuotaScope = Literal["on-demand", "geo", "global"]

_NAME = re.compile(
    r"^(?:(?P<scope>global cross-region|cross-region|on-demand) (?:invokemodel|model inference)"
    r"|(?P<daily>model invocation max))"
    r" (?P<unit>tokens|requests) per (?P<period>minute|day) for (?P<model>.+?)"
    r"(?P<doubled> \(doubled for cross-region calls\))?$",
    re.IGNORECASE,
)
_SCOPES: dict[str, QuotaScope] = {
    "on-demand": "on-demand",
    "cross-region": "geo",
    "global cross-region": "global",
}
_KINDS: dict[tuple[str, str], Kind] = {
    ("tokens", "minute"): "tpm",
    ("requests", "minute"): "rpm",
    ("tokens", "day"): "tpd",
}


@dataclass(frozen=True, slots=True)
class ParsedQuota:
    """A per-model rate quota. ``scope`` None: the row is not tied to one inference scope
    (``Model invocation max tokens per day for …``)."""

    kind: Kind
    scope: QuotaScope | None
    model: str
    doubled_cross_region: bool = False
    """The name says ``(doubled for cross-region calls)``."""


def parse_quota_name(name: str) -> ParsedQuota | None:
    """The kind, scope and model display name of ``name``; None for every other quota
    (account-wide ``Cross-Model Max Tokens Per Day``, bedrock-mantle input/output rows, …)."""
    text = " ".join(name.split())
    match = _NAME.match(text)
    if match is None:
        return None
    kind = _KINDS.get((match["unit"].lower(), match["period"].lower()))
    if kind is None or (match["daily"] and kind != "tpd"):
        return None
    scope = _SCOPES[match["scope"].lower()] if match["scope"] else None
    return ParsedQuota(kind, scope, match["model"], match["doubled"] is not None)


# --- display name / model id -> token set ----------------------------------------------------

# Leading vendor words of display names, longest first.
_VENDORS: tuple[tuple[str, ...], ...] = tuple(
    tuple(phrase.split())
    for phrase in (
        "stability ai", "mistral ai", "ai21 labs", "twelve labs", "luma ai", "moonshot ai",
        "anthropic", "amazon", "meta", "cohere", "ai21", "deepseek", "openai", "qwen", "writer",
        "twelvelabs", "google", "nvidia", "minimax", "moonshot",
    )
)  # fmt: skip
_INFERENCE_PREFIXES = frozenset({"us", "eu", "apac", "us-gov", "jp", "au", "ca", "global"})
_VERSION_SUFFIX = re.compile(r"-v(\d+)(?::\d+)*(?::[0-9a-z]+)?$")
_SEPARATORS = re.compile(r"[^0-9a-z.+]+")
_LOOSE_DOT = re.compile(r"(?<!\d)\.|\.(?!\d)")
_WORD_DIGITS = re.compile(r"^([a-z]{2,})(\d+(?:\.\d+)?)$")
_DATE = re.compile(r"^\d{8}$")
_SMALL_NUMBER = re.compile(r"^\d{1,2}$")


def model_key(model_id: str) -> frozenset[str]:
    """The tokens of a Bedrock model id: vendor, dates and ``:0`` dropped, ``-vN`` kept as
    ``vN`` (except v1, the default), ``3-5`` read as ``3.5``."""
    text = model_id.lower()
    head, dot, rest = text.partition(".")
    while dot and head in _INFERENCE_PREFIXES:
        head, dot, rest = rest.partition(".")
    body = rest if dot else head
    version = _VERSION_SUFFIX.search(body)
    tokens = _normalise(_words(body[: version.start()] if version else body))
    if version is not None:
        tokens.append(f"v{version.group(1)}")
    return _finish(tokens)


def display_key(display_name: str) -> frozenset[str]:
    """The tokens of a quota's model display name: vendor dropped, ``V2`` as ``v2``."""
    words = _words(display_name.lower())
    for vendor in _VENDORS:
        if tuple(words[: len(vendor)]) == vendor and len(words) > len(vendor):
            words = words[len(vendor) :]
            break
    return _finish(_normalise(words))


def display_matches(display_name: str, model_id: str) -> bool:
    """Exact token-set equality: ``Opus 4`` is not ``Opus 4.1``, a ``1M Context Length`` row
    is not its plain model."""
    return display_key(display_name) == model_key(model_id)


def _words(text: str) -> list[str]:
    text = _LOOSE_DOT.sub(" ", text.replace("+", " plus "))
    return [word for word in _SEPARATORS.split(text) if word]


def _normalise(words: list[str]) -> list[str]:
    """``llama3`` → ``llama 3``; dates dropped; adjacent small numbers joined."""
    split: list[str] = []
    for word in words:
        parts = _WORD_DIGITS.match(word)
        split.extend(parts.groups() if parts else (word,))
    return _join_numbers([w for w in split if not _DATE.match(w)])


def _join_numbers(words: list[str]) -> list[str]:
    """``claude-3-5-sonnet`` → ``claude 3.5 sonnet``: adjacent small numbers are one version."""
    out: list[str] = []
    for word in words:
        if out and _SMALL_NUMBER.match(word) and _SMALL_NUMBER.match(out[-1]):
            out[-1] = f"{out[-1]}.{word}"
        else:
            out.append(word)
    return out


def _finish(tokens: list[str]) -> frozenset[str]:
    # v1 is what a display name without a version means; dropping it on both sides lets
    # "Amazon Nova Lite" equal amazon.nova-lite-v1:0 while "... V2" still needs -v2.
    return frozenset(t for t in tokens if t != "v1")
