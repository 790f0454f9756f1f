"""The charge ledger against brute force: rolling sums, and the peak of any 60 s window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.simulator.ledger import Entry, Ledger
from gateway.simulator.quota import Limits, Mode, QuotaPool, Reservation

# Steps of a quarter second so that starts land exactly on window edges often.
steps = st.integers(min_value=0, max_value=120).map(lambda q: q / 4)
charges = st.integers(min_value=0, max_value=1000)
# ("add", gap before it, charge) or ("fix", which in-flight entry, new charge)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), steps, charges),
        st.tuples(st.just("fix"), st.integers(min_value=0, max_value=10_000), charges),
    ),
    max_size=120,
)


def brute_peak(entries: list[Entry]) -> tuple[int, int]:
    best = (0, 0)
    for anchor in entries:
        inside = [e for e in entries if anchor.start <= e.start < anchor.start + 60]
        best = (max(best[0], sum(e.charge for e in inside)), max(best[1], len(inside)))
    return best


def brute_window(entries: list[Entry], now: float) -> tuple[int, int]:
    inside = [e for e in entries if now - 60 < e.start <= now]
    return sum(e.charge for e in inside), len(inside)


def replay(
    ledger: Ledger, steps_: list[tuple[str, float | int, int]], settle_at_once: bool
) -> tuple[list[Entry], float]:
    now = 0.0
    everything: list[Entry] = []
    open_: list[Entry] = []
    for kind, arg, charge in steps_:
        if kind == "add":
            now += float(arg)
            ledger.totals(now)
            entry = ledger.add(now, charge)
            everything.append(entry)
            if settle_at_once:
                ledger.correct(entry, charge // 2)
            else:
                open_.append(entry)
        elif open_:
            ledger.correct(open_.pop(int(arg) % len(open_)), charge)
        totals = ledger.totals(now)
        assert (totals.tokens, totals.requests) == brute_window(everything, now)
    return everything, now


@settings(max_examples=300, deadline=None)
@given(ops)
def test_window_sums_and_peak_match_brute_force(steps_: list[tuple[str, float | int, int]]) -> None:
    ledger = Ledger()
    everything, _ = replay(ledger, steps_, settle_at_once=False)
    peak = ledger.peak()
    assert (peak.tokens, peak.requests) == brute_peak(everything)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(min_value=1, max_value=8))
def test_peak_stays_exact_after_entries_are_dropped(
    steps_: list[tuple[str, float | int, int]], cap: int
) -> None:
    # A tiny horizon and cap force the fold-on-drop path; settled at once, it is exact.
    ledger = Ledger(horizon=90.0, max_entries=cap)
    everything, _ = replay(ledger, steps_, settle_at_once=True)
    peak = ledger.peak()
    assert (peak.tokens, peak.requests) == brute_peak(everything)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(min_value=1, max_value=8))
def test_dropped_in_flight_entries_are_bounded_by_their_reservation(
    steps_: list[tuple[str, float | int, int]], cap: int
) -> None:
    ledger = Ledger(horizon=90.0, max_entries=cap)
    reserved: dict[int, int] = {}
    now = 0.0
    everything: list[Entry] = []
    open_: list[Entry] = []
    for kind, arg, charge in steps_:
        if kind == "add":
            now += float(arg)
            ledger.totals(now)
            everything.append(ledger.add(now, charge))
            open_.append(everything[-1])
            reserved[everything[-1].seq] = charge
        elif open_:  # settled once, refunds only, as a pool does
            entry = open_.pop(int(arg) % len(open_))
            ledger.correct(entry, min(charge, reserved[entry.seq]))
    final = brute_peak(everything)
    at_reservation = brute_peak([Entry(e.seq, e.start, reserved[e.seq]) for e in everything])
    peak = ledger.peak()
    assert final[0] <= peak.tokens <= at_reservation[0]
    assert peak.requests == final[1]


def test_window_entries_are_kept_whatever_the_cap() -> None:
    ledger = Ledger(max_entries=2)
    for i in range(10):
        ledger.totals(float(i))
        ledger.add(float(i), 10)
    assert ledger.totals(9.0).tokens == 100
    assert len(ledger) == 10


def test_memory_is_bounded_once_entries_age_out() -> None:
    ledger = Ledger(horizon=120.0, max_entries=50)
    for i in range(5000):
        ledger.totals(i / 10)
        ledger.add(i / 10, 1)
    assert len(ledger) <= 601  # the last 60 s at 10 per second, the cap being smaller
    assert ledger.peak().requests == 600


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(steps, st.integers(min_value=1, max_value=400), st.booleans(), charges),
        max_size=80,
    )
)
def test_rolling_pool_admits_exactly_what_fits_and_never_exceeds_tpm(
    requests: list[tuple[float, int, bool, int]],
) -> None:
    tpm = 1000
    pool = QuotaPool(Limits(tpm), Mode.ROLLING, now=0.0)
    now = 0.0
    charged: list[tuple[float, int]] = []  # (start, current charge) of admitted requests
    for gap, size, settle_now, used in requests:
        now += gap
        fits = sum(c for s, c in charged if now - 60 < s <= now) + size <= tpm
        outcome = pool.try_reserve(now, 0, size)
        assert isinstance(outcome, Reservation) == fits
        if isinstance(outcome, Reservation):
            charged.append((now, size))
            if settle_now:
                final = min(used, size)
                pool.settle(outcome, now, final)
                charged[-1] = (now, final)
    assert pool.stats(now).max_rolling_60s_tokens <= tpm
