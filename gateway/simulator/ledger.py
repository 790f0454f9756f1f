"""The charge ledger of one quota pool: every admitted request's charge by its start time.

It answers the two questions a rolling window asks: what was charged in (now - 60 s, now]
(kept as a running sum, O(1) amortised), and what was the most charged in any 60 s window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    """One admitted request. ``charge`` is its reservation until settled, then the final cost."""

    seq: int
    start: float
    charge: int
    settled: bool = False


@dataclass(frozen=True, slots=True)
class WindowTotals:
    tokens: int
    requests: int


class Ledger:
    """Entries in start order, retained for ``horizon`` seconds (at most ``max_entries``).

    The peak-window figures stay exact past the horizon: before an entry is dropped, the
    window that starts at it is folded into a running maximum. The only approximation is a
    request still in flight when its entry is dropped, which is folded at its reservation.
    Entries inside the current 60 s window are never dropped, whatever ``max_entries`` says.
    """

    def __init__(self, window: float = 60.0, horizon: float = 7200.0, max_entries: int = 500_000):
        self.window = window
        self.horizon = max(horizon, window)
        self.max_entries = max_entries
        self._items: list[Entry] = []
        self._base = 0  # seq of _items[0]; dropped entries are trimmed from the list lazily
        self._next = 0  # seq the next entry gets
        self._head = 0  # first retained seq
        self._win = 0  # first seq inside the rolling window
        self._win_tokens = 0
        self._win_requests = 0
        self._anchor_end = 0  # [head, anchor_end) = entries within `window` of the head
        self._anchor_tokens = 0
        self._anchor_requests = 0
        self._peak_tokens = 0  # the largest window that started at a dropped entry
        self._peak_requests = 0
        self._last = float("-inf")

    def add(self, now: float, charge: int) -> Entry:
        """Record a request admitted at ``now``; call ``totals(now)`` first to evict."""
        # Starts must not go backwards or the window sums lose their order.
        self._last = max(self._last, now)
        entry = Entry(self._next, self._last, charge)
        self._items.append(entry)
        self._next += 1
        self._win_tokens += charge
        self._win_requests += 1
        return entry

    def correct(self, entry: Entry, charge: int) -> None:
        """Replace the entry's charge; sums that include it follow, as of its start time."""
        delta = charge - entry.charge
        entry.charge = charge
        entry.settled = True
        if entry.seq >= self._win:
            self._win_tokens += delta
        if self._head <= entry.seq < self._anchor_end:
            self._anchor_tokens += delta

    def totals(self, now: float) -> WindowTotals:
        """Charges and requests with start in (now - window, now]."""
        self._evict(now)
        return WindowTotals(self._win_tokens, self._win_requests)

    def peak(self) -> WindowTotals:
        """The largest total charge, and request count, of any window of ``window`` seconds."""
        tokens, requests = self._peak_tokens, self._peak_requests
        end, sum_tokens, sum_requests = self._head, 0, 0
        for i in range(self._head, self._next):
            start = self._at(i).start
            while end < self._next and self._at(end).start < start + self.window:
                sum_tokens += self._at(end).charge
                sum_requests += 1
                end += 1
            tokens = max(tokens, sum_tokens)
            requests = max(requests, sum_requests)
            sum_tokens -= self._at(i).charge
            sum_requests -= 1
        return WindowTotals(tokens, requests)

    def timeline(self, offset: float = 0.0) -> list[tuple[int, int, int]]:
        """Settled ``(second, tokens, requests)`` by start second (+ ``offset``), retained only."""
        seconds: dict[int, list[int]] = {}
        for i in range(self._head, self._next):
            entry = self._at(i)
            if entry.settled:
                slot = seconds.setdefault(math.floor(entry.start + offset), [0, 0])
                slot[0] += entry.charge
                slot[1] += 1
        return [(second, t, r) for second, (t, r) in sorted(seconds.items())]

    def __len__(self) -> int:
        return self._next - self._head

    def _at(self, seq: int) -> Entry:
        return self._items[seq - self._base]

    def _evict(self, now: float) -> None:
        cutoff = now - self.window
        while self._win < self._next and self._at(self._win).start <= cutoff:
            self._win_tokens -= self._at(self._win).charge
            self._win_requests -= 1
            self._win += 1
        old = now - self.horizon
        while self._head < self._win and (
            self._at(self._head).start <= old or self._next - self._head > self.max_entries
        ):
            self._drop_head()
        if self._head - self._base > max(1024, len(self._items) // 2):
            del self._items[: self._head - self._base]
            self._base = self._head

    def _drop_head(self) -> None:
        head = self._at(self._head)
        # Every later entry within `window` of the head has already arrived: the head is
        # older than the rolling window, so nothing new can start that close to it.
        while self._anchor_end < self._next and self._at(self._anchor_end).start < (
            head.start + self.window
        ):
            self._anchor_tokens += self._at(self._anchor_end).charge
            self._anchor_requests += 1
            self._anchor_end += 1
        self._peak_tokens = max(self._peak_tokens, self._anchor_tokens)
        self._peak_requests = max(self._peak_requests, self._anchor_requests)
        self._anchor_tokens -= head.charge
        self._anchor_requests -= 1
        self._head += 1
