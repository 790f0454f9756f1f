"""The simulator's settings: quotas per pool, burndown per model, latency, defaults.

Validated once into frozen pydantic models, from a YAML file plus CLI overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from gateway.simulator.quota import Limits, Mode

# Bedrock charges output at 5x for these (docs/bedrock.md §4); everything else is 1:1.
DEFAULT_BURNDOWN: dict[str, int] = {
    "claude-3-7-sonnet": 5,
    "claude-sonnet-4": 5,
    "claude-opus-4": 5,
    "claude-haiku-4-5": 5,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuotaDefaults(_Frozen):
    tpm: int = Field(1_000_000, ge=1)
    rpm: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=0)


class PoolOverride(_Frozen):
    """Quotas for one model id (as in the path, decoded), optionally in one region only.

    A field left out inherits the default; ``rpm: null`` / ``tokens_per_day: null`` written
    out explicitly means "no such limit" for this pool.
    """

    model: str = Field(min_length=1)
    region: str | None = None
    tpm: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=0)
    mode: Mode | None = None


class ServiceQuotaEntry(_Frozen):
    """One row the Service Quotas stand-in lists for ServiceCode ``bedrock`` (docs/bedrock.md §7).

    ``region`` absent: the row exists in every region; a row for one region beats a region-less
    row of the same name. ``quota_code`` absent: ``L-`` + 8 hex digits derived from the name.
    """

    quota_name: str = Field(min_length=1)
    value: float = Field(ge=0)
    quota_code: str | None = Field(None, pattern=r"^L-[0-9A-F]{8}$")
    region: str | None = None
    adjustable: bool = True


class LatencyConfig(_Frozen):
    ttft_ms: float = Field(20.0, ge=0)
    per_output_token_ms: float = Field(0.0, ge=0)


class CountingConfig(_Frozen):
    """How far this upstream's token counts stray from the built-in tokenizer's, so tests can
    show the gateway learns an upstream that counts differently from what it was fitted to
    (real Bedrock counts with each model's own tokenizer). Counts stay whole and ≥ 1."""

    scale: float = Field(1.0, gt=0, le=10)
    """Every input count × this: 1.05 counts 5 % more tokens, 0.9 counts 10 % fewer."""
    non_ascii_scale: float = Field(1.0, gt=0, le=10)
    """Tokens of non-ASCII characters (CJK, Cyrillic, accents) × this on top: a language bias."""
    models: dict[str, float] = Field(default_factory=dict)
    """Model id substring → a further factor for that model (the longest match wins): a
    per-model bias."""

    def adjust(self, model: str, tokens: int, non_ascii: int) -> int:
        """``tokens`` counted by the built-in tokenizer, ``non_ascii`` of them for non-ASCII
        characters (one token each there), as this upstream counts them."""
        factor = self.scale * _longest_match(self.models, model, 1.0)
        if factor == 1.0 and self.non_ascii_scale == 1.0:
            return tokens
        foreign = min(non_ascii, tokens)
        counted = ((tokens - foreign) + foreign * self.non_ascii_scale) * factor
        return max(1, round(counted))


class SimulatorConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    mode: Mode = Mode.ROLLING
    default_region: str = "us-east-1"  # for bearer or unsigned requests
    default_quota: QuotaDefaults = QuotaDefaults()
    pools: tuple[PoolOverride, ...] = ()
    # model-id substring -> output burndown factor; the longest matching key wins, else 1.
    burndown: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_BURNDOWN))
    latency: LatencyConfig = LatencyConfig()
    # Rows answered by ListServiceQuotas / ListAWSDefaultServiceQuotas (servicequotas.py).
    service_quotas: tuple[ServiceQuotaEntry, ...] = ()
    default_output_tokens: int = Field(64, ge=0)
    converse_default_max_tokens: int = Field(4096, ge=1)
    counting: CountingConfig = CountingConfig()
    # Per pool, entries kept for stats (peak windows, timeline): this long, at most this many.
    history_seconds: float = Field(7200.0, ge=60)
    history_max_entries: int = Field(500_000, ge=1)


def _longest_match(table: Mapping[str, float], model: str, default: float) -> float:
    best, found = -1, default
    for key, value in table.items():
        if key in model and len(key) > best:
            best, found = len(key), value
    return found


def burndown_for(config: SimulatorConfig, model: str) -> int:
    """The output burndown factor of ``model``: the longest matching substring's, else 1."""
    return int(_longest_match(config.burndown, model, 1))


def resolve(
    config: SimulatorConfig, overrides: tuple[PoolOverride, ...], region: str, model: str
) -> tuple[Limits, Mode]:
    """The limits and mode of pool (region, model): a region-specific override beats a
    region-less one; fields it leaves out come from the defaults."""
    candidates = [o for o in overrides if o.model == model and o.region in (None, region)]
    match = max(candidates, key=lambda o: o.region is not None, default=None)
    quota = config.default_quota.model_dump()
    if match is not None:
        quota.update(match.model_dump(include=match.model_fields_set & set(quota)))
    limits = Limits(quota["tpm"] or config.default_quota.tpm, quota["rpm"], quota["tokens_per_day"])
    mode = match.mode if match is not None and match.mode is not None else config.mode
    return limits, mode


def load_config(
    path: str | Path | None, overrides: Mapping[str, Any] | None = None
) -> SimulatorConfig:
    """Read ``path`` (YAML, optional), then deep-merge ``overrides`` over it, then validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    return SimulatorConfig.model_validate(_merge(data, overrides or {}))


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
