"""The calibration arithmetic: bins, the quantile over recent slots, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import calibration
from gateway.calibration import CalibrationPolicy, Histogram

POLICY = CalibrationPolicy()  # quantile 0.98, 20 samples, 60 s window of 5 s slots


def filled(samples: dict[int, list[tuple[int, int]]]) -> Histogram:
    """{slot: [(estimated, actual), ...]} as a histogram."""
    histogram: Histogram = {}
    for slot, pairs in samples.items():
        for estimated, actual in pairs:
            bin_ = calibration.bin_of(POLICY, estimated, actual)
            assert bin_ is not None
            calibration.add(histogram, slot, bin_)
    return histogram


def test_too_few_answers_give_no_factor() -> None:
    assert calibration.factor(POLICY, filled({100: [(100, 105)] * 19}), 100) is None
    assert calibration.factor(POLICY, filled({100: [(100, 105)] * 20}), 100) is not None


def test_the_factor_covers_a_steady_ratio_by_at_most_one_bin() -> None:
    found = calibration.factor(POLICY, filled({100: [(1000, 1050)] * 50}), 100)
    assert found is not None
    assert 1.05 <= found <= 1.05 * 1.0101


def test_the_quantile_ignores_a_rare_tail_but_not_a_frequent_one() -> None:
    rare = filled({100: [(100, 100)] * 98 + [(100, 200)] * 2})
    frequent = filled({100: [(100, 100)] * 97 + [(100, 200)] * 3})
    assert calibration.factor(POLICY, rare, 100) == pytest.approx(1.01, abs=0.011)
    assert calibration.factor(POLICY, frequent, 100) == pytest.approx(2.0, rel=0.011)


def test_a_change_in_counting_is_learned_within_a_minute() -> None:
    # Ten minutes of 1.3, then one minute (12 slots) of 1.0: the last minute alone decides.
    old = {slot: [(100, 130)] * 10 for slot in range(0, 100)}
    new = {slot: [(100, 100)] * 2 for slot in range(100, 112)}
    found = calibration.factor(POLICY, filled(old | new), 111)
    assert found == pytest.approx(1.01, abs=0.011)
    # ...but eleven slots are not yet a minute: the older 1.3 still counts.
    new = {slot: [(100, 100)] * 2 for slot in range(100, 111)}
    assert calibration.factor(POLICY, filled(old | new), 110) == pytest.approx(1.31, abs=0.011)


def test_sparse_traffic_reaches_back_for_enough_answers_within_the_retention() -> None:
    histogram = filled({10: [(100, 120)] * 30, 115: [(100, 100)] * 5})
    assert calibration.factor(POLICY, histogram, 115) == pytest.approx(1.21, abs=0.011)
    # Slot 10 is older than retain_s (600 s = 120 slots) at slot 131: only 5 answers remain.
    assert calibration.factor(POLICY, histogram, 131) is None
    calibration.prune(POLICY, histogram, 131)
    assert set(histogram) == {115}


def test_small_estimates_are_not_sampled() -> None:
    assert calibration.bin_of(POLICY, POLICY.min_estimate - 1, 100) is None
    assert calibration.bin_of(POLICY, 100, -1) is None


@given(st.lists(st.tuples(st.integers(16, 10**7), st.integers(0, 10**12)), min_size=20))
def test_no_usage_report_drives_the_factor_out_of_bounds(pairs: list[tuple[int, int]]) -> None:
    found = calibration.factor(POLICY, filled({7: pairs}), 7)
    assert found is not None
    assert POLICY.floor <= found <= POLICY.ceiling


def test_scale_rounds_up() -> None:
    assert calibration.scale(100, 1.10) == 110
    assert calibration.scale(100, 1.101) == 111
    assert calibration.scale(0, 2.0) == 0
