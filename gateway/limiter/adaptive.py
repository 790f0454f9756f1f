"""Learning a pool's real quota from upstream throttling: decrease on a 429 to what the pool
really carried, hold, then recover additively while none comes (AIMD, as TCP does).

The state is ``(factor, since)``: the factor set at the last decrease and when. The factor at
any later time is a pure function of it, so every replica computes the same effective quota
from the shared state without a background task:

    factor(t) = min(1, factor + recovery_per_s × max(0, t − since − hold_s))

A 429 at time t is a measurement: Bedrock's rolling minute was full, and the pool's own window
(what the gateway admitted in the last minute, refunds of throttled calls already taken off)
holds about what Bedrock accepted. So, as TCP sizes its window from the data in flight rather
than from the window it was allowed (RFC 5681), the new factor is ``target`` × that use, as a
fraction of the configured quota, but never more than the current factor. A use below
``decrease`` × the current factor counts as that much: a 429 the window does not explain (a
quota shared with callers outside the gateway, a burst of Bedrock's own) cuts by a bounded
step. A blind multiplicative step undershoots: a quota configured 30 % too high, cut by 0.7 and
again by the next 429s, ends at half the real quota. With the use unknown (no per-minute
window to measure) the step is ``decrease``.

``since`` = t, and recovery waits ``hold_s`` (one window): until then the window still holds
admissions made under the old limit, and probing above the new one would only be throttled
again. At most one decrease per ``cooldown_s``, so one burst of throttled calls is one signal.
"""

from __future__ import annotations

from dataclasses import dataclass

State = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Aimd:
    decrease: float = 0.7
    """The deepest cut of one 429 (before ``target``): the use it measures counts as at least
    this × the current factor."""
    recovery_per_s: float = 0.002
    """Additive recovery after the hold: 0.002/s climbs 0.3 of the configured quota in 150 s."""
    floor: float = 0.05
    cooldown_s: float = 2.0
    target: float = 0.95
    """A 429 sets the factor to this × the fraction of the configured quota the pool used."""
    hold_s: float = 60.0

    def factor(self, state: State | None, now: float) -> float:
        if state is None:
            return 1.0
        factor, since = state
        return min(1.0, factor + self.recovery_per_s * max(0.0, now - since - self.hold_s))

    def on_throttle(self, state: State | None, now: float, used: float | None = None) -> State:
        """A 429 at ``now``; ``used``: the pool's window total / its configured quota, if known."""
        if state is not None and now - state[1] < self.cooldown_s:
            return state
        current = self.factor(state, now)
        step = current * self.decrease
        factor = step if used is None else min(current, max(used, step) * self.target)
        return max(self.floor, factor), now

    def limit(self, configured: int, state: State | None, now: float) -> int:
        return max(1, int(configured * self.factor(state, now)))
