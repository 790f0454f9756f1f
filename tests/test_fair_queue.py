"""Weighted fair order among tenants, FIFO within a tenant and class, batch after interactive."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.queueing.fair import BATCH, INTERACTIVE, Entry, FairQueue


def serve_all(queue: FairQueue[str], n: int) -> list[str]:
    served = []
    for _ in range(n):
        entry = queue.head()
        assert entry is not None
        queue.serve(entry)
        served.append(entry.item)
    return served


@pytest.mark.parametrize(("weights", "expected"), [((1, 1), 0.5), ((3, 1), 0.75)])
def test_backlogged_tenants_share_by_weight(weights: tuple[int, int], expected: float) -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(400):  # both tenants keep far more queued than gets served
        queue.push(f"a{i}", tenant="a", weight=weights[0], klass=INTERACTIVE, cost=100)
        queue.push(f"b{i}", tenant="b", weight=weights[1], klass=INTERACTIVE, cost=100)
    served = serve_all(queue, 200)
    share_a = sum(1 for s in served if s.startswith("a")) / len(served)
    assert share_a == pytest.approx(expected, abs=0.02)


def test_shares_are_counted_in_tokens_not_requests() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(300):
        queue.push(f"big{i}", tenant="big", weight=1, klass=INTERACTIVE, cost=1000)
        for j in range(10):
            queue.push(f"small{i}.{j}", tenant="small", weight=1, klass=INTERACTIVE, cost=100)
    tokens: Counter[str] = Counter()
    for item in serve_all(queue, 400):
        tokens["big" if item.startswith("big") else "small"] += (
            1000 if item.startswith("big") else 100
        )
    assert tokens["big"] / (tokens["big"] + tokens["small"]) == pytest.approx(0.5, abs=0.05)


def test_a_late_tenant_is_not_punished_for_the_backlog_of_others() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(100):
        queue.push(f"a{i}", tenant="a", weight=1, klass=INTERACTIVE, cost=100)
    serve_all(queue, 50)
    queue.push("b0", tenant="b", weight=1, klass=INTERACTIVE, cost=100)
    assert "b0" in serve_all(queue, 2)  # served next to a's head, not after a's 50 queued


def test_batch_waits_for_every_interactive_entry() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("batch-a", tenant="a", weight=1, klass=BATCH, cost=1)
    queue.push("inter-b", tenant="b", weight=1, klass=INTERACTIVE, cost=10_000)
    queue.push("inter-a", tenant="a", weight=1, klass=INTERACTIVE, cost=10_000)
    assert serve_all(queue, 3) == ["inter-b", "inter-a", "batch-a"]


def test_cancelled_entries_are_skipped_and_a_parked_flow_keeps_its_order() -> None:
    queue: FairQueue[str] = FairQueue()
    first = queue.push("1", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    second = queue.push("2", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    queue.push("3", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    queue.push("b", tenant="b", weight=1, klass=INTERACTIVE, cost=1)
    queue.cancel(second)
    assert len(queue) == 3
    assert queue.head() is first
    queue.park(first)  # tenant a's budget is spent: b goes on, a's entries keep their place
    assert serve_all(queue, 1) == ["b"]
    assert queue.head() is None
    assert len(queue) == 2
    queue.unpark(first)
    assert serve_all(queue, 2) == ["1", "3"]
    assert len(queue) == 0
    assert queue.head() is None
    assert queue.entries() == []


def test_entries_that_leave_unserved_do_not_charge_their_tenant() -> None:
    """Sustained overload: most waiters reach their deadline. Tenant b (weight 1) offers three
    times what a (weight 3) offers and loses most of it to timeouts; the service still follows
    the weights, 3:1, counted only on what each was served."""
    queue: FairQueue[str] = FairQueue()
    waiting: dict[str, list[Entry[str]]] = {"a": [], "b": []}
    served: Counter[str] = Counter()
    for step in range(2000):
        waiting["a"].append(queue.push(f"a{step}", tenant="a", weight=3, klass=INTERACTIVE,
                                       cost=100))  # fmt: skip
        for n in range(3):
            waiting["b"].append(queue.push(f"b{step}.{n}", tenant="b", weight=1,
                                           klass=INTERACTIVE, cost=100))  # fmt: skip
        if step % 2:  # capacity for one entry every other step: the rest time out
            entry = queue.head()
            assert entry is not None
            queue.serve(entry)
            served[entry.tenant] += 1
        for entries in waiting.values():  # the oldest waiters reach their deadline
            while len(entries) > 8:
                queue.cancel(entries.pop(0))
    assert served["a"] / (served["a"] + served["b"]) == pytest.approx(0.75, abs=0.02)


def test_a_flow_returning_from_a_park_gets_no_credit_for_the_time_out() -> None:
    queue: FairQueue[str] = FairQueue()
    parked = queue.push("a0", tenant="a", weight=1, klass=INTERACTIVE, cost=100)
    for i in range(1, 20):
        queue.push(f"a{i}", tenant="a", weight=1, klass=INTERACTIVE, cost=100)
    queue.park(parked)
    for i in range(50):
        queue.push(f"b{i}", tenant="b", weight=1, klass=INTERACTIVE, cost=100)
    serve_all(queue, 30)  # only b is served while a is parked
    queue.unpark(parked)
    after = serve_all(queue, 20)
    assert sum(1 for s in after if s.startswith("a")) == pytest.approx(10, abs=1)


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from([INTERACTIVE, BATCH]),
                  st.integers(1, 5000), st.sampled_from([1, 2, 3])),
        min_size=1, max_size=80,
    )
)  # fmt: skip
def test_fifo_within_tenant_and_class(pushes: list[tuple[str, int, int, int]]) -> None:
    queue: FairQueue[tuple[str, int, int]] = FairQueue()
    weights = {"a": 1, "b": 2, "c": 3}
    for n, (tenant, klass, cost, _) in enumerate(pushes):
        queue.push(
            (tenant, klass, n), tenant=tenant, weight=weights[tenant], klass=klass, cost=cost
        )
    order = []
    while (entry := queue.head()) is not None:
        queue.serve(entry)
        order.append(entry.item)
    assert len(queue) == 0
    for tenant in "abc":
        for klass in (INTERACTIVE, BATCH):
            seqs = [n for t, k, n in order if t == tenant and k == klass]
            assert seqs == sorted(seqs)
    classes = [k for _, k, _ in order]
    assert classes == sorted(classes)  # no batch entry before an interactive one


def test_a_batch_flow_gains_no_credit_while_interactive_traffic_is_served() -> None:
    queue: FairQueue[str] = FairQueue()
    early = [queue.push(f"x{i}", tenant="x", weight=1, klass=BATCH, cost=100) for i in range(200)]
    for i in range(100):
        queue.push(f"i{i}", tenant="i", weight=1, klass=INTERACTIVE, cost=100)
    assert all(s.startswith("i") for s in serve_all(queue, 100))
    for entry in early[:50]:  # x's oldest batch waiters reach their deadline meanwhile
        queue.cancel(entry)
    for i in range(100):
        queue.push(f"y{i}", tenant="y", weight=1, klass=BATCH, cost=100)
    after = serve_all(queue, 40)
    assert sum(1 for s in after if s.startswith("y")) == pytest.approx(20, abs=1)
