"""What settlements leave of a reservation, per route: the queue's forecast discounts the
reservations waiting ahead of a request by it. Pure: fed by ``Limiter.settle``."""

from __future__ import annotations

from dataclasses import dataclass

MIN_SAMPLES = 20
"""Settlements seen before the share is trusted (to refuse a request on a forecast)."""


@dataclass
class SettledShare:
    """What settlements leave of a reservation: real usage / reserved, both moving averages
    (a ratio of sums, as the forecast applies it to sums of reservations)."""

    reserved: float = 0.0
    actual: float = 0.0
    samples: int = 0
    alpha: float = 0.02

    def observe(self, reserved: int, actual: int) -> None:
        if reserved <= 0:
            return
        self.samples += 1
        weight = max(self.alpha, 1 / self.samples)
        self.reserved += weight * (reserved - self.reserved)
        self.actual += weight * (max(0, actual) - self.actual)

    @property
    def value(self) -> float:
        """1 until settlements are seen: the safe side, reservations charged in full."""
        return self.actual / self.reserved if self.reserved > 0 else 1.0

    @property
    def trusted(self) -> bool:
        return self.samples >= MIN_SAMPLES
