"""The order in which queued requests get their turn: weighted fair shares among tenants.

Self-clocked fair queuing (Golestani, 1994). Each entry gets a finish tag

    start  = max(V, last finish tag of its tenant in its class)
    finish = start + cost / weight

and the queue serves the smallest ``(class, finish, arrival)``; V is the finish tag of the entry
served last. Under contention each tenant is served in proportion to its weight, counted in the
entry cost (reserved quota tokens), however many requests it sends; a tenant's entries keep
their arrival order within a class (their tags only grow); every interactive entry goes before
any batch entry. Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

INTERACTIVE, BATCH = 0, 1


@dataclass(eq=False)
class Entry(Generic[T]):
    item: T
    tenant: str
    klass: int
    finish: float
    seq: int
    queued: bool = False
    """In the queue: neither served, nor set aside, nor cancelled."""

    def key(self) -> tuple[int, float, int]:
        return (self.klass, self.finish, self.seq)


@dataclass
class FairQueue(Generic[T]):
    _heap: list[tuple[tuple[int, float, int], Entry[T]]] = field(default_factory=list)
    _last_finish: dict[tuple[str, int], float] = field(default_factory=dict)
    _virtual: float = 0.0
    _live: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return self._live

    def push(self, item: T, *, tenant: str, weight: float, klass: int, cost: int) -> Entry[T]:
        start = max(self._virtual, self._last_finish.get((tenant, klass), 0.0))
        finish = start + max(cost, 1) / weight
        self._last_finish[(tenant, klass)] = finish
        entry = Entry(item, tenant, klass, finish, next(self._seq))
        self.requeue(entry)
        return entry

    def requeue(self, entry: Entry[T]) -> None:
        """Put back an entry taken out earlier (a parked head), with its original tag."""
        entry.queued = True
        heapq.heappush(self._heap, (entry.key(), entry))
        self._live += 1

    def head(self) -> Entry[T] | None:
        while self._heap and not self._heap[0][1].queued:
            heapq.heappop(self._heap)
        return self._heap[0][1] if self._heap else None

    def pop(self) -> Entry[T]:
        """Take the head out: it was served (advance V) or set aside."""
        entry = self.head()
        if entry is None:
            raise IndexError("pop from an empty queue")
        heapq.heappop(self._heap)
        entry.queued = False
        self._live -= 1
        return entry

    def served(self, entry: Entry[T]) -> None:
        self._virtual = max(self._virtual, entry.finish)

    def cancel(self, entry: Entry[T]) -> None:
        """Remove an entry wherever it is (its waiter gave up); O(1), removed lazily."""
        if entry.queued:
            entry.queued = False
            self._live -= 1
