"""The quota-increase report: what AWS asks for when a team requests more Bedrock quota.

For each model and route (one quota pool), over the last ``days`` × 24 hours (the current hour
included): steady (p50) and peak (p90) tokens and requests per minute, over the minutes in which
the pool served at least one call; the busiest minute; average true input and output tokens per
call; the share of calls with 25,000 input tokens or more; the share of upstream calls Bedrock
throttled; the share of the model's requests the gateway refused itself; and week-over-week
growth of quota tokens (the last 168 whole hours against the 168 before). Plus, per hour, the
calls served and throttled (locally and upstream) for the chart.

Built from the hashes every settlement adds to (``gateway.limiter.ledger``, kept
``usage.retain_report_d``, 35 days by default). Pure: counters in, figures out; rendering as
Markdown and SVG for ``bedrock-gateway quota-report``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.sax.saxutils import escape

HOUR_S = 3600
WEEK_H = 7 * 24

Counters = Mapping[str, int]
Reader = Callable[[str, str, int], Counters]
"""The report hash of (model, route, hour); ``{}`` when there is none."""


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest rank: the smallest value with at least ``q`` of ``values`` at or below it."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _growth(now: int, before: int) -> float | None:
    return round(now / before - 1, 4) if before else None


@dataclass(frozen=True, slots=True)
class PoolFigures:
    model: str
    route: str
    """account/region/upstream id, as ``x-gateway-route`` shows it."""
    requests: int
    """Calls Bedrock served (each attempt of a retried request counts)."""
    active_minutes: int
    """Minutes in which the pool served at least one call: the percentiles are over these."""
    tpm_p50: int
    tpm_p90: int
    tpm_max: int
    rpm_p50: int
    rpm_p90: int
    rpm_max: int
    quota_tokens: int
    """What the calls cost in Bedrock quota (input + cache writes + output × burndown)."""
    avg_input_tokens: float | None
    """True input per call as Bedrock counted it, cache reads and writes included."""
    avg_output_tokens: float | None
    over_25k_share: float | None
    """Calls with 25,000 input tokens or more / calls with a reported usage."""
    upstream_throttled: int
    upstream_throttled_share: float | None
    """Bedrock's 429s / (calls served + Bedrock's 429s)."""
    local_throttled_share: float | None
    """The model's: the gateway's own refusals / (refusals + the model's calls served)."""
    growth_wow: float | None
    """Quota tokens in the last 168 whole hours / the 168 before - 1 (null without history)."""


@dataclass(frozen=True, slots=True)
class HourFigures:
    start: float
    """Unix seconds."""
    served: int
    throttled_local: int
    throttled_upstream: int


@dataclass(frozen=True, slots=True)
class Report:
    start: float
    end: float
    """Unix seconds: the report's hours, the current one included (it ends at ``end``)."""
    days: int
    pools: list[PoolFigures] = field(default_factory=list)
    hours: list[HourFigures] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_SUMMED = ("nu", "in", "out", "big", "u429")


@dataclass(slots=True)
class _Pool:
    """One pool's counters summed over the report's hours, as they are read."""

    model: str
    route: str
    minutes: list[tuple[int, int]] = field(default_factory=list)
    """(calls, quota tokens) of each minute in which it served a call."""
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SUMMED, 0))


def build(pools: Sequence[tuple[str, str]], read: Reader, now_s: float, days: int) -> Report:
    """The report for ``pools`` ((model, route label)) over the last ``days`` × 24 hours at
    ``now_s``; ``read`` must answer for every hour of ``needed_hours``."""
    last = int(now_s // HOUR_S)
    hours = range(last - days * 24 + 1, last + 1)
    served_hourly, upstream_hourly = [0] * len(hours), [0] * len(hours)
    summed = []
    for model, route in pools:
        pool = _Pool(model, route)
        for i, hour in enumerate(hours):
            counters = read(model, route, hour)
            for name in _SUMMED:
                pool.sums[name] += counters.get(name, 0)
            upstream_hourly[i] += counters.get("u429", 0)
            for minute in range(60):
                n = counters.get(f"n{minute:02d}", 0)
                if n:
                    pool.minutes.append((n, counters.get(f"q{minute:02d}", 0)))
                    served_hourly[i] += n
        summed.append(pool)
    models = sorted({model for model, _ in pools})
    refused = {m: [read(m, "", h).get("thr", 0) for h in hours] for m in models}
    served = {m: sum(n for p in summed if p.model == m for n, _ in p.minutes) for m in models}
    return Report(
        start=hours.start * HOUR_S, end=now_s, days=days,
        pools=[_figures(p, read, last, sum(refused[p.model]), served[p.model]) for p in summed],
        hours=[HourFigures(h * HOUR_S, s, sum(refused[m][i] for m in models), up)
               for i, (h, s, up) in enumerate(zip(hours, served_hourly, upstream_hourly,
                                                  strict=True))],
    )  # fmt: skip


def _figures(pool: _Pool, read: Reader, last: int, refused: int, model_served: int) -> PoolFigures:
    rpm, tpm = [n for n, _ in pool.minutes], [q for _, q in pool.minutes]
    sums, requests = pool.sums, sum(rpm)

    def quota_tokens(hours: range) -> int:
        return sum(v for h in hours for k, v in read(pool.model, pool.route, h).items()
                   if k.startswith("q"))  # fmt: skip

    week = quota_tokens(range(last - WEEK_H, last))
    before = quota_tokens(range(last - 2 * WEEK_H, last - WEEK_H))
    return PoolFigures(
        model=pool.model, route=pool.route, requests=requests, active_minutes=len(pool.minutes),
        tpm_p50=percentile(tpm, 0.5), tpm_p90=percentile(tpm, 0.9), tpm_max=max(tpm, default=0),
        rpm_p50=percentile(rpm, 0.5), rpm_p90=percentile(rpm, 0.9), rpm_max=max(rpm, default=0),
        quota_tokens=sum(tpm),
        avg_input_tokens=round(sums["in"] / sums["nu"], 1) if sums["nu"] else None,
        avg_output_tokens=round(sums["out"] / sums["nu"], 1) if sums["nu"] else None,
        over_25k_share=_share(sums["big"], sums["nu"]),
        upstream_throttled=sums["u429"],
        upstream_throttled_share=_share(sums["u429"], requests + sums["u429"]),
        local_throttled_share=_share(refused, refused + model_served),
        growth_wow=_growth(week, before),
    )  # fmt: skip


def needed_hours(now_s: float, days: int) -> range:
    """Every hour ``build`` reads: the report's, and two whole weeks before the current hour."""
    last = int(now_s // HOUR_S)
    return range(last - max(days * 24 - 1, 2 * WEEK_H), last + 1)


# ---------------------------------------------------------------- rendering


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def markdown(report: Mapping[str, Any]) -> str:
    """The report (as ``Report.to_json`` or the admin API gives it) as a Markdown document."""
    lines = [
        f"# Bedrock quota report: {_utc(report['start'])} to {_utc(report['end'])} "
        f"({report['days']} days)",
        "",
        "Per model and route (one quota pool). TPM counts Bedrock quota tokens (input + cache "
        "writes + output × burndown); p50 is the steady rate and p90 the peak, over the minutes "
        "in which the pool served calls.",
        "",
        "| model | route | requests | active min | TPM p50 | TPM p90 | TPM max | RPM p50 | "
        "RPM p90 | RPM max | avg input | avg output | ≥25k input | throttled upstream | "
        "throttled locally (model) | growth w/w |",
        "|---|---|" + "---:|" * 14,
    ]
    for p in report["pools"]:
        cells = [p["model"], f"`{p['route']}`", _num(p["requests"]), _num(p["active_minutes"]),
                 _num(p["tpm_p50"]), _num(p["tpm_p90"]), _num(p["tpm_max"]), _num(p["rpm_p50"]),
                 _num(p["rpm_p90"]), _num(p["rpm_max"]), _num(p["avg_input_tokens"]),
                 _num(p["avg_output_tokens"]), _pct(p["over_25k_share"]),
                 _pct(p["upstream_throttled_share"]), _pct(p["local_throttled_share"]),
                 _pct(p["growth_wow"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if not report["pools"]:
        lines.append("| (no pools configured) |" + " |" * 15)
    hours = report["hours"]
    lines += [
        "",
        f"Calls served {sum(h['served'] for h in hours):,}, refused by the gateway "
        f"{sum(h['throttled_local'] for h in hours):,}, throttled by Bedrock "
        f"{sum(h['throttled_upstream'] for h in hours):,}.",
    ]
    return "\n".join(lines) + "\n"


def svg(report: Mapping[str, Any], width: int = 900, height: int = 300) -> str:
    """Served vs throttled calls per hour: served in blue, throttled (local + upstream) in
    red, as a line chart (a standalone SVG document)."""
    hours = report["hours"]
    left, right, top, bottom = 56, 16, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1] + [max(h["served"], h["throttled_local"] + h["throttled_upstream"])
                      for h in hours])  # fmt: skip
    step = plot_w / max(1, len(hours) - 1)

    def points(values: list[int]) -> str:
        return " ".join(f"{left + i * step:.1f},{top + plot_h * (1 - v / peak):.1f}"
                        for i, v in enumerate(values))  # fmt: skip

    served = [h["served"] for h in hours]
    throttled = [h["throttled_local"] + h["throttled_upstream"] for h in hours]
    title = escape(f"Calls per hour, {_utc(report['start'])} to {_utc(report['end'])}")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{title}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18">{title}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">0</text>',
    ]
    for i in range(0, len(hours), max(1, len(hours) // 7)):
        x = left + i * step
        label = dt.datetime.fromtimestamp(hours[i]["start"], dt.UTC).strftime("%m-%d %H:00")
        out.append(f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle">{label}</text>')
    for values, colour, name, y in ((served, "#1f77b4", "served", 18),
                                    (throttled, "#d62728", "throttled", 34)):  # fmt: skip
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                   f'points="{points(values)}"><title>{name}</title></polyline>')  # fmt: skip
        out.append(f'<text x="{width - right}" y="{y}" text-anchor="end" '
                   f'fill="{colour}">{name} {sum(values):,}</text>')  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"
