"""Weighted fair order among tenants, FIFO within a tenant and class, batch after interactive."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.queueing.fair import BATCH, INTERACTIVE, FairQueue


def serve_all(queue: FairQueue[str], n: int) -> list[str]:
    served = []
    for _ in range(n):
        entry = queue.pop()
        queue.served(entry)
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


def test_cancelled_entries_are_skipped_and_parked_ones_keep_their_place() -> None:
    queue: FairQueue[str] = FairQueue()
    first = queue.push("1", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    second = queue.push("2", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    queue.push("3", tenant="a", weight=1, klass=INTERACTIVE, cost=1)
    queue.cancel(second)
    assert len(queue) == 2
    parked = queue.pop()
    assert parked is first
    queue.requeue(parked)
    assert serve_all(queue, 2) == ["1", "3"]
    assert len(queue) == 0
    assert queue.head() is None


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
    while len(queue):
        entry = queue.pop()
        queue.served(entry)
        order.append(entry.item)
    for tenant in "abc":
        for klass in (INTERACTIVE, BATCH):
            seqs = [n for t, k, n in order if t == tenant and k == klass]
            assert seqs == sorted(seqs)
    classes = [k for _, k, _ in order]
    assert classes == sorted(classes)  # no batch entry before an interactive one
