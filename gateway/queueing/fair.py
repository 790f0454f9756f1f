"""The order in which queued requests get their turn: weighted fair shares among tenants.

Self-clocked fair queuing (Golestani, 1994) over flows. A flow is one tenant's waiting entries
of one class, first in first out; only its first entry competes, tagged

    finish = start + cost / weight

where ``start`` is the finish tag of the flow's last *served* entry, or V (the finish tag of the
entry of its class served last) if that is later when the flow starts waiting. The queue serves
the competing entry with the smallest ``(class, finish, arrival)``. Under contention each
tenant is served in proportion to its weight, counted in the entry cost (reserved quota tokens),
however many requests it sends; every interactive entry goes before any batch entry.

A tenant is charged only for what it is served: an entry that leaves unserved (its deadline
passed, its client went away) hands its start on to the next entry of its flow. (Tagging every
entry on arrival, or its successor from V, would charge a tenant for what it offers: under
sustained overload, where most waiters reach their deadline, the tenant that loses more of
them, and so the one with the smaller weight, would run ahead in virtual time and be starved.)
A parked flow (its tenant's own budget is spent) stops competing and starts again from V at
the earliest: no credit for the time it sat out. Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")

INTERACTIVE, BATCH = 0, 1

FlowKey = tuple[str, int]


class Ahead(NamedTuple):
    """What the queue serves before an entry: its cost, and the part of it held for outputs
    (entries' ``output``), which the forecast charges differently."""

    cost: int
    output: int = 0


@dataclass(eq=False)
class Entry(Generic[T]):
    item: T
    tenant: str
    klass: int
    cost: int
    seq: int
    output: int = 0
    """The part of ``cost`` held for the output."""
    finish: float = 0.0
    """Its tag, once it is the first of its flow."""
    queued: bool = True
    """In the queue: neither served nor cancelled."""

    def key(self) -> tuple[int, float, int]:
        return (self.klass, self.finish, self.seq)


@dataclass(eq=False)
class _Flow(Generic[T]):
    weight: float
    start: float
    """The start tag of its first entry."""
    entries: deque[Entry[T]] = field(default_factory=deque)
    parked: bool = False
    queued_cost: int = 0
    """The cost of its entries still queued..."""
    queued_output: int = 0
    """...and the part of it held for outputs."""


@dataclass
class FairQueue(Generic[T]):
    _flows: dict[FlowKey, _Flow[T]] = field(default_factory=dict)
    _heap: list[tuple[tuple[int, float, int], Entry[T]]] = field(default_factory=list)
    """The flows' first entries; an item is stale once its entry is no longer a competing
    first with that key (removed lazily)."""
    _last_finish: dict[FlowKey, float] = field(default_factory=dict)
    _virtual: dict[int, float] = field(default_factory=dict)
    """V per class: a class's flows wait out the classes above it without gaining credit."""
    _live: int = 0
    _live_by_class: dict[int, int] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        """Entries waiting, parked flows' included."""
        return self._live

    def depth(self, klass: int) -> int:
        """Entries of ``klass`` waiting."""
        return self._live_by_class.get(klass, 0)

    def push(
        self, item: T, *, tenant: str, weight: float, klass: int, cost: int, output: int = 0
    ) -> Entry[T]:
        cost = max(cost, 1)
        entry = Entry(item, tenant, klass, cost, next(self._seq), min(max(output, 0), cost))
        flow = self._flows.get((tenant, klass))
        if flow is None:
            start = max(self._virtual.get(klass, 0.0), self._last_finish.get((tenant, klass), 0.0))
            flow = self._flows[(tenant, klass)] = _Flow(weight, start)
        flow.weight = weight
        flow.entries.append(entry)
        flow.queued_cost += entry.cost
        flow.queued_output += entry.output
        self._live += 1
        self._live_by_class[klass] = self._live_by_class.get(klass, 0) + 1
        if len(flow.entries) == 1:
            self._compete(flow)
        return entry

    def head(self) -> Entry[T] | None:
        """The entry to serve next, left in the queue."""
        heap = self._heap
        while heap:
            key, entry = heap[0]
            if entry.queued and entry.key() == key and self._competing(entry):
                return entry
            heapq.heappop(heap)
        return None

    def serve(self, entry: Entry[T]) -> None:
        """``entry`` was admitted: its tenant's tag and the virtual time advance past it."""
        if not entry.queued:
            return
        key = (entry.tenant, entry.klass)
        self._last_finish[key] = self._flows[key].start = entry.finish
        self._virtual[entry.klass] = max(self._virtual.get(entry.klass, 0.0), entry.finish)
        self.cancel(entry)

    def cancel(self, entry: Entry[T]) -> None:
        """Take ``entry`` out unserved, wherever it is (its waiter gave up)."""
        if not entry.queued:
            return
        entry.queued = False
        self._live -= 1
        self._live_by_class[entry.klass] -= 1
        flow = self._flows[(entry.tenant, entry.klass)]
        flow.queued_cost -= entry.cost
        flow.queued_output -= entry.output
        if flow.entries[0] is not entry:
            return  # dropped when it reaches the front
        while flow.entries and not flow.entries[0].queued:
            flow.entries.popleft()
        if not flow.entries:
            del self._flows[(entry.tenant, entry.klass)]
        elif not flow.parked:
            self._compete(flow)

    def park(self, entry: Entry[T]) -> None:
        """Stop ``entry``'s flow competing (its first entry keeps its place in the flow)."""
        flow = self._flows.get((entry.tenant, entry.klass))
        if flow is not None:
            flow.parked = True

    def unpark(self, entry: Entry[T]) -> None:
        flow = self._flows.get((entry.tenant, entry.klass))
        if flow is not None and flow.parked:
            flow.parked = False
            flow.start = max(flow.start, self._virtual.get(entry.klass, 0.0))
            self._compete(flow)

    def entries(self) -> list[Entry[T]]:
        """Every waiting entry, parked flows' included (for answering them all at shutdown)."""
        return [e for flow in self._flows.values() for e in flow.entries if e.queued]

    # ---- what is served before whom (the forecast) -------------------------------------

    def ahead(self, tenant: str, klass: int, weight: float, cost: int) -> Ahead:
        """What the queue would serve before a new entry of ``tenant`` and ``klass``: all of
        its flow and of the classes above, and of every other flow of its class what that flow
        is served, by its weight, up to the new entry's finish tag."""
        key = (tenant, klass)
        flow = self._flows.get(key)
        if flow is None:
            start = max(self._virtual.get(klass, 0.0), self._last_finish.get(key, 0.0))
            own = Ahead(0, 0)
        else:
            start, own = self._start(flow, klass), Ahead(flow.queued_cost, flow.queued_output)
        return _plus(own, self._others(key, start + (own.cost + max(cost, 1)) / weight))

    def ahead_of(self, entry: Entry[T]) -> Ahead:
        """What the queue serves before ``entry``, which is queued."""
        key = (entry.tenant, entry.klass)
        flow = self._flows[key]
        before = Ahead(0, 0)
        for other in flow.entries:
            if other is entry:
                break
            if other.queued:
                before = Ahead(before.cost + other.cost, before.output + other.output)
        finish = self._start(flow, entry.klass) + (before.cost + entry.cost) / flow.weight
        return _plus(before, self._others(key, finish))

    def in_order(self) -> list[tuple[Entry[T], Ahead]]:
        """Every queued entry with what is served before it (``ahead_of`` of each)."""
        result = []
        for key, flow in self._flows.items():
            start, cost, output = self._start(flow, key[1]), 0, 0
            for entry in flow.entries:
                if entry.queued:
                    finish = start + (cost + entry.cost) / flow.weight
                    result.append((entry, _plus(Ahead(cost, output), self._others(key, finish))))
                    cost, output = cost + entry.cost, output + entry.output
        return result

    def _start(self, flow: _Flow[T], klass: int) -> float:
        """A flow's start tag; a parked one competes again from V at the earliest."""
        return max(flow.start, self._virtual.get(klass, 0.0)) if flow.parked else flow.start

    def _others(self, own: FlowKey, finish: float) -> Ahead:
        """What the flows other than ``own`` are served before virtual time ``finish`` in
        ``own``'s class: all of a class above it, by weight within it (its output part in
        proportion)."""
        cost = output = 0
        for key, flow in self._flows.items():
            if key == own or key[1] > own[1]:
                continue
            if key[1] < own[1]:
                cost, output = cost + flow.queued_cost, output + flow.queued_output
            else:
                share = (finish - self._start(flow, key[1])) * flow.weight
                served = min(flow.queued_cost, max(0, int(share)))
                cost += served
                if served and flow.queued_cost:
                    output += flow.queued_output * served // flow.queued_cost
        return Ahead(cost, output)

    def _compete(self, flow: _Flow[T]) -> None:
        first = flow.entries[0]
        first.finish = flow.start + first.cost / flow.weight
        heapq.heappush(self._heap, (first.key(), first))

    def _competing(self, entry: Entry[T]) -> bool:
        flow = self._flows.get((entry.tenant, entry.klass))
        return flow is not None and not flow.parked and flow.entries[0] is entry


def _plus(a: Ahead, b: Ahead) -> Ahead:
    return Ahead(a.cost + b.cost, a.output + b.output)
