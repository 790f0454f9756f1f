"""When to retry an upstream call, and how long to wait first: capped exponential backoff with
full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"), never past a deadline.

Pure: the caller passes the random draw and the time left.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bedrock answers these when the call may succeed later or elsewhere; validation errors (400),
# access errors (403), model errors (424) and timeouts (408: the model may have run) are final.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
RETRYABLE_TYPES = frozenset(
    {"ThrottlingException", "ServiceUnavailableException", "InternalServerException"}
)


def retryable(status: int, error_type: str | None) -> bool:
    if error_type is not None:
        base = error_type.split(":", 1)[0].rsplit("#", 1)[-1]
        if base in RETRYABLE_TYPES:
            return True
        if base == "ModelNotReadyException":
            return True
    return status in RETRYABLE_STATUS


def daily_quota_spent(body: bytes) -> bool:
    """A 429 from Bedrock's daily token quota ("Too many tokens per day, please wait before
    trying again."): that route stays refused until the day turns, and its per-minute quota is
    not to blame."""
    return b"tokens per day" in body[:512].lower()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 2.0

    def delay(self, attempt: int, draw: float, time_left_s: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1), or None
        when no further attempt should be made. ``draw`` is uniform in [0, 1)."""
        if attempt >= self.max_attempts:
            return None
        wait = draw * min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return wait if wait < time_left_s else None
