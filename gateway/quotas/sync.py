"""Applied Service Quotas against the config's routes: the tpm / rpm / tokens_per_day each
route should carry, how that differs from the file, and a text rendering. Pure.

A route draws on the quota rows of its (account, source region, scope, base model)
(docs/bedrock.md §5): on-demand routes on ``On-demand …``, ``us.``/``eu.`` profiles on
``Cross-Region …``, ``global.`` profiles on ``Global cross-Region …``. The daily row without
a scope (``Model invocation max tokens per day for …``) applies to every route of the model
that has no scope-specific daily row; only when its name says ``(doubled for cross-region
calls)`` do cross-region routes get twice its value. Application profiles are not synced:
which model they wrap needs ``GetInferenceProfile``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from gateway.catalog import Route, route_of
from gateway.config import GatewayConfig
from gateway.quotas.names import Kind, ParsedQuota, display_key, model_key, parse_quota_name
from gateway.quotas.yamledit import FieldEdit, set_route_fields

Field = Literal["tpm", "rpm", "tokens_per_day"]
FIELDS: tuple[Field, ...] = ("tpm", "rpm", "tokens_per_day")
_KINDS: dict[Field, Kind] = {"tpm": "tpm", "rpm": "rpm", "tokens_per_day": "tpd"}
CROSS_REGION_DAILY_FACTOR = 2


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """One ``ServiceQuota`` as listed for an account in a region."""

    account: str
    region: str
    name: str
    code: str
    value: float


@dataclass(frozen=True, slots=True)
class SyncRoute(Route):
    """A configured route as the catalog reads it, and where it sits in the file."""

    model: str = ""
    index: int = 0

    def configured(self, field: Field) -> int | None:
        value: int | None = getattr(self, field)
        return value


@dataclass(frozen=True, slots=True)
class Applied:
    """The value a route's field should have, from the rows that set it."""

    route: SyncRoute
    field: Field
    applied: int
    rows: tuple[QuotaRow, ...]
    factor: int = 1

    @property
    def configured(self) -> int | None:
        return self.route.configured(self.field)

    @property
    def changed(self) -> bool:
        return self.configured != self.applied


@dataclass(frozen=True, slots=True)
class SyncReport:
    applied: tuple[Applied, ...]
    """Every (route, field) some quota row sets, changed or not."""
    unmatched: tuple[QuotaRow, ...]
    """Rows no route draws on, of a model (or a variant of one) routed in their region."""
    other_rows: int
    """Every other row: models or regions without a route, no per-model rate quota."""
    missing: tuple[tuple[SyncRoute, Field], ...]
    """Configured values no quota row was found for (left as they are)."""
    notes: tuple[str, ...]

    @property
    def changes(self) -> tuple[Applied, ...]:
        return tuple(a for a in self.applied if a.changed)


def routes_of(config: GatewayConfig) -> list[SyncRoute]:
    """Every route of every model, in file order, with its scope as the catalog reads it."""
    routes: list[SyncRoute] = []
    for name, model in config.models.items():
        for index, settings in enumerate(model.routes):
            route = route_of(model, settings)
            values = {f.name: getattr(route, f.name) for f in fields(Route)}
            routes.append(SyncRoute(**values, model=name, index=index))
    return routes


@dataclass(frozen=True, slots=True)
class _Parsed:
    row: QuotaRow
    quota: ParsedQuota
    key: frozenset[str]


def compute(routes: Sequence[SyncRoute], rows: Iterable[QuotaRow]) -> SyncReport:
    """Match every row to the routes that draw on it and collect what differs."""
    parsed: list[_Parsed] = []
    other = 0
    for row in rows:
        quota = parse_quota_name(row.name)
        if quota is None:
            other += 1
        else:
            parsed.append(_Parsed(row, quota, display_key(quota.model)))
    applied: list[Applied] = []
    missing: list[tuple[SyncRoute, Field]] = []
    notes: list[str] = []
    used: set[int] = set()
    for route in routes:
        if route.scope == "application":
            notes.append(f"{route.model} {route.label}: application inference profile, not synced")
            continue
        for field in FIELDS:
            found = _match(route, field, parsed, used, notes)
            if found is not None:
                applied.append(found)
            elif route.configured(field) is not None:
                missing.append((route, field))
    keys: dict[tuple[str, str], set[frozenset[str]]] = {}
    for route in routes:
        keys.setdefault((route.account, route.region), set()).add(model_key(route.base_model))
    unmatched, unrelated = _unused(parsed, used, keys)
    return SyncReport(tuple(applied), unmatched, other + unrelated, tuple(missing), tuple(notes))


def _match(
    route: SyncRoute, field: Field, parsed: list[_Parsed], used: set[int], notes: list[str]
) -> Applied | None:
    key = model_key(route.base_model)
    mine = [
        (i, p) for i, p in enumerate(parsed)
        if p.quota.kind == _KINDS[field] and p.key == key
        and (p.row.account, p.row.region) == (route.account, route.region)
    ]  # fmt: skip
    hits = [(i, p) for i, p in mine if p.quota.scope == route.scope]
    factor = 1
    if not hits and field == "tokens_per_day":
        hits = [(i, p) for i, p in mine if p.quota.scope is None]
        doubled = any(p.quota.doubled_cross_region for _, p in hits)
        factor = CROSS_REGION_DAILY_FACTOR if doubled and route.scope != "on-demand" else 1
    if not hits:
        return None
    used.update(i for i, _ in hits)
    values = sorted({math.floor(p.row.value * factor) for _, p in hits})
    where = f"{route.model} {route.label} {field}"
    if len(values) > 1:
        notes.append(f"{where}: rows disagree ({', '.join(map(str, values))}); using the lowest")
    if values[0] < 1:
        notes.append(f"{where}: the applied quota is {values[0]}; Bedrock refuses this route's "
                     "calls and the config cannot say 0, so it is left as it is")  # fmt: skip
        return None
    return Applied(route, field, values[0], tuple(p.row for _, p in hits), factor)


def _unused(
    parsed: list[_Parsed], used: set[int], keys: dict[tuple[str, str], set[frozenset[str]]]
) -> tuple[tuple[QuotaRow, ...], int]:
    """Unused rows of a model routed in the row's account and region, or of a variant of one
    (a superset of its tokens: ``… 1M Context Length``), and how many other rows are unused."""
    related: list[QuotaRow] = []
    unrelated = 0
    for i, p in enumerate(parsed):
        if i in used:
            continue
        if any(key <= p.key for key in keys.get((p.row.account, p.row.region), ())):
            related.append(p.row)
        else:
            unrelated += 1
    return tuple(related), unrelated


def apply_diff(yaml_text: str, changes: Iterable[Applied]) -> str:
    """``yaml_text`` with each change's route field set to its applied value; everything
    else (comments, layout, order) kept byte for byte."""
    edits = [FieldEdit(c.route.model, c.route.index, c.field, c.applied) for c in changes]
    return set_route_fields(yaml_text, edits)


def render(report: SyncReport) -> str:
    """The differences as an aligned table, then what could not be matched, then a summary."""
    lines: list[str] = []
    if report.changes:
        lines += _table(report.changes)
    if report.unmatched:
        lines += ["", "Quota rows no configured route draws on:"]
        lines += [f"  {r.account}/{r.region}  {r.code}  {r.name} = {_number(r.value)}"
                  for r in report.unmatched]  # fmt: skip
    if report.missing:
        lines += ["", "No quota row found for these configured values (left as they are):"]
        lines += [f"  {route.model}  {route.label}  {field} {route.configured(field)}"
                  for route, field in report.missing]  # fmt: skip
    if report.notes:
        lines += [""] + [f"note: {note}" for note in report.notes]
    if report.other_rows:
        lines += ["", f"({report.other_rows} more rows: for models or regions without a route, "
                      "or not per-model rate quotas)"]  # fmt: skip
    if lines:
        lines.append("")
    lines.append(_summary(report))
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(changes: Sequence[Applied]) -> list[str]:
    header = ("model", "route", "field", "configured", "applied", "change", "quota")
    rows = [header] + [
        (
            c.route.model,
            c.route.label,
            c.field,
            "-" if c.configured is None else str(c.configured),
            str(c.applied),
            "set" if c.configured is None else f"{c.applied - c.configured:+d}",
            "; ".join(r.name for r in c.rows) + (f" (x{c.factor})" if c.factor != 1 else ""),
        )
        for c in changes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    numeric = {3, 4, 5}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return lines


def _summary(report: SyncReport) -> str:
    checked = len(report.applied)
    if not report.changes:
        return f"in sync: {checked} quota values match the applied quotas"
    return f"{len(report.changes)} of {checked} quota values differ from the applied quotas"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
