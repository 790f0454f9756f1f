"""The limiter's pure core: bucket kinds, admission plans, and the reference arithmetic.

Three bucket kinds, all in integer milliseconds so Python and Lua agree exactly:

* **window**: a sliding window of ``slot_ms`` slots. A request's cost goes into the slot of its
  admission; a bucket admits when the slots of the last ``span`` (window + margin, rounded up,
  plus the current slot) hold at most ``limit`` with the new cost. Counting whole slots
  over-covers the rolling window, so admitted cost in *any* rolling window stays within the
  limit (promise P1), even right after an idle spell, while slots of a fraction of a second
  keep the quota nearly full (P2). Settlement corrects the admitting slot while it still counts.
* **period**: a counter per calendar UTC day or month.
* **leases**: concurrent requests; each lease expires ``ttl_ms`` after admission, so a replica
  that dies cannot hold one forever. Its cost already sits in the windows at the full
  reservation, which is how an unsettled request ends: charged in full, the safe side.

This module is the specification; ``memory.py`` runs it, ``lua/admit.lua`` and
``lua/settle.lua`` are its only second copy, and a property test keeps them in step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum

DAY_MS = 86_400_000


class Kind(IntEnum):
    WINDOW = 1
    PERIOD = 2
    LEASES = 3


class Period(IntEnum):
    DAY = 1
    MONTH = 2


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit on one key. ``step`` and ``span`` are what the scripts are given: a window's
    slot length (ms) and the slots it spans, a period's ``Period``, a lease's lifetime (ms);
    read them by those names (``slot_ms``, ``period``, ``ttl_ms``). ``name`` is the config
    field the limit comes from (``tpm``, ``rpm``, ``tokens_per_day``, ``tokens_per_month``,
    ``max_concurrency``, ``monthly_spend_usd``), ``owner`` whose it is (``tenant 'search'``, a
    pool), ``label`` both in words, for messages."""

    key: str
    kind: Kind
    limit: int
    step: int = 0
    span: int = 0
    label: str = ""
    name: str = ""
    owner: str = ""

    @property
    def slot_ms(self) -> int:
        """A window's slot length."""
        return self.step

    @property
    def period(self) -> Period:
        """A period bucket's calendar period."""
        return Period(self.step)

    @property
    def ttl_ms(self) -> int:
        """How long a lease lives unless released."""
        return self.step


def window_bucket(
    key: str, limit: int, *, window_ms: int, slot_ms: int, margin_ms: int, label: str,
    name: str = "", owner: str = "",
) -> Bucket:  # fmt: skip
    span = -(-(window_ms + margin_ms) // slot_ms) + 1
    return Bucket(key, Kind.WINDOW, limit, slot_ms, span, label, name, owner)


def period_bucket(
    key: str, limit: int, period: Period, *, label: str, name: str = "", owner: str = ""
) -> Bucket:
    return Bucket(key, Kind.PERIOD, limit, int(period), 0, label, name, owner)


def lease_bucket(
    key: str, limit: int, *, ttl_ms: int, label: str, name: str = "", owner: str = ""
) -> Bucket:
    return Bucket(key, Kind.LEASES, limit, ttl_ms, 0, label, name, owner)


@dataclass(frozen=True, slots=True)
class Charge:
    bucket: Bucket
    cost: int
    settles: bool = False
    """Token charges are corrected to the real usage at settlement; request counts are not."""
    spend: bool = False
    """A spend charge (micro-dollars) is corrected by the settlement's spend delta instead."""

    def delta(self, tokens: int, spend: int) -> int:
        """What settlement adds to this charge: the token or the spend delta, or nothing."""
        if self.spend:
            return spend
        return tokens if self.settles else 0


@dataclass(frozen=True, slots=True)
class Tally:
    """Counters a settlement adds to, in the same round trip (usage per tenant and model):
    for each hash key, how long it lives (ms, renewed by every addition) and the fields to add
    to."""

    counts: tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]

    def merged(self, other: Tally | None) -> Tally:
        """Both tallies' additions as one (a key's lifetime: the later one's)."""
        if other is None:
            return self
        table: dict[str, tuple[int, dict[str, int]]] = {}
        for key, ttl_ms, fields in (*self.counts, *other.counts):
            _, counters = table.get(key, (0, {}))
            for field, amount in fields:
                counters[field] = counters.get(field, 0) + amount
            table[key] = (ttl_ms, counters)
        return Tally(tuple((k, ttl, tuple(c.items())) for k, (ttl, c) in table.items()))


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request asks: every ``common`` charge, plus every charge of the first
    alternative (a route) that fits. No alternatives means only the common charges."""

    member: str
    common: tuple[Charge, ...]
    alternatives: tuple[tuple[Charge, ...], ...] = ()
    watch: tuple[int, ...] = ()
    """Window buckets (0-based indices into the flattened groups) whose slots a denial reports,
    so the queue can forecast when the requests waiting behind this one could fit."""

    def groups(self) -> tuple[tuple[Charge, ...], ...]:
        return (self.common, *self.alternatives)

    def committed(self, alternative: int) -> tuple[Charge, ...]:
        """The charges an admission with ``alternative`` (1-based; 0 = none) made."""
        if alternative == 0:
            return self.common
        return self.common + self.alternatives[alternative - 1]


@dataclass(frozen=True, slots=True)
class Admitted:
    alternative: int
    """1-based index of the alternative admitted, 0 when the plan has none."""
    now_ms: int
    """The store's time at admission: settlement finds slots and periods from it."""
    remaining: int | None = None
    """What the plan's first common charge's bucket (the tenant's budget) has left after this
    admission; None when there is no such bucket or it counts leases."""


@dataclass(frozen=True, slots=True)
class WindowView:
    """A window bucket as a denial saw it: what each slot of its span holds, oldest first,
    the last being the slot of ``Denied.now_ms``."""

    limit: int
    slot_ms: int
    span: int
    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Denied:
    retry_after_ms: int | None
    """When the plan could next fit, as far as the buckets know; None: never (cost > limit)."""
    bucket: Bucket
    now_ms: int = 0
    """The store's time of the decision."""
    windows: tuple[WindowView, ...] = ()
    """The plan's watched windows (``Plan.watch``), in order."""
    used: int | None = None
    """What ``bucket`` holds in its current period when it is a day or month budget (the
    refusal's message says it); None for windows and leases."""


Decision = Admitted | Denied


# ---- time arithmetic shared by every store ------------------------------------------------


def slot_of(now_ms: int, slot_ms: int) -> int:
    return now_ms // slot_ms


def period_of(now_ms: int, period: int) -> int:
    day = now_ms // DAY_MS
    if period == Period.DAY:
        return day
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return date.year * 12 + date.month - 1


def period_end_ms(now_ms: int, period: int) -> int:
    day = now_ms // DAY_MS
    if period == Period.DAY:
        return (day + 1) * DAY_MS
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    first = dt.date(date.year + date.month // 12, date.month % 12 + 1, 1)
    return (first - dt.date(1970, 1, 1)).days * DAY_MS


def combine_waits(common: int | None, alternatives: list[int | None]) -> int | None:
    """A plan fits once its common buckets and at least one alternative fit."""
    if not alternatives:
        return common
    finite = [w for w in alternatives if w is not None]
    if common is None or not finite:
        return None
    return max(common, min(finite))
