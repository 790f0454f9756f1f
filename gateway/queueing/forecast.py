"""When a waiting request could be admitted: the queue's forecast, from what a denial saw.

A denial of the queue's head reports the slots of each route's per-minute window
(``WindowView``) at the store's time. A slot's tokens leave the window when the slot does, at
(slot + span) x slot_ms; tokens admitted after now leave a span after they came in, so each
window frees the same profile again every span (``limit`` tokens per span in all). A request
with ``ahead`` tokens queued before it fits once the routes together have freed ahead + its own
cost, and one route alone has room for its cost. ``ahead`` counts what the waiters before it
will really be charged: the input estimates and the output caps of their reservations, each
times the share of it settlements leave (``SettledShare``), less what this replica's requests
in flight are expected to give back.

What it cannot know is how much of their output caps the waiters ahead will use: for a window's
worth of calls of 50-250 output tokens, about 800 tokens either way, more than one call. Where
the window frees room steadily that is a fraction of a second; where it has freed all it will
before a window later, it decides whether the request fits in this window or the next. A
request the expected use lets in waits, and is refused once a fresh denial shows it will not
fit (``REFUSE_BIAS``); one it keeps out is refused at once, with the next window as its hint,
though the window may end with room for it. Either error is about one request a window.

Pure: times are the store's milliseconds, passed in; no clock, no I/O.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from gateway.limiter.core import WindowView

MIN_MARGIN_MS = 250
"""A request is let in only with this much of its wait to spare before its deadline (the
dispatcher's next try, the store's clock against this replica's)..."""
LET_IN_BIAS = 1.02
"""...and only if it fits with the queue ahead charged this much more than expected (for a
window's worth of calls, 1.5-2 x what their outputs vary by); a waiter is refused later
only if it would not fit even with the queue ahead charged ``REFUSE_BIAS`` x what is expected.
Between the two, it waits: a forecast near a window's edge is unsure."""
REFUSE_BIAS = 0.95


def _events(view: WindowView, now_ms: int) -> list[tuple[int, int]]:
    """(store ms, tokens) that become admissible in the window in the next span: the room
    it has now, then each slot as it leaves (room only once the window is back under its
    limit, which a learned quota may have lowered below what the window holds)."""
    current = now_ms // view.slot_ms
    room = view.limit - sum(view.slots)
    events = [(now_ms, max(0, room))]
    for j, amount in enumerate(view.slots):
        if amount:
            before, room = max(0, room), room + amount
            if room > before:
                events.append(((current + 1 + j) * view.slot_ms, max(0, room) - before))
    return events


@dataclass(frozen=True)
class Capacity:
    """The routes' windows as one denial saw them at the store's ``now_ms``."""

    now_ms: int
    windows: tuple[WindowView, ...]
    _times: list[int] = field(init=False, repr=False)
    _totals: list[int] = field(init=False, repr=False)
    _alone: list[tuple[list[int], list[int]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        merged: list[tuple[int, int]] = []
        alone = []
        for view in self.windows:
            events = _events(view, self.now_ms)
            merged += events
            alone.append(_cumulative(events))
        times, totals = _cumulative(sorted(merged))
        object.__setattr__(self, "_times", times)
        object.__setattr__(self, "_totals", totals)
        object.__setattr__(self, "_alone", alone)

    @property
    def per_span(self) -> int:
        return sum(view.limit for view in self.windows)

    def fits_at(
        self, amount: float, cost: int, refunds: float = 0.0, *, delayed: float = 0.0,
        delay_ms: int = 0,
    ) -> int | None:  # fmt: skip
        """The store time at which ``amount`` tokens (the queue ahead, as it will be charged,
        plus this request's ``cost``) have room across the routes, and one route has room for
        ``cost`` alone, once ``refunds`` (expected from requests in flight) came back; None: no
        window to tell, or no route can ever hold ``cost``. The queue ahead is admitted on its
        full reservations and gives back ``delayed`` of them as its calls settle, each
        ``delay_ms`` after it came in: room a slot frees and a call ahead takes comes back, in
        part, only that much later (at a window's last slot, the wait for it)."""
        if not self.windows or self.per_span <= 0:
            return None
        alone = _tokens(cost - refunds)
        own = [_first(t, c, alone) for (t, c), v in zip(self._alone, self.windows, strict=True)
               if cost <= v.limit]  # fmt: skip
        if not own:
            return None
        need = _tokens(amount - refunds)
        if need == 0:
            return min(own)
        cycles, rest = divmod(need - 1, self.per_span)
        if cycles:
            together = _first(self._times, self._totals, rest + 1)
            # a later window frees what was admitted in this one a span after it came in, and
            # nothing is admitted before a request fits: the room there is now is not taken
            # (nor freed a span on) until the slots leaving have made it enough for one
            period = self.windows[0].span * self.windows[0].slot_ms
            head = _first(self._times, self._totals, min(cost, self.per_span))
            together = max(together, head) + cycles * period
        else:
            ahead = max(1.0, amount - cost)
            together = self._first_settled(rest + 1, min(delayed, ahead), delayed / ahead,
                                           delay_ms)  # fmt: skip
        return max(together, min(own))

    def _first_settled(self, amount: int, pending_most: float, rate: float, delay_ms: int) -> int:
        """The first time the room freed, less the refunds still pending then, reaches
        ``amount``: what was freed in the last ``delay_ms`` was taken by calls whose refunds
        (``rate`` x what they took, at most ``pending_most``) have not come back yet. Room
        less pending never falls as time passes, so the first time is found by bisection over
        the times it can change: a slot leaving, and a delay after it."""
        times, totals = self._times, self._totals
        if delay_ms <= 0 or pending_most <= 0:
            return _first(times, totals, amount)

        def freed(at: int) -> int:
            index = bisect.bisect_right(times, at) - 1
            return totals[index] if index >= 0 else 0

        def settled(at: int) -> float:
            recent = freed(at) - freed(at - delay_ms)
            return freed(at) - min(pending_most, rate * recent)

        candidates = sorted({*times, *(t + delay_ms for t in times)})
        low, high = 0, len(candidates) - 1
        while low < high:
            middle = (low + high) // 2
            if settled(candidates[middle]) >= amount:
                high = middle
            else:
                low = middle + 1
        return candidates[low]


def _tokens(amount: float) -> int:
    """Whole tokens, rounded up; 0 when refunds cover it."""
    return max(0, int(amount + 0.999))


def _cumulative(events: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    times, totals, total = [], [], 0
    for at, amount in events:
        total += amount
        times.append(at)
        totals.append(total)
    return times, totals


def _first(times: list[int], totals: list[int], amount: int) -> int:
    """The first time the cumulative ``totals`` reach ``amount`` (they reach every amount up
    to a span's capacity)."""
    index = bisect.bisect_left(totals, amount)
    return times[min(index, len(times) - 1)]


def refuse_on_arrival(forecast_ms: int, budget_ms: float) -> bool:
    """The forecast is past what the request may wait, less ``MIN_MARGIN_MS``. No margin
    grows with the wait: what the forecast does not know is what the queue ahead will really
    use, which ``LET_IN_BIAS`` and ``REFUSE_BIAS`` weigh in tokens; a margin of time as well
    refused requests at the start of a window that the window then admitted in time."""
    return forecast_ms > budget_ms - MIN_MARGIN_MS
