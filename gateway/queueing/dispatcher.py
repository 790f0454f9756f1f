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
deadline: admitted, or a ThrottlingException with a retry hint. Closing answers every waiter
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.catalog import Route
from gateway.errors import GatewayError, Throttled
from gateway.limiter.core import Bucket, Denied, Kind
from gateway.limiter.service import Limiter, Ticket, throttle_message, throttled
from gateway.queueing.fair import BATCH, INTERACTIVE, Entry, FairQueue


@dataclass(eq=False)
class Waiter:
    member: str
    tenant: str
    routes: tuple[Route, ...]
    reserved: int
    future: asyncio.Future[Ticket]
    denied: Denied
    """The last refusal: it names the limit the waiter is waiting for."""


async def _sleep_unless_woken(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class _Group:
    """One model's queue and its dispatcher."""

    def __init__(self, owner: Queues) -> None:
        self.owner = owner
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
                waiter.member, waiter.tenant, waiter.routes, waiter.reserved
            )
        except GatewayError as exc:
            self.queue.cancel(entry)
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            return
        if isinstance(decision, Ticket):
            self.queue.serve(entry)  # a no-op if its waiter left during the call
            owner.hand_over(waiter, decision)
            return
        self.hint_ms = decision.retry_after_ms or owner.recheck_ms
        waiter.denied = self.last_denied = decision
        if owner.is_tenant_limit(decision.bucket):
            if entry.queued:
                self.queue.park(entry)
                self.parked.append((owner.clock() + self.hint_ms / 1000, entry))
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.max_depth = max_depth
        self.recheck_ms = int(recheck_s * 1000)
        self.weights = weights
        self.is_tenant_limit = is_tenant_limit
        self.clock = clock
        self._groups: dict[str, _Group] = {}
        self._by_route: dict[Route, set[str]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self.closing = False

    def depth(self, group: str) -> int:
        state = self._groups.get(group)
        return 0 if state is None else len(state.queue)

    async def admit(
        self, member: str, tenant: str, group: str, routes: tuple[Route, ...], reserved: int,
        *, max_wait_s: float, batch: bool,
    ) -> tuple[Ticket, float]:  # fmt: skip
        """A ticket, and the seconds spent queued; raises Throttled past the deadline."""
        started = self.clock()
        state = self._groups.get(group)
        if state is None or not len(state.queue):
            decision = await self.limiter.admit(member, tenant, routes, reserved)
            if isinstance(decision, Ticket):
                return decision, 0.0
            if self.closing or max_wait_s <= 0 or _hopeless(decision, max_wait_s):
                raise throttled(decision)
            state = self._group(group, routes)
            state.hint_ms = decision.retry_after_ms or self.recheck_ms
            state.last_denied = denied = decision
        else:
            self.limiter.plan(member, tenant, routes, reserved)  # a hopeless request fails now
            denied = state.last_denied
        if self.closing or len(state.queue) >= self.max_depth:
            raise Throttled(
                f"Too many requests are waiting for {group}, please wait before trying again. "
                f"(bedrock-gateway: queue full)", state.hint_ms,
            )  # fmt: skip
        waiter = Waiter(member, tenant, routes, reserved,
                        asyncio.get_running_loop().create_future(), denied)  # fmt: skip
        ticket = await self._wait(state, waiter, max_wait_s - (self.clock() - started), batch)
        return ticket, self.clock() - started

    async def _wait(self, state: _Group, waiter: Waiter, budget_s: float, batch: bool) -> Ticket:
        entry = state.queue.push(
            waiter, tenant=waiter.tenant, weight=self.weights.get(waiter.tenant, 1.0),
            klass=BATCH if batch else INTERACTIVE, cost=waiter.reserved,
        )  # fmt: skip
        state.start()
        try:
            async with asyncio.timeout(max(0.0, budget_s)):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            state.queue.cancel(entry)
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # admitted in the same instant: use it
            waiter.future.cancel()
            message = throttle_message(waiter.denied.bucket)
            raise Throttled(
                f"{message[:-1]}, still at capacity after the {budget_s:.1f} s this request "
                f"may wait)", state.hint_ms,
            ) from None  # fmt: skip
        finally:
            state.queue.cancel(entry)

    def hand_over(self, waiter: Waiter, ticket: Ticket) -> None:
        if not waiter.future.done():
            waiter.future.set_result(ticket)
            return
        # the waiter gave up (deadline or disconnect) just as it was admitted: refund it
        task = asyncio.get_running_loop().create_task(self.limiter.settle(ticket, 0))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _group(self, name: str, routes: tuple[Route, ...]) -> _Group:
        state = self._groups.get(name)
        if state is None:
            state = self._groups[name] = _Group(self)
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
                hint_ms))  # fmt: skip


def _hopeless(denied: Denied, max_wait_s: float) -> bool:
    """Waiting cannot help: the cost never fits, or a spent day or month budget resets only
    after the deadline. (A window's hint assumes no refunds; settlements of requests in flight
    usually free capacity sooner, so those wait.)"""
    if denied.retry_after_ms is None:
        return True
    return denied.bucket.kind == Kind.PERIOD and denied.retry_after_ms / 1000 > max_wait_s
