"""Test directives: ``[sim:key=value]`` anywhere in a request body, or ``x-sim-key`` headers.

They set the output length and inject faults and latency: an error status, a stall (a long
``ttft_ms``), an exception frame or a bad CRC mid-stream, or a connection closed mid-response
(``reset``). The body is only scanned when the bytes ``[sim:`` occur, so ordinary traffic
pays one substring search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from gateway.errors import ValidationError

_DIRECTIVE = re.compile(rb"\[sim:([a-z_]+)=([A-Za-z0-9_.\-]*)\]")
_HEADER_PREFIX = b"x-sim-"

FAULT_STATUSES = frozenset({400, 408, 424, 429, 500, 503})
STREAM_ERRORS = frozenset(
    {
        "throttlingException",
        "internalServerException",
        "serviceUnavailableException",
        "validationException",
        "modelStreamErrorException",
        "modelTimeoutException",
    }
)


@dataclass(frozen=True, slots=True)
class Directives:
    output_tokens: int | None = None
    status: int | None = None
    ttft_ms: float | None = None
    token_ms: float | None = None
    stream_error: str | None = None
    stream_bad_crc: bool = False
    reset: bool = False
    """Admit and charge the call, then close the connection mid-response: after half the body
    of a plain answer, after half the output of a stream (as a connection reset would)."""
    fail_times: int | None = None
    """With ``status`` or ``reset``: inject the fault only into the first N requests with this
    exact body (so a client or gateway that retries it then succeeds)."""


NONE = Directives()


def parse_directives(body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Directives:
    """Directives from ``x-sim-*`` headers, then the body (the body wins; within it, the
    last occurrence of a key wins). Unknown keys and bad values are a ValidationException."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(_HEADER_PREFIX):
            found[name[len(_HEADER_PREFIX) :].decode("latin-1").replace("-", "_")] = value.decode(
                "latin-1"
            ).strip()
    if b"[sim:" in body:
        for key, value in _DIRECTIVE.findall(body):
            found[key.decode()] = value.decode()
    if not found:
        return NONE
    return _build(found)


def _build(found: dict[str, str]) -> Directives:
    directives = NONE
    for key, value in found.items():
        if key not in Directives.__dataclass_fields__:
            raise ValidationError(f"Unknown simulator directive [sim:{key}=...]")
        directives = replace(directives, **{key: _value(key, value)})
    return directives


def _value(key: str, value: str) -> Any:
    number: float
    try:
        if key in ("output_tokens", "status", "fail_times"):
            number = int(value)
        elif key in ("ttft_ms", "token_ms"):
            number = float(value)
        elif key in ("stream_bad_crc", "reset"):
            return value not in ("", "0", "false")
        else:
            if value not in STREAM_ERRORS:
                raise ValueError(value)
            return value
    except ValueError:
        raise ValidationError(f"Bad value for simulator directive {key}: {value!r}") from None
    if number < 0 or (key == "status" and number not in FAULT_STATUSES):
        raise ValidationError(f"Bad value for simulator directive {key}: {value!r}")
    return number
