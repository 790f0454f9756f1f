"""The overflow queue over a real limiter and store, driven by settlements, not by time.

The store's clock stands still, so windows never slide: capacity comes back only when a test
settles an admitted request with a refund, which wakes the queue's head. The order in which
waiters are admitted is then exactly the queue's order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from gateway.catalog import Catalog
from gateway.config import LimiterConfig, ModelConfig, TenantConfig
from gateway.cost import Usage
from gateway.errors import BudgetExhausted, Throttled, ValidationError
from gateway.limiter.core import WindowView
from gateway.limiter.memory import MemoryStore
from gateway.limiter.service import Limiter, Ticket
from gateway.limiter.settled import MIN_SAMPLES
from gateway.limiter.store import Direct
from gateway.metrics import Metrics, pool_name
from gateway.queueing.dispatcher import Abandoned, Queues, Waiter
from gateway.queueing.fair import INTERACTIVE, FairQueue
from gateway.queueing.forecast import Capacity

T0 = 1_800_000_000_000


def setup(
    tpm: int = 100, tenants: dict[str, dict[str, Any]] | None = None, max_depth: int = 1000
) -> tuple[Queues, Limiter, Any]:
    tenants = tenants or {"a": {}, "b": {}}
    model = ModelConfig.model_validate(
        {"model_id": "m", "routes": [{"account": "x", "region": "us-east-1", "tpm": tpm}]}
    )
    configs = {name: TenantConfig.model_validate(t) for name, t in tenants.items()}
    limiter = Limiter(LimiterConfig(), configs, Direct(MemoryStore(clock_ms=lambda: T0)), Metrics())
    queues = Queues(
        limiter, max_depth=max_depth, recheck_s=5,
        weights={n: c.weight for n, c in configs.items()},
        is_tenant_limit=limiter.is_tenant_limit,
    )  # fmt: skip
    limiter.on_capacity = queues.settled
    routes = Catalog({"m": model}).resolve("m")
    assert routes is not None
    return queues, limiter, routes.routes


async def admit(queues: Queues, routes: Any, member: str, tenant: str, cost: int = 100,
                wait: float = 10, batch: bool = False) -> Ticket:  # fmt: skip
    ticket, _ = await queues.admit(member, tenant, "m", routes, cost, max_wait_s=wait, batch=batch)
    return ticket


async def drain(limiter: Limiter, tasks: dict[str, asyncio.Task[Ticket]], n: int) -> list[str]:
    """Let ``n`` waiters through one at a time, refunding each; their order of admission."""
    order: list[str] = []
    pending = set(tasks.values())
    names = {task: name for name, task in tasks.items()}
    for _ in range(n):
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # capacity for exactly one at a time
        task = done.pop()
        order.append(names[task])
        await limiter.settle(task.result(), 0)  # refund: room for the next head
    for task in pending:
        task.cancel()
    return order


async def blocked(queues: Queues, limiter: Limiter, routes: Any) -> Ticket:
    """Fill the pool so that everything after this waits."""
    return await admit(queues, routes, "blocker", "a")


async def test_waiters_are_admitted_when_capacity_returns() -> None:
    queues, limiter, routes = setup()
    first = await blocked(queues, limiter, routes)
    waiting = asyncio.create_task(admit(queues, routes, "w", "b"))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert queues.depth("m") == 1
    await limiter.settle(first, 0)
    ticket = await asyncio.wait_for(waiting, 5)
    assert ticket.route.label == "x/us-east-1/m"
    await queues.close()


@pytest.mark.parametrize(("weights", "expected_a"), [((1, 1), 0.5), ((3, 1), 0.75)])
async def test_contended_capacity_is_shared_by_weight(
    weights: tuple[int, int], expected_a: float
) -> None:
    tenants = {"a": {"weight": weights[0]}, "b": {"weight": weights[1]}}
    queues, limiter, routes = setup(tenants=tenants)
    first = await blocked(queues, limiter, routes)
    tasks = {}
    for i in range(60):  # both tenants keep more waiting than gets through
        for tenant in "ab":
            tasks[f"{tenant}{i}"] = asyncio.create_task(
                admit(queues, routes, f"{tenant}{i}", tenant)
            )
            await asyncio.sleep(0)
    await limiter.settle(first, 0)
    order = await drain(limiter, tasks, 40)
    shares = Counter(name[0] for name in order)
    assert shares["a"] / 40 == pytest.approx(expected_a, abs=0.1)
    await queues.close()


async def test_fifo_within_a_tenant_and_batch_after_interactive() -> None:
    queues, limiter, routes = setup()
    first = await blocked(queues, limiter, routes)
    tasks = {}
    for i in range(4):
        name = f"batch{i}" if i % 2 else f"inter{i}"
        tasks[name] = asyncio.create_task(
            admit(queues, routes, name, "a", batch=name.startswith("batch"))
        )
        await asyncio.sleep(0)
    await limiter.settle(first, 0)
    assert await drain(limiter, tasks, 4) == ["inter0", "inter2", "batch1", "batch3"]
    await queues.close()


async def test_a_new_arrival_does_not_jump_its_tenants_queue() -> None:
    """It would fit in the free capacity, but an earlier request of its tenant waits."""
    queues, limiter, routes = setup(tpm=200)
    first = await blocked(queues, limiter, routes)
    big = asyncio.create_task(admit(queues, routes, "big", "b", cost=200))  # needs the whole pool
    await asyncio.sleep(0)
    small = asyncio.create_task(admit(queues, routes, "small", "b", cost=100))  # would fit now
    await asyncio.sleep(0.05)
    assert not small.done()  # it queued behind big instead of taking the free 100
    await limiter.settle(first, 0)
    await limiter.settle(await asyncio.wait_for(big, 5), 0)
    await asyncio.wait_for(small, 5)
    await queues.close()


async def test_a_tenant_over_its_budget_does_not_block_others() -> None:
    queues, limiter, routes = setup(tpm=1000, tenants={"a": {"tpm": 100}, "b": {}})
    await admit(queues, routes, "a-first", "a")  # a's budget is now spent
    pool_filler = await admit(queues, routes, "filler", "b", cost=900)  # and the pool is full
    stuck = asyncio.create_task(admit(queues, routes, "a-second", "a", wait=60))
    await asyncio.sleep(0)
    other = asyncio.create_task(admit(queues, routes, "b-second", "b"))
    await asyncio.sleep(0)
    await limiter.settle(pool_filler, 0)  # the pool has room; a's budget still does not
    await asyncio.wait_for(other, 5)
    assert not stuck.done()
    stuck.cancel()
    await queues.close()


async def test_past_the_deadline_the_answer_is_a_throttle_with_a_hint() -> None:
    queues, limiter, routes = setup()
    await blocked(queues, limiter, routes)
    with pytest.raises(Throttled) as caught:
        await admit(queues, routes, "late", "b", wait=0.05)  # a real 50 ms timer
    assert caught.value.retry_after_ms > 0
    refused = caught.value
    assert (refused.limit, refused.pool, refused.reason) == ("tpm", pool_name(routes[0]),
                                                             "queue_timeout")  # fmt: skip
    assert queues.depth("m") == 0  # it left the queue
    await queues.close()


async def test_a_spent_day_budget_is_refused_at_once() -> None:
    queues, limiter, routes = setup(tpm=1000, tenants={"a": {"tokens_per_day": 100}, "b": {}})
    await limiter.settle(await admit(queues, routes, "first", "a"), 100)  # all of it used
    with pytest.raises(BudgetExhausted, match="day's token budget") as spent:
        await admit(queues, routes, "hopeless", "a", wait=5)  # resets at midnight, after 5 s
    assert queues.depth("m") == 0
    assert spent.value.resets_at_ms % 86_400_000 == 0  # the next UTC midnight
    assert "(100 quota tokens)" in spent.value.message
    assert "100 used" in spent.value.message
    assert (spent.value.limit, spent.value.pool, spent.value.reason) == (
        "tokens_per_day", "", "budget_exhausted")  # fmt: skip


async def test_a_spent_day_budget_waits_while_a_call_in_flight_may_give_some_back() -> None:
    queues, limiter, routes = setup(tpm=1000, tenants={"a": {"tokens_per_day": 150}, "b": {}})
    first = await admit(queues, routes, "first", "a")
    second = asyncio.create_task(admit(queues, routes, "second", "a", wait=5))
    await asyncio.sleep(0)
    assert queues.depth("m") == 1  # waiting: the first may settle on less than it holds
    await limiter.settle(first, 40)  # 60 back: room for the second's 100
    assert isinstance(await second, Ticket)


async def test_a_full_queue_refuses_at_once() -> None:
    queues, limiter, routes = setup(max_depth=2)
    await blocked(queues, limiter, routes)
    waiting = [asyncio.create_task(admit(queues, routes, f"w{i}", "b", wait=120)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Throttled, match="queue full") as full:
        await admit(queues, routes, "w3", "b", wait=120)
    assert (full.value.limit, full.value.pool, full.value.reason) == ("queue_full", "",
                                                                      "queue_full")  # fmt: skip
    for task in waiting:
        task.cancel()
    await queues.close()


async def test_impossible_requests_fail_validation_even_when_others_wait() -> None:
    queues, limiter, routes = setup()
    await blocked(queues, limiter, routes)
    waiting = asyncio.create_task(admit(queues, routes, "w", "b", wait=120))
    await asyncio.sleep(0)
    with pytest.raises(ValidationError):
        await admit(queues, routes, "huge", "b", cost=10_000)
    waiting.cancel()
    await queues.close()


async def test_closing_answers_every_waiter() -> None:
    queues, limiter, routes = setup()
    await blocked(queues, limiter, routes)
    waiting = [asyncio.create_task(admit(queues, routes, f"w{i}", "b", wait=120)) for i in range(5)]
    await asyncio.sleep(0)
    await queues.close()
    for task in waiting:
        with pytest.raises(Throttled, match="shutting down") as stopping:
            await asyncio.wait_for(task, 1)
        assert (stopping.value.limit, stopping.value.reason) == ("draining", "draining")


async def test_a_waiter_whose_caller_leaves_is_taken_out_of_the_queue() -> None:
    queues, limiter, routes = setup()
    first = await blocked(queues, limiter, routes)
    left = asyncio.Event()
    leaving = asyncio.create_task(queues.admit("gone", "b", "m", routes, 100, max_wait_s=10,
                                               batch=False, gone=left.wait))  # fmt: skip
    staying = asyncio.create_task(admit(queues, routes, "stays", "b"))
    await asyncio.sleep(0)
    assert queues.depth("m") == 2
    left.set()
    with pytest.raises(Abandoned):
        await leaving
    assert queues.depth("m") == 1
    await limiter.settle(first, 0)  # the capacity goes to the one still there
    assert (await staying).plan.member == "stays"
    await queues.close()


async def test_an_admission_handed_back_is_refunded_and_counted_once() -> None:
    queues, limiter, routes = setup(tpm=100)
    ticket = await admit(queues, routes, "late", "a")  # all 100 tokens
    await limiter.withdraw(ticket)
    await limiter.withdraw(ticket)  # settled already: neither refunded nor counted again
    registry = limiter._metrics.registry  # type: ignore[attr-defined]
    labels = {"route": ticket.route.label, "tenant": "a"}
    assert registry.get_sample_value("gateway_admissions_withdrawn_total", labels) == 1
    assert isinstance(await admit(queues, routes, "next", "b"), Ticket)  # the room came back
    await queues.close()


async def test_a_request_the_forecast_puts_past_its_deadline_is_refused_at_once() -> None:
    """With ``refuse_when_hopeless``, the forecast decides on arrival: a request that cannot
    be admitted before its deadline hears so at once, its hint saying when it would fit; one
    that can waits, and is admitted when the window slides."""
    now = [T0]
    model = ModelConfig.model_validate(
        {"model_id": "m", "routes": [{"account": "x", "region": "us-east-1", "tpm": 1000}]}
    )
    store = MemoryStore(clock_ms=lambda: now[0])
    limiter = Limiter(LimiterConfig(), {"a": TenantConfig()}, Direct(store), Metrics())
    queues = Queues(limiter, max_depth=100, recheck_s=5, weights={"a": 1.0},
                    is_tenant_limit=limiter.is_tenant_limit, refuse_when_hopeless=True,
                    clock=lambda: now[0] / 1000)  # fmt: skip
    limiter.on_capacity = queues.settled
    resolved = Catalog({"m": model}).resolve("m")
    assert resolved is not None
    routes = resolved.routes
    for i in range(MIN_SAMPLES):  # settlements that use what they reserved: shares of 1
        ticket = await limiter.admit(f"t{i}", "a", routes, 10, output_reserved=5)
        assert isinstance(ticket, Ticket)
        await limiter.settle(ticket, 10, Usage(5, 5))
    blocker = await limiter.admit("blocker", "a", routes, 790)
    in_flight = await limiter.admit("in-flight", "a", routes, 10)
    assert isinstance(blocker, Ticket)
    assert isinstance(in_flight, Ticket)
    await limiter.settle(blocker, 790)

    now[0] = T0 + 1_000  # all of it leaves the window 60.5 s after T0
    with pytest.raises(Throttled) as caught:
        await queues.admit("hopeless", "a", "m", routes, 100, max_wait_s=30, batch=False)
    assert caught.value.reason == "hopeless"
    assert 59_000 <= caught.value.retry_after_ms <= 60_500
    assert queues.depth("m") == 0  # never queued

    patient = asyncio.create_task(
        queues.admit("patient", "a", "m", routes, 100, max_wait_s=70, batch=False)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert not patient.done()
    assert queues.depth("m") == 1
    now[0] = T0 + 61_000
    await limiter.settle(in_flight, 5)  # a refund wakes the head: it finds the window slid
    ticket, waited_s = await asyncio.wait_for(patient, 5)
    assert isinstance(ticket, Ticket)
    assert waited_s == pytest.approx(60)
    await queues.close()


async def test_a_waiter_is_not_refused_for_one_ahead_that_is_unlikely_to_be_admitted() -> None:
    """Re-judging the queue: X waits with time to spare, A cannot expect to fit before its
    deadline but might (so it waits on), and B behind A fits if A leaves. B is not refused:
    counting A against it would leave the room A does not take to nobody."""
    queues, limiter, routes = setup(tpm=1000, tenants={"a": {}})
    queues.refuse_when_hopeless = True
    for i in range(MIN_SAMPLES):  # settlements that use what they reserved: shares of 1
        ticket = await limiter.admit(f"t{i}", "a", routes, 10)
        assert isinstance(ticket, Ticket)
        await limiter.settle(ticket, 10, Usage(10, 0))
    await limiter.admit("full", "a", routes, 1000 - 10 * MIN_SAMPLES)
    denied = await limiter.admit("denied", "a", routes, 10)
    assert not isinstance(denied, Ticket)
    state = queues._group("m", routes)
    # 200 tokens leave the window in 2 s, the other 800 in 61 s
    slots = (0, 200) + (0,) * 58 + (800,)
    state.capacity, state.seen_at = Capacity(T0, (WindowView(1000, 1000, 61, slots),)), 0.0
    loop = asyncio.get_running_loop()
    waiters = {}
    for name, cost, wait_s in (("X", 100, 100), ("A", 105, 30), ("B", 90, 30)):
        waiter = Waiter(name, "a", routes, cost, loop.create_future(), denied, wait_s)
        state.queue.push(waiter, tenant="a", weight=1, klass=INTERACTIVE, cost=cost)
        waiters[name] = waiter
    # A: 100 ahead + its 105 > the 200 leaving in 2 s (the next room is past its deadline),
    # but at 0.95 x the queue ahead it would fit; B: 0.95 x (100 + 105) + 90 would not
    state._rejudge(0.0)
    assert not any(w.future.done() for w in waiters.values())
    # once A is sure not to fit, it is refused, with the next room as its hint
    waiters["X"].reserved = 200  # (the queue ahead of A grew)
    state.queue = FairQueue()
    for name in "XAB":
        waiter = waiters[name]
        state.queue.push(waiter, tenant="a", weight=1, klass=INTERACTIVE, cost=waiter.reserved)
    state._rejudge(0.0)
    assert waiters["A"].future.done()
    assert not waiters["X"].future.done()
    with pytest.raises(Throttled) as caught:
        waiters["A"].future.result()
    assert caught.value.reason == "hopeless"
    assert caught.value.retry_after_ms == 61_000
    assert waiters["B"].future.done()  # 200 + 90 cannot fit before 61 s either
    waiters["X"].future.cancel()
    for waiter in waiters.values():
        if not waiter.future.cancelled():
            waiter.future.exception()
    await queues.close()
