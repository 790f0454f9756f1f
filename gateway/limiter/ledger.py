"""Usage per tenant and model, per minute, day and month: what settlements add, read back.

Every settlement adds its call's counts to three hashes of its tenant (the minute, the UTC day
and the UTC month of its admission, by the store's clock), in the settlement's own round trip:
one field per model and kind, ``<kind>:<model>``. A local refusal adds ``throttled`` the same
way, off the request path. Each hash lives for its period's retention (``usage:`` in the
config), renewed by every addition, so what is kept stays bounded by tenants x models x
periods retained, whatever the traffic.

The same settlement adds to the quota report's hash of its pool and hour (``report_key``,
kept ``retain_report_d``): per minute of the hour the calls Bedrock served (``n<mm>``) and their
quota tokens (``q<mm>``), the minutes' TPM and RPM; per hour the calls with a reported usage
(``nu``), their true input (cache included) and output tokens, those of 25,000 input tokens or
more (``big``), and Bedrock's 429s (``u429``). A local refusal, which has no route yet, adds
``thr`` to its model's hash with an empty route. At most 125 short fields a hash, so Redis keeps
each in its compact encoding: about 1.4 KB per pool and hour at full use, whatever the traffic.

Pure: keys, tallies and the reading of counters; the stores hold them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.config import UsageConfig
from gateway.cost import Usage
from gateway.limiter.core import DAY_MS, Period, Tally, period_end_ms, period_of

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
Fields = tuple[tuple[str, int], ...]
BIG_INPUT = 25_000
"""Bedrock's quota-increase form asks what share of requests carry this many input tokens."""
PERIODS = ("minute", "day", "month")
KINDS = (
    "requests", "throttled", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "quota_tokens", "spend_micros",
)  # fmt: skip
_FIELD = {"requests": "n", "throttled": "thr", "input_tokens": "in", "output_tokens": "out",
          "cache_read_tokens": "cr", "cache_write_tokens": "cw", "quota_tokens": "q",
          "spend_micros": "usd"}  # fmt: skip
_KIND = {field: kind for kind, field in _FIELD.items()}


def period_bounds_ms(period: str, now_ms: int) -> tuple[int, int]:
    """Where the minute, UTC day or UTC month holding ``now_ms`` starts and ends."""
    if period == "minute":
        start = now_ms // MINUTE_MS * MINUTE_MS
        return start, start + MINUTE_MS
    if period == "day":
        start = now_ms // DAY_MS * DAY_MS
        return start, start + DAY_MS
    moment = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    first = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    return int(first.timestamp()) * 1000, period_end_ms(now_ms, Period.MONTH)


@dataclass(frozen=True, slots=True)
class Counts:
    """One tenant's (or one model's) counts in one period."""

    requests: int = 0
    throttled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    quota_tokens: int = 0
    spend_micros: int = 0


class Ledger:
    def __init__(self, prefix: str, config: UsageConfig) -> None:
        self._prefix = f"{{{prefix}}}:usage:"
        self._ttl_ms = (
            int(config.retain_minutes_h * HOUR_MS),
            int(config.retain_days_d * DAY_MS),
            int(config.retain_months_d * DAY_MS),
        )
        self._report_ttl_ms = int(config.retain_report_d * DAY_MS)

    def report_key(self, model: str, route: str, hour: int) -> str:
        """The report hash of calls to ``model`` by ``route`` in the hour ``hour`` (ms //
        3,600,000); ``route`` "" holds the model's local refusals."""
        return f"{self._prefix}report:{model}|{route}:h:{hour}"

    def _report(
        self, model: str, route: str, now_ms: int, fields: Fields
    ) -> tuple[str, int, Fields]:
        return self.report_key(model, route, now_ms // HOUR_MS), self._report_ttl_ms, fields

    def keys(self, tenant: str, now_ms: int) -> tuple[str, str, str]:
        """The minute, day and month hashes of ``tenant`` at ``now_ms``."""
        base = f"{self._prefix}{tenant}:"
        return (
            f"{base}m:{now_ms // MINUTE_MS}",
            f"{base}d:{period_of(now_ms, Period.DAY)}",
            f"{base}M:{period_of(now_ms, Period.MONTH)}",
        )

    def _tally(self, tenant: str, now_ms: int, fields: tuple[tuple[str, int], ...]) -> Tally:
        keys = self.keys(tenant, now_ms)
        return Tally(tuple((key, ttl, fields) for key, ttl in zip(keys, self._ttl_ms,
                                                                  strict=True)))  # fmt: skip

    def settled(
        self, tenant: str, model: str, route: str, now_ms: int, usage: Usage | None,
        quota_tokens: int, spend_micros: int, upstream_throttled: bool = False,
    ) -> Tally | None:  # fmt: skip
        """What a settled call adds: one request and its tokens when it was sent upstream
        (``quota_tokens`` > 0 or a usage reported), an upstream 429 to the report, nothing for
        a call never sent."""
        if usage is None and quota_tokens <= 0:
            if not upstream_throttled:
                return None
            return Tally((self._report(model, route, now_ms, (("u429", 1),)),))
        counts = [("n", 1), ("q", quota_tokens), ("usd", spend_micros)]
        if usage is not None:
            counts += [
                ("in", usage.input_tokens), ("out", usage.output_tokens),
                ("cr", usage.cache_read_tokens), ("cw", usage.cache_write_tokens),
            ]  # fmt: skip
        fields = tuple((f"{f}:{model}", n) for f, n in counts if n > 0)
        tally = self._tally(tenant, now_ms, fields)
        minute = f"{now_ms // MINUTE_MS % 60:02d}"
        served = [("n" + minute, 1), ("q" + minute, quota_tokens)]
        if usage is not None:
            true_input = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
            served += [("nu", 1), ("in", true_input), ("out", usage.output_tokens),
                       ("big", int(true_input >= BIG_INPUT))]  # fmt: skip
        report = tuple((f, n) for f, n in served if n > 0)
        return Tally((*tally.counts, self._report(model, route, now_ms, report)))

    def refused(self, tenant: str, model: str, now_ms: int) -> Tally:
        """What a local refusal adds: one ``throttled`` for the tenant and for the report."""
        tally = self._tally(tenant, now_ms, ((f"thr:{model}", 1),))
        return Tally((*tally.counts, self._report(model, "", now_ms, (("thr", 1),))))


def read(counters: dict[str, int]) -> tuple[Counts, dict[str, Counts]]:
    """A period hash as the tenant's totals and its counts by model."""
    by_model: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        field, _, model = name.partition(":")
        kind = _KIND.get(field)
        if kind is not None:
            slot = by_model.setdefault(model, {})
            slot[kind] = slot.get(kind, 0) + value
    models = {model: Counts(**values) for model, values in sorted(by_model.items())}
    total = Counts(**{k: sum(getattr(c, k) for c in models.values()) for k in KINDS})
    return total, models
