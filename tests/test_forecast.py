"""The queue's forecast: when a request with cost queued ahead of it could be admitted.

Pure arithmetic on what a denial saw (store times in ms are passed in; nothing sleeps), checked
against the limiter's own window arithmetic, and the fair queue's count of what is ahead.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.limiter.core import Admitted, Charge, Denied, Plan, WindowView, window_bucket
from gateway.limiter.memory import MemoryStore
from gateway.limiter.settled import MIN_SAMPLES, SettledShare
from gateway.queueing.fair import BATCH, INTERACTIVE, FairQueue
from gateway.queueing.forecast import Capacity, refuse_on_arrival

T0 = 1_800_000_000_000  # a multiple of the slot
SLOT, SPAN = 1000, 61  # 60 s window, no margin: a slot leaves 61 s after it began


def view(slots: dict[int, int], limit: int = 100) -> WindowView:
    """A window whose slot ``-k`` (k seconds before T0's) holds ``slots[k]``."""
    amounts = tuple(slots.get(SPAN - 1 - j, 0) for j in range(SPAN))
    return WindowView(limit, SLOT, SPAN, amounts)


def test_room_now_fits_now() -> None:
    capacity = Capacity(T0 + 400, (view({10: 60}),))
    assert capacity.fits_at(40, 40) == T0 + 400


def test_the_queue_ahead_waits_for_the_slots_it_needs_to_leave() -> None:
    # 30 at -50 s, 50 at -20 s, 20 now: full. 30 ahead + 10 needs the first two slots gone.
    capacity = Capacity(T0, (view({50: 30, 20: 50, 0: 20}),))
    assert capacity.fits_at(30, 30) == T0 + 11_000  # slot -50 leaves at +11 s
    assert capacity.fits_at(30 + 10, 10) == T0 + 41_000  # ...and slot -20 at +41 s
    # past a whole window's worth: the same profile a span later (what is admitted in it)
    assert capacity.fits_at(100 + 30, 30) == T0 + 11_000 + SPAN * SLOT


def test_room_too_small_for_a_request_now_is_not_freed_again_a_span_on() -> None:
    # 20 free now, 80 leave at +41 s; a queue of 90 ahead, then a request of 30. The queue's
    # 20 to 30 tokens of room now are taken only at +41 s, with the slot, so the next window
    # frees them at +41 s + a span, not at now + a span.
    capacity = Capacity(T0, (view({20: 80}),))
    assert capacity.fits_at(90 + 30, 30) == T0 + 41_000 + SPAN * SLOT
    # a request small enough for the room now: the room is used now, and back a span on
    assert capacity.fits_at(100 + 10, 10) == T0 + SPAN * SLOT


def test_refunds_of_the_queue_ahead_come_back_a_call_later() -> None:
    # 50 leave at +11 s and 50 at +41 s; a queue ahead reserving 120 is charged 60 (it gives
    # back 60 as its calls settle, 2 s after each came in)
    capacity = Capacity(T0, (view({50: 50, 20: 50}),))
    assert capacity.fits_at(60 + 30, 30) == T0 + 41_000  # refunds counted at once
    # the room the last slot frees at +41 s is taken by the queue's last calls; what they
    # give back comes at +43 s
    assert capacity.fits_at(60 + 30, 30, delayed=60, delay_ms=2000) == T0 + 43_000
    # ahead of a small need, the pending refunds do not matter: the first slot is enough
    assert capacity.fits_at(10 + 30, 30, delayed=10, delay_ms=2000) == T0 + 11_000


def test_a_request_needs_room_in_one_route_for_its_own_cost() -> None:
    full = view({0: 100})
    half = view({30: 50, 0: 50})  # 50 leaves at +31 s
    capacity = Capacity(T0, (full, half))
    assert capacity.fits_at(40, 40) == T0 + 31_000
    # 60 at once: neither route alone has it until the full one's slot leaves at +61 s
    assert capacity.fits_at(60, 60) == T0 + 61_000
    assert capacity.fits_at(10, 101) is None  # no route can ever hold it


def test_refunds_expected_from_requests_in_flight_count_as_room() -> None:
    capacity = Capacity(T0, (view({0: 100}),))
    assert capacity.fits_at(40, 40, refunds=40) == T0
    assert capacity.fits_at(40, 40, refunds=39) == T0 + 61_000


def test_a_lowered_quota_frees_room_only_once_the_window_is_under_it() -> None:
    capacity = Capacity(T0, (view({40: 80, 10: 80}, limit=100),))  # holds 160 of 100
    assert capacity.fits_at(10, 10) == T0 + 21_000  # -40 leaves at +21 s: room for 20
    assert capacity.fits_at(30, 30) == T0 + 51_000  # -10 leaves at +51 s


@given(
    slots=st.dictionaries(st.integers(0, SPAN - 1), st.integers(0, 40), max_size=8),
    cost=st.integers(1, 100),
    offset=st.integers(0, SLOT - 1),
)
def test_with_nothing_ahead_it_is_the_limiters_own_wait(
    slots: dict[int, int], cost: int, offset: int
) -> None:
    """The forecast for the head agrees with the store's retry hint, slot for slot."""
    bucket = window_bucket("{t}:w", 100, window_ms=60_000, slot_ms=SLOT, margin_ms=0, label="t")
    store = MemoryStore()
    for age, amount in sorted(slots.items(), reverse=True):  # oldest first
        if amount:
            store.admit_now(Plan("x", (Charge(bucket, amount),)), T0 - age * SLOT)
    now = T0 + offset
    decision = store.admit_now(Plan("r", (), ((Charge(bucket, cost, True),),), (0,)), now)
    if isinstance(decision, Admitted):
        return
    assert isinstance(decision, Denied)
    capacity = Capacity(decision.now_ms, decision.windows)
    assert decision.retry_after_ms is not None
    assert capacity.fits_at(cost, cost) == now + decision.retry_after_ms


def test_refusal_keeps_a_margin_for_the_dispatchers_next_try() -> None:
    assert not refuse_on_arrival(40_000, 45_000)
    assert not refuse_on_arrival(44_700, 45_000)  # the margin does not grow with the wait
    assert refuse_on_arrival(44_800, 45_000)  # within 250 ms of the deadline
    assert refuse_on_arrival(46_000, 45_000)
    assert refuse_on_arrival(900, 1_000)


def test_the_settled_share_is_a_ratio_of_sums_trusted_after_enough_samples() -> None:
    share = SettledShare()
    assert share.charge(1000, 300) == 1000  # nothing seen: reservations charged in full
    assert not share.trusted
    for _ in range(MIN_SAMPLES // 2):
        share.observe(100, 0, 50, 0)
        share.observe(1000, 0, 900, 0)
    assert share.trusted
    assert share.charge(1100) == pytest.approx(950, abs=20)


def test_the_input_estimate_and_the_output_cap_are_charged_apart() -> None:
    """Calls whose estimate is what they use and which use half their output cap: a queue of
    short prompts is charged its prompts and half its caps, not the share of whole
    reservations that long prompts left."""
    share = SettledShare()
    for _ in range(MIN_SAMPLES):
        share.observe(900 + 300, 300, 900 + 150, 150)  # long prompts
    # 10 short prompts of 100 tokens, max_tokens 300 each
    assert share.charge(10 * 400, 10 * 300) == pytest.approx(10 * (100 + 150))
    whole = (900 + 150) / (900 + 300)
    assert 10 * 400 * whole > 10 * (100 + 150) * 1.3  # one share of the whole: 40 % over


def test_absurd_settlements_stay_within_the_reservation() -> None:
    share = SettledShare()
    share.observe(400, 300, 10**9, 10**9)  # more output than charged in all: output is all
    share.observe(400, 900, 400, 0)  # an output cap larger than the reservation: capped
    share.observe(0, 0, 100, 0)  # nothing reserved: ignored
    assert share.samples == 2
    assert share.charge(400, 300) <= 3 * 400


def test_ahead_counts_the_own_flow_and_the_others_by_weight() -> None:
    queue: FairQueue[str] = FairQueue()
    assert queue.ahead("a", INTERACTIVE, 1.0, 100) == (0, 0)
    for i in range(3):
        queue.push(f"a{i}", tenant="a", weight=1, klass=INTERACTIVE, cost=100, output=30)
    assert queue.ahead("a", INTERACTIVE, 1.0, 100) == (300, 90)  # first come first served
    # a new tenant of equal weight is served alongside: only a's first 100 go before it
    assert queue.ahead("b", INTERACTIVE, 1.0, 100) == (100, 30)
    # batch waits for every interactive entry
    assert queue.ahead("b", BATCH, 1.0, 100) == (300, 90)
    entries = dict((e.item, ahead.cost) for e, ahead in queue.in_order())
    assert entries == {"a0": 0, "a1": 100, "a2": 200}
    last = queue.push("a3", tenant="a", weight=1, klass=INTERACTIVE, cost=100, output=30)
    queue.cancel(next(e for e, _ in queue.in_order() if e.item == "a1"))
    assert queue.ahead_of(last) == (200, 60)  # a cancelled entry no longer counts
