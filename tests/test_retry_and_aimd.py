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


def test_aimd_decreases_fast_holds_and_recovers_slowly() -> None:
    aimd = Aimd(decrease=0.7, recovery_per_s=0.01, floor=0.1, cooldown_s=2, hold_s=30)
    state = aimd.on_throttle(None, now=100)  # nothing measured: the bounded step
    assert state == (0.7, 100)
    assert aimd.limit(100_000, state, 100) == 70_000
    assert aimd.limit(100_000, state, 129) == 70_000  # held for hold_s
    assert aimd.limit(100_000, state, 140) == 80_000  # then +0.01/s
    assert aimd.factor(state, 230) == 1.0  # fully recovered, never above the configured quota
    assert aimd.on_throttle(state, 101) == state  # a burst of 429s within the cooldown: one signal
    again = aimd.on_throttle(state, 140)
    assert again == (pytest.approx(0.56), 140)  # 0.8 x 0.7


def test_a_throttle_lowers_the_quota_to_what_the_pool_carried() -> None:
    aimd = Aimd(decrease=0.7, recovery_per_s=0.002, floor=0.05, cooldown_s=2, target=0.95)
    # configured 30 % too high: Bedrock throttles once the pool's window holds 0.7 of it
    first = aimd.on_throttle(None, now=0, used=0.7)
    assert first == (pytest.approx(0.665), 0)  # 95 % of what Bedrock carried
    # more 429s while the window still holds admissions from before: no further cut
    again = aimd.on_throttle(first, now=3, used=0.7)
    assert again == (pytest.approx(0.665), 3)
    # a 429 the window does not explain (others share the quota): one bounded step
    assert aimd.on_throttle(again, now=6, used=0.1)[0] == pytest.approx(0.665 * 0.7 * 0.95)
    assert aimd.on_throttle(None, now=0, used=0.2)[0] == pytest.approx(0.7 * 0.95)


def _learn_against(real: float, *, measured: bool) -> float:
    """The factor after a minute of 429s, one each cooldown while the limit is not below
    ``real``: the pool carries what Bedrock accepts, up to the gateway's limit."""
    aimd = Aimd(decrease=0.7, floor=0.05, cooldown_s=2, target=0.95)
    state: tuple[float, float] | None = None
    for t in range(0, 60, 2):
        if aimd.factor(state, t) >= real:
            used = min(real, aimd.factor(state, t)) if measured else None
            state = aimd.on_throttle(state, t, used)
    return aimd.factor(state, 60)


@pytest.mark.parametrize("real", [0.3, 0.5, 0.7, 0.9])
def test_repeated_throttles_converge_near_the_real_quota_instead_of_undershooting(
    real: float,
) -> None:
    measured = _learn_against(real, measured=True)
    blind = _learn_against(real, measured=False)  # the multiplicative step alone
    assert 0.95 * 0.95 * real <= measured <= real
    if real == 0.7:
        assert blind == pytest.approx(0.49)  # the undershoot this replaces: 0.7 x 0.7


def test_aimd_never_drops_below_the_floor() -> None:
    aimd = Aimd(decrease=0.5, floor=0.1, cooldown_s=0)
    state = None
    for t in range(20):
        state = aimd.on_throttle(state, float(t))
    assert state is not None
    assert aimd.factor(state, 19.0) == pytest.approx(0.1)
