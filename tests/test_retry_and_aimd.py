"""The retry policy and the adaptive-quota arithmetic, with explicit draws and times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.limiter.adaptive import Aimd
from gateway.retry import RetryPolicy, retryable


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [(429, "ThrottlingException", True),
     (429, "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", True),
     (400, "aws.protocols#ThrottlingException", True), (503, "ServiceUnavailableException", True),
     (500, None, True), (502, None, True), (429, "ModelNotReadyException", True),
     (400, "ValidationException", False), (403, "AccessDeniedException", False),
     (408, "ModelTimeoutException", False), (424, "ModelErrorException", False)],
)  # fmt: skip
def test_what_is_retried(status: int, error_type: str | None, expected: bool) -> None:
    assert retryable(status, error_type) is expected


def test_full_jitter_backoff_is_capped_and_bounded_by_attempts() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=0.1, cap_s=0.5)
    assert policy.delay(1, 0.999, 10) == pytest.approx(0.0999)
    assert policy.delay(2, 0.5, 10) == pytest.approx(0.1)
    assert policy.delay(4, 0.999, 10) == pytest.approx(0.4995)  # 0.8 capped at 0.5
    assert policy.delay(1, 0.0, 10) == 0.0  # full jitter reaches zero
    assert policy.delay(5, 0.5, 10) is None  # attempts exhausted


def test_no_retry_past_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=1, cap_s=10)
    assert policy.delay(3, 0.9, time_left_s=3.5) is None  # 3.6 s would overrun
    assert policy.delay(3, 0.8, time_left_s=3.5) == pytest.approx(3.2)


@given(attempt=st.integers(1, 20), draw=st.floats(0, 0.9999))
def test_delays_stay_within_the_cap(attempt: int, draw: float) -> None:
    delay = RetryPolicy(max_attempts=30, base_s=0.05, cap_s=2).delay(attempt, draw, 100)
    assert delay is not None
    assert 0 <= delay < 2


def test_aimd_decreases_fast_and_recovers_slowly() -> None:
    aimd = Aimd(decrease=0.7, recovery_per_s=0.01, floor=0.1, cooldown_s=2)
    state = aimd.on_throttle(None, now=100)
    assert state == (0.7, 100)
    assert aimd.limit(100_000, state, 100) == 70_000
    assert aimd.limit(100_000, state, 110) == 80_000  # +0.01/s
    assert aimd.factor(state, 200) == 1.0  # fully recovered, never above the configured quota
    assert aimd.on_throttle(state, 101) == state  # a burst of 429s within the cooldown: one signal
    again = aimd.on_throttle(state, 110)
    assert again == (pytest.approx(0.56), 110)  # 0.8 x 0.7


def test_aimd_never_drops_below_the_floor() -> None:
    aimd = Aimd(decrease=0.5, floor=0.1, cooldown_s=0)
    state = None
    for t in range(20):
        state = aimd.on_throttle(state, float(t))
    assert state is not None
    assert aimd.factor(state, 19.0) == pytest.approx(0.1)
