"""Learning a pool's real quota from upstream throttling: multiplicative decrease on a 429,
additive recovery while none comes (AIMD, as TCP congestion control does).

The state is ``(factor, since)``: the factor set at the last decrease and when. The factor at
any later time is a pure function of it, so every replica computes the same effective quota
from the shared state without a background task:

    factor(t) = min(1, factor + recovery_per_s × (t − since))

A 429 at time t sets ``factor = max(floor, factor(t) × decrease)`` and ``since = t``, at most
once per ``cooldown_s`` so one burst of throttled in-flight calls counts as one signal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Aimd:
    decrease: float = 0.7
    recovery_per_s: float = 0.002
    """Additive recovery: 0.002/s climbs from 0.7 back to 1.0 in 150 s."""
    floor: float = 0.05
    cooldown_s: float = 2.0

    def factor(self, state: tuple[float, float] | None, now: float) -> float:
        if state is None:
            return 1.0
        factor, since = state
        return min(1.0, factor + self.recovery_per_s * max(0.0, now - since))

    def on_throttle(self, state: tuple[float, float] | None, now: float) -> tuple[float, float]:
        if state is not None and now - state[1] < self.cooldown_s:
            return state
        return max(self.floor, self.factor(state, now) * self.decrease), now

    def limit(self, configured: int, state: tuple[float, float] | None, now: float) -> int:
        return max(1, int(configured * self.factor(state, now)))
