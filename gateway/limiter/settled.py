"""What settlements leave of a reservation, per route: the queue's forecast charges the
reservations waiting ahead of a request by it. Pure: fed by ``Limiter.settle``.

A reservation has two parts that settle very differently: the input estimate (calibrated, so
Bedrock's count is close to it) and the output cap, max_tokens x burndown (a call uses some
share of it, the same share on average whatever its prompt). One share of the whole would charge
a queue of short prompts as if it were the long prompts seen before it: replayed on the answers
of a burst of varied prompts (tests/load/test_honest_refusals.py), one share learned from the
first minute put the second minute's use 1,300-1,800 tokens (2-3 % of the window) above what it
was; the two shares, 380-650.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SAMPLES = 20
"""Settlements seen before the shares are trusted (to refuse a request on a forecast)."""
DURATION_ALPHA = 0.05
"""Calls' durations are averaged over about the last 40."""
MAX_RATIO = 3
"""A settlement counts at most this x each part of its reservation (an absurd usage report
cannot make the forecast charge a queue without bound)."""


@dataclass
class SettledShare:
    """What settlements leave of each part of a reservation: used / reserved, of the input
    estimate and of the output cap, each a ratio of moving averages (a ratio of sums, as the
    forecast applies it to sums of reservations). ``alpha`` 0.005 averages about 400 calls: a
    call's use of its output cap varies a lot (here 50-250 of 300), and the forecast applies
    the average to a window's worth of calls at once."""

    input_reserved: float = 0.0
    input_used: float = 0.0
    output_reserved: float = 0.0
    output_used: float = 0.0
    samples: int = 0
    alpha: float = 0.005
    duration_ms: float = 0.0
    """How long calls take from admission to settlement (a moving average): a refund comes
    back that long after its call took the room."""

    def observe(
        self, reserved: int, output_reserved: int, used: int, output_used: int,
        duration_ms: float = 0.0,
    ) -> None:  # fmt: skip
        """A settlement: ``reserved`` tokens of which ``output_reserved`` were the output cap;
        ``used`` charged in the end, of which ``output_used`` for the output, ``duration_ms``
        after the admission."""
        if reserved <= 0:
            return
        self.samples += 1
        weight = max(self.alpha, 1 / self.samples)
        self.duration_ms += max(DURATION_ALPHA, 1 / self.samples) * (
            max(0.0, duration_ms) - self.duration_ms
        )
        output_reserved = min(max(0, output_reserved), reserved)
        input_reserved = reserved - output_reserved
        output_used = min(max(0, output_used), max(0, used), MAX_RATIO * output_reserved)
        input_used = min(max(0, used) - output_used, MAX_RATIO * input_reserved)
        self.input_reserved += weight * (input_reserved - self.input_reserved)
        self.input_used += weight * (input_used - self.input_used)
        self.output_reserved += weight * (output_reserved - self.output_reserved)
        self.output_used += weight * (output_used - self.output_used)

    def charge(self, reserved: float, output_reserved: float = 0.0) -> float:
        """What reservations totalling ``reserved`` tokens, ``output_reserved`` of them output
        caps, are expected to be charged once settled; in full until settlements are seen."""
        output = min(output_reserved, reserved)
        return (reserved - output) * _ratio(self.input_used, self.input_reserved) + output * _ratio(
            self.output_used, self.output_reserved
        )

    @property
    def trusted(self) -> bool:
        return self.samples >= MIN_SAMPLES


def _ratio(used: float, reserved: float) -> float:
    """1 with nothing seen: the safe side, reservations charged in full."""
    return used / reserved if reserved > 0 else 1.0
