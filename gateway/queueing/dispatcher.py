"""Waiting for capacity: one fair queue and one dispatcher task per model, in each replica.

A request the limiter cannot admit now joins its model's queue (``fair.py`` orders it) and
awaits a future. Only the dispatcher talks to the quota store on the waiters' behalf, and only
for the queue's head: it tries to admit it, and when the store says no, sleeps until the store's
own hint of when the head would fit (capped by ``recheck_s``, since other replicas' settlements
are not observed directly), or until a settlement in this replica frees capacity. So the store
sees at most one attempt per hint per model per replica, however many requests wait: no
thundering herd. Replicas compete for capacity on equal terms, each with its own fair head; a
new arrival never jumps its own replica's queue.

A head denied by its tenant's budget (not the pool's) parks its tenant's flow until its hint,
so one tenant's exhausted budget does not block the others; the flow keeps its order and
competes again, tagged afresh, when the hint comes due. Every waiter is answered by its
deadline: admitted, or a ThrottlingException with a retry hint, unless its caller goes away
first: then it leaves the queue (``Abandoned``) rather than be admitted and sent upstream for
nobody. Closing answers every waiter at once.

Each denial also reports the routes' windows, from which ``forecast.py`` tells when any waiter
could be admitted, given the cost queued before it in fair order. Every hint the queue gives is
that forecast. With ``refuse_when_hopeless``, a request whose forecast is past its deadline is
refused when it arrives, not when its deadline comes, and the waiters are judged again on each
fresh denial (a waiter whose forecast has moved past its deadline is answered then); only once
enough settlements were seen to trust the forecast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.catalog import Route
from gateway.errors import GatewayError, Throttled
from gateway.limiter.core import Bucket, Denied, Kind
from gateway.limiter.service import (
    Bill,
    Limiter,
    Ticket,
    budget_exhausted,
    refused_by,
    throttle_message,
    throttled,
)
from gateway.limiter.settled import SettledShare
from gateway.queueing.fair import BATCH, INTERACTIVE, Ahead, Entry, FairQueue
from gateway.queueing.forecast import LET_IN_BIAS, REFUSE_BIAS, Capacity, refuse_on_arrival


class Abandoned(Exception):
    """The caller went away while its request waited; the request left the queue."""


@dataclass(eq=False)
class Waiter:
    member: str
    tenant: str
    routes: tuple[Route, ...]
    reserved: int
    future: asyncio.Future[Ticket]
    denied: Denied
    """The last refusal: it names the limit the waiter is waiting for."""
    deadline: float = 0.0
    bill: Bill | None = None
    output_reserved: int = 0
    """The part of ``reserved`` held for the output."""


async def _sleep_unless_woken(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class _Group:
    """One model's queue and its dispatcher."""

    def __init__(self, owner: Queues, routes: tuple[Route, ...]) -> None:
        self.owner = owner
        self.routes = routes
        self.capacity: Capacity | None = None
        """The routes' windows as the last denial saw them..."""
        self.seen_at = 0.0
        """...at this time of the queue's clock."""
        self.queue: FairQueue[Waiter] = FairQueue()
        self.parked: list[tuple[float, Entry[Waiter]]] = []
        self.wake = asyncio.Event()
        self.hint_ms = 1000
        self.last_denied: Denied
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        self.wake.set()

    def observe(self, denied: Denied, now: float) -> None:
        """A fresh denial: its hint, its windows, and the waiters judged again."""
        self.hint_ms = denied.retry_after_ms or self.owner.recheck_ms
        self.last_denied = denied
        if denied.windows:
            self.capacity, self.seen_at = Capacity(denied.now_ms, denied.windows), now
            if self.owner.refuse_when_hopeless and self.trusted():
                self._rejudge(now)

    def trusted(self) -> bool:
        return self.capacity is not None and all(
            self.owner.limiter.settled_share.get(r, _NO_SHARE).trusted for r in self.routes
        )

    def forecast_ms(self, ahead: Ahead, cost: int, now: float, bias: float = 1.0) -> int | None:
        """When a request of ``cost`` with ``ahead`` queued before it could be admitted, in
        ms from ``now``, the queue ahead charged ``bias`` x what settlements are expected to
        leave of its reservations (on the route that leaves most); None when no denial has
        shown the routes' windows."""
        if self.capacity is None:
            return None
        limiter = self.owner.limiter
        shares = [(r, limiter.settled_share.get(r, _NO_SHARE)) for r in self.routes]
        charged = bias * max(share.charge(*ahead) for _, share in shares)
        refunds = 0.0  # what this replica's calls in flight are expected to give back
        for route, share in shares:
            held = limiter.in_flight.get(route, 0)
            refunds += held - share.charge(held, limiter.in_flight_output.get(route, 0))
        delay_ms = int(max(share.duration_ms for _, share in shares))
        delayed = max(0.0, ahead.cost - charged)  # what the queue ahead gives back as it settles
        at = self.capacity.fits_at(
            charged + cost, cost, max(0.0, refunds), delayed=delayed, delay_ms=delay_ms
        )
        if at is None:
            return None
        store_now = self.capacity.now_ms + (now - self.seen_at) * 1000
        return max(0, int(at - store_now))

    def hint_for(self, ahead: Ahead, cost: int, now: float, denied: Denied | None = None) -> int:
        """The forecast; for a waiter ``denied`` by a limit the forecast does not model (its
        tenant's budgets, requests per minute, concurrency), no sooner than that limit said."""
        forecast = self.forecast_ms(ahead, cost, now)
        hint = self.hint_ms if forecast is None else forecast
        if denied is not None and denied.retry_after_ms and not self._forecasts(denied.bucket):
            hint = max(hint, denied.retry_after_ms)
        return hint

    def _forecasts(self, bucket: Bucket) -> bool:
        return (
            bucket.kind == Kind.WINDOW
            and not self.owner.is_tenant_limit(bucket)
            and bucket.name == "tpm"
        )

    def _rejudge(self, now: float) -> None:
        """Answer now every waiter whose forecast is past its deadline, and so confident it
        would not fit even if settlements left less than expected and the waiters before it
        in its flow that are unlikely to be admitted (their own expected forecast is past
        their deadline) left the queue first: a waiter refused for one ahead of it that is
        itself refused a moment later leaves room nobody takes."""
        doubtful: dict[tuple[str, int], tuple[int, int]] = {}
        for entry, ahead in self.queue.in_order():
            waiter = entry.item
            if waiter.future.done():
                continue
            flow = (entry.tenant, entry.klass)
            cost, output = doubtful.get(flow, (0, 0))
            ahead = Ahead(max(0, ahead.cost - cost), max(0, ahead.output - output))
            left_ms = (waiter.deadline - now) * 1000
            soonest = self.forecast_ms(ahead, entry.cost, now, REFUSE_BIAS)
            if soonest is not None and soonest > left_ms:
                hint = self.hint_for(ahead, entry.cost, now, waiter.denied)
                waiter.future.set_exception(_hopeless_now(waiter, hint, now))
            else:
                expected = self.forecast_ms(ahead, entry.cost, now)
                if expected is None or expected <= left_ms:
                    continue
            doubtful[flow] = (cost + entry.cost, output + entry.output)

    def _unpark(self, now: float) -> float | None:
        """Let the parked flows whose time has come compete again; when the next one is due."""
        due = [p for p in self.parked if p[0] <= now]
        for item in due:
            self.parked.remove(item)
            self.queue.unpark(item[1])
        return min((p[0] for p in self.parked), default=None)

    async def _run(self) -> None:
        owner = self.owner
        while True:
            now = owner.clock()
            next_parked = self._unpark(now)
            entry = self.queue.head()
            if entry is None:
                if next_parked is None and not self.parked:
                    return  # idle: start() makes a new task when someone queues
                self.wake.clear()
                await _sleep_unless_woken(
                    self.wake, None if next_parked is None else next_parked - now
                )
                continue
            waiter = entry.item
            if waiter.future.done():
                self.queue.cancel(entry)
                continue
            await self._attempt(entry, waiter)

    async def _attempt(self, entry: Entry[Waiter], waiter: Waiter) -> None:
        """Try the head once. The queue may change during the store call (arrivals, waiters
        giving up), so every outcome takes out ``entry`` itself, never "the head now"; and the
        wake-up is reset before the call, so a settlement during it is not lost."""
        owner = self.owner
        self.wake.clear()
        try:
            decision = await owner.limiter.admit(
                waiter.member, waiter.tenant, waiter.routes, waiter.reserved, waiter.bill,
                waiter.output_reserved,
            )  # fmt: skip
        except GatewayError as exc:
            self.queue.cancel(entry)
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            return
        if isinstance(decision, Ticket):
            self.queue.serve(entry)  # a no-op if its waiter left during the call
            owner.hand_over(waiter, decision)
            return
        waiter.denied = decision
        self.observe(decision, owner.clock())
        if waiter.future.done():
            return  # judged hopeless: the next head tries now
        if owner.hopeless(decision, waiter.tenant, waiter.deadline - owner.clock()):
            self.queue.cancel(entry)
            waiter.future.set_exception(owner.refusal(decision))
            return
        if owner.is_tenant_limit(decision.bucket):
            if entry.queued:
                self.queue.park(entry)
                # a day or month budget's hint is its reset: refunds come sooner, so re-check
                park_ms = self.hint_ms
                if decision.bucket.kind == Kind.PERIOD:
                    park_ms = min(park_ms, owner.recheck_ms)
                self.parked.append((owner.clock() + park_ms / 1000, entry))
            return
        await _sleep_unless_woken(self.wake, min(self.hint_ms, owner.recheck_ms) / 1000)


class Queues:
    def __init__(
        self,
        limiter: Limiter,
        *,
        max_depth: int,
        recheck_s: float,
        weights: dict[str, float],
        is_tenant_limit: Callable[[Bucket], bool],
        refuse_when_hopeless: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.refuse_when_hopeless = refuse_when_hopeless
        self.max_depth = max_depth
        self.recheck_ms = int(recheck_s * 1000)
        self.weights = weights
        self.is_tenant_limit = is_tenant_limit
        self.clock = clock
        self._groups: dict[str, _Group] = {}
        self._by_route: dict[Route, set[str]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self.closing = False

    def depth(self, group: str, klass: int | None = None) -> int:
        """Requests of ``group`` waiting, of class ``klass`` (INTERACTIVE or BATCH) or all."""
        state = self._groups.get(group)
        if state is None:
            return 0
        return len(state.queue) if klass is None else state.queue.depth(klass)

    async def admit(
        self, member: str, tenant: str, group: str, routes: tuple[Route, ...], reserved: int,
        *, max_wait_s: float, batch: bool, bill: Bill | None = None,
        gone: Callable[[], Awaitable[None]] | None = None, output_reserved: int = 0,
    ) -> tuple[Ticket, float]:  # fmt: skip
        """A ticket, and the seconds spent queued; raises Throttled past the deadline, and
        BudgetExhausted at once for a tenant's spent day or month budget. ``gone`` returns
        when the caller has left: watched only while the request waits, which then raises
        Abandoned. ``output_reserved``: the part of ``reserved`` held for the output."""
        started = self.clock()
        state = self._groups.get(group)
        if state is None or not len(state.queue):
            decision = await self.limiter.admit(
                member, tenant, routes, reserved, bill, output_reserved
            )
            if isinstance(decision, Ticket):
                return decision, 0.0
            if self.closing or max_wait_s <= 0 or self.hopeless(decision, tenant, max_wait_s):
                raise self.refusal(decision)
            state = self._group(group, routes)
            state.observe(decision, self.clock())
        else:
            self.limiter.plan(member, tenant, routes, reserved, bill)  # hopeless: fails now
        denied, now = state.last_denied, self.clock()
        budget_s = max_wait_s - (now - started)
        klass = BATCH if batch else INTERACTIVE
        ahead = state.queue.ahead(tenant, klass, self.weights.get(tenant, 1.0), reserved)
        forecast = state.forecast_ms(ahead, reserved, now)
        if self.closing or len(state.queue) >= self.max_depth:
            raise Throttled(
                f"Too many requests are waiting for {group}, please wait before trying again. "
                f"(bedrock-gateway: queue full)", state.hint_ms if forecast is None else forecast,
                limit="queue_full", reason="queue_full",
            )  # fmt: skip
        if self.refuse_when_hopeless and forecast is not None and state.trusted():
            # let in only what fits even if settlements leave more than expected; the hint
            # is the same forecast: when it fits that surely
            latest = state.forecast_ms(ahead, reserved, now, LET_IN_BIAS)
            if latest is not None and refuse_on_arrival(latest, budget_s * 1000):
                raise _hopeless_refusal(denied, latest, budget_s)
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(member, tenant, routes, reserved, future, denied, now + budget_s, bill,
                        output_reserved)  # fmt: skip
        ticket = await self._wait(state, waiter, budget_s, batch, gone)
        return ticket, self.clock() - started

    async def _wait(
        self, state: _Group, waiter: Waiter, budget_s: float, batch: bool,
        gone: Callable[[], Awaitable[None]] | None,
    ) -> Ticket:  # fmt: skip
        entry = state.queue.push(
            waiter, tenant=waiter.tenant, weight=self.weights.get(waiter.tenant, 1.0),
            klass=BATCH if batch else INTERACTIVE, cost=waiter.reserved,
            output=waiter.output_reserved,
        )  # fmt: skip
        state.start()
        try:
            async with asyncio.timeout(max(0.0, budget_s)):
                return await _admitted(waiter, gone)
        except TimeoutError:
            ahead = state.queue.ahead_of(entry) if entry.queued else Ahead(0)
            state.queue.cancel(entry)
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # admitted in the same instant: use it
            hint = state.hint_for(ahead, entry.cost, self.clock(), waiter.denied)
            waiter.future.cancel()
            message = throttle_message(waiter.denied.bucket)
            raise Throttled(
                f"{message[:-1]}, still at capacity after the {budget_s:.1f} s this request "
                f"may wait)", hint, **refused_by(waiter.denied.bucket), reason="queue_timeout",
            ) from None  # fmt: skip
        finally:
            state.queue.cancel(entry)

    def hopeless(self, denied: Denied, tenant: str, max_wait_s: float) -> bool:
        """Waiting cannot help: the cost never fits, or a spent day or month budget resets only
        after the deadline while none of the tenant's calls in flight here may give part of
        their reservation back. (Another replica's may: a refusal can come that much early,
        never late.)"""
        return _hopeless(denied, max_wait_s) and (
            denied.retry_after_ms is None or not self.limiter.tenant_in_flight.get(tenant)
        )

    def refusal(self, denied: Denied) -> GatewayError:
        """What a denial that waiting cannot help becomes: a tenant's spent day or month budget
        is BudgetExhausted (not worth retrying before it resets), anything else Throttled."""
        bucket = denied.bucket
        if bucket.kind == Kind.PERIOD and self.is_tenant_limit(bucket):
            return budget_exhausted(denied)
        return throttled(denied)

    def hand_over(self, waiter: Waiter, ticket: Ticket) -> None:
        if not waiter.future.done():
            waiter.future.set_result(ticket)
            return
        # the waiter gave up (deadline or disconnect) just as it was admitted: refund it
        task = asyncio.get_running_loop().create_task(self.limiter.withdraw(ticket))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _group(self, name: str, routes: tuple[Route, ...]) -> _Group:
        state = self._groups.get(name)
        if state is None:
            state = self._groups[name] = _Group(self, routes)
            for route in routes:
                self._by_route.setdefault(route, set()).add(name)
        return state

    def settled(self, route: Route) -> None:
        """Capacity came back on ``route`` in this replica: let its queues' heads try."""
        for name in self._by_route.get(route, ()):
            state = self._groups[name]
            if len(state.queue):
                state.wake.set()

    async def close(self) -> None:
        """Answer every waiter now (a ThrottlingException: retry elsewhere) and stop."""
        self.closing = True
        for state in self._groups.values():
            for entry in state.queue.entries():
                state.queue.cancel(entry)
                self._refuse(entry.item, state.hint_ms)
            state.parked.clear()
            if state.task is not None:
                state.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.task
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    @staticmethod
    def _refuse(waiter: Waiter, hint_ms: int) -> None:
        if not waiter.future.done():
            waiter.future.set_exception(Throttled(
                "The gateway is shutting down, please retry. (bedrock-gateway: draining)",
                hint_ms, limit="draining", reason="draining"))  # fmt: skip


_NO_SHARE = SettledShare()


async def _admitted(waiter: Waiter, gone: Callable[[], Awaitable[None]] | None) -> Ticket:
    """The waiter's ticket (or its refusal), unless ``gone`` returns first. The future is
    never cancelled from outside: a deadline or a departure cancels it here, after which the
    dispatcher refunds a ticket it was admitting in that instant (``hand_over``)."""
    if gone is None:
        return await asyncio.shield(waiter.future)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((waiter.future, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if waiter.future.done():  # admitted or refused first, or in the same instant
        return waiter.future.result()
    waiter.future.cancel()
    raise Abandoned


def _hopeless_refusal(denied: Denied, forecast_ms: int, budget_s: float) -> Throttled:
    message = throttle_message(denied.bucket)
    return Throttled(
        f"{message[:-1]}; the requests queued ahead leave no room for this one before "
        f"{forecast_ms / 1000:.1f} s, past the {budget_s:.1f} s it may wait)", forecast_ms,
        **refused_by(denied.bucket), reason="hopeless",
    )  # fmt: skip


def _hopeless_now(waiter: Waiter, forecast_ms: int, now: float) -> Throttled:
    return _hopeless_refusal(waiter.denied, forecast_ms, max(0.0, waiter.deadline - now))


def _hopeless(denied: Denied, max_wait_s: float) -> bool:
    """Waiting cannot help: the cost never fits, or a spent day or month budget resets only
    after the deadline. (A window's hint assumes no refunds; settlements of requests in flight
    usually free capacity sooner, so those wait.)"""
    if denied.retry_after_ms is None:
        return True
    return denied.bucket.kind == Kind.PERIOD and denied.retry_after_ms / 1000 > max_wait_s
