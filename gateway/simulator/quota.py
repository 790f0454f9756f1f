"""One Bedrock quota pool: reserve at request start, correct the charge when it ends.

Pure: every call takes ``now`` (monotonic seconds) and, for the daily quota, a ``day`` key.
Two enforcement modes: a strict rolling 60 s window, or a token bucket of capacity TPM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.simulator.ledger import Entry, Ledger

WINDOW_S = 60.0


class Mode(StrEnum):
    ROLLING = "rolling"
    BUCKET = "bucket"


class Limit(StrEnum):
    """Which quota a denial came from; each has its own Bedrock throttle message."""

    TOKENS_PER_MINUTE = "tokens_per_minute"
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_DAY = "tokens_per_day"


@dataclass(frozen=True, slots=True)
class Limits:
    tpm: int
    rpm: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    """Not admitted. ``never`` means the reservation exceeds the whole TPM: waiting won't help."""

    limit: Limit
    never: bool = False


@dataclass(slots=True)
class Reservation:
    entry: Entry
    day: int
    reserved: int
    settled: bool = False


@dataclass(frozen=True, slots=True)
class PoolStats:
    mode: Mode
    limits: Limits
    admitted: int
    throttled: int
    throttled_by: dict[str, int]
    rejected: int
    requests: int
    settled: int
    tokens: int
    in_flight: int
    window_tokens: int
    window_requests: int
    day_tokens: int
    max_rolling_60s_tokens: int
    max_rolling_60s_requests: int
    timeline: list[tuple[int, int, int]] | None = None


class TokenBucket:
    """Capacity ``capacity``, refilled at capacity per minute; may be driven negative."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> float:
        if now > self.updated:
            rate = self.capacity / WINDOW_S
            self.level = min(self.capacity, self.level + (now - self.updated) * rate)
            self.updated = now
        return self.level

    def adjust(self, now: float, amount: float) -> None:
        """Take ``amount`` (a negative amount refunds, never above capacity)."""
        self.refill(now)
        self.level = min(self.capacity, self.level - amount)


@dataclass(slots=True)
class _Counters:
    admitted: int = 0
    throttled_by: dict[str, int] = field(default_factory=lambda: {str(x): 0 for x in Limit})
    rejected: int = 0
    settled: int = 0
    tokens: int = 0


class QuotaPool:
    """TPM with optional RPM and tokens-per-day, for one (region, model) pool."""

    def __init__(
        self,
        limits: Limits,
        mode: Mode,
        now: float,
        *,
        horizon: float = 7200.0,
        max_entries: int = 500_000,
    ) -> None:
        self._ledger = Ledger(WINDOW_S, horizon, max_entries)
        self._counts = _Counters()
        self._day = -1
        self._day_used = 0
        self.limits = limits
        self.mode = mode
        self._tokens = TokenBucket(limits.tpm, now)
        self._requests = TokenBucket(limits.rpm, now) if limits.rpm is not None else None

    def set_limits(self, limits: Limits, mode: Mode, now: float) -> None:
        """New quotas from now on; the usage recorded so far still counts against them."""
        switching = mode is Mode.BUCKET and self.mode is not Mode.BUCKET
        self.limits, self.mode = limits, mode
        self._tokens = self._resized(self._tokens, limits.tpm, now, switching)
        if limits.rpm is None:
            self._requests = None
        else:
            self._requests = self._resized(self._requests, limits.rpm, now, switching)

    def try_reserve(self, now: float, day: int, tokens: int) -> Reservation | Denial:
        """Admit a request reserving ``tokens``, or say which limit refuses it."""
        denial = self._check(now, day, tokens)
        if denial is not None:
            if denial.never:
                self._counts.rejected += 1
            else:
                self._counts.throttled_by[denial.limit] += 1
            return denial
        if self.mode is Mode.BUCKET:
            self._tokens.adjust(now, tokens)
            if self._requests is not None:
                self._requests.adjust(now, 1)
        self._day_used += tokens
        self._counts.admitted += 1
        return Reservation(self._ledger.add(now, tokens), day, tokens)

    def settle(self, reservation: Reservation, now: float, tokens: int) -> None:
        """Correct the charge to the final ``tokens``, as of the request's start. Idempotent."""
        if reservation.settled:
            return
        reservation.settled = True
        delta = tokens - reservation.reserved
        self._ledger.correct(reservation.entry, tokens)
        if reservation.day == self._day:
            self._day_used += delta
        if self.mode is Mode.BUCKET:
            self._tokens.adjust(now, delta)
        self._counts.settled += 1
        self._counts.tokens += tokens

    def stats(self, now: float, *, timeline_offset: float | None = None) -> PoolStats:
        """Counters and peaks; with ``timeline_offset``, the per-second timeline shifted by it."""
        window = self._ledger.totals(now)
        peak = self._ledger.peak()
        counts = self._counts
        throttled = sum(counts.throttled_by.values())
        timeline = None if timeline_offset is None else self._ledger.timeline(timeline_offset)
        return PoolStats(
            mode=self.mode,
            limits=self.limits,
            admitted=counts.admitted,
            throttled=throttled,
            throttled_by=dict(counts.throttled_by),
            rejected=counts.rejected,
            requests=counts.admitted + throttled + counts.rejected,
            settled=counts.settled,
            tokens=counts.tokens,
            in_flight=counts.admitted - counts.settled,
            window_tokens=window.tokens,
            window_requests=window.requests,
            day_tokens=self._day_used,
            max_rolling_60s_tokens=peak.tokens,
            max_rolling_60s_requests=peak.requests,
            timeline=timeline,
        )

    def _check(self, now: float, day: int, tokens: int) -> Denial | None:
        limits = self.limits
        if tokens > limits.tpm:
            return Denial(Limit.TOKENS_PER_MINUTE, never=True)
        window = self._ledger.totals(now)  # also evicts, in either mode, to bound memory
        if day != self._day:
            self._day, self._day_used = day, 0
        if limits.tokens_per_day is not None and self._day_used + tokens > limits.tokens_per_day:
            return Denial(Limit.TOKENS_PER_DAY)
        if self.mode is Mode.ROLLING:
            if limits.rpm is not None and window.requests + 1 > limits.rpm:
                return Denial(Limit.REQUESTS_PER_MINUTE)
            if window.tokens + tokens > limits.tpm:
                return Denial(Limit.TOKENS_PER_MINUTE)
            return None
        if self._requests is not None and self._requests.refill(now) < 1:
            return Denial(Limit.REQUESTS_PER_MINUTE)
        if self._tokens.refill(now) < tokens:
            return Denial(Limit.TOKENS_PER_MINUTE)
        return None

    @staticmethod
    def _resized(
        bucket: TokenBucket | None, capacity: int, now: float, refill: bool
    ) -> TokenBucket:
        if bucket is None or refill:
            return TokenBucket(capacity, now)
        bucket.refill(now)
        bucket.capacity = float(capacity)
        bucket.level = min(bucket.level, bucket.capacity)
        return bucket
