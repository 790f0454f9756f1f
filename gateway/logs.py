"""The gateway's logs: JSON lines (or text) on stderr, and the access log of one line per request.

Every logger writes through one handler on the root logger, formatted by ``JsonFormatter``
(``logging.format: json``, the default: one object per line, for a log pipeline) or
``TextFormatter`` (``text``: for a terminal). A record's structured fields travel in
``extra={"fields": {...}}`` and become top-level keys.

The access log (``logging.access_log``, off by default) writes one ``gateway.access`` line per
request: request id (the ``x-amzn-RequestId`` the caller got), tenant, model, route, operation,
priority, status, outcome, latency, overhead, queue time, attempts and tokens. It never holds a
body, a key or a header: it is built from the request's outcome, not from the request. Off, a
healthy request writes nothing, so the hot path pays one attribute test (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.config import LoggingConfig

ACCESS = logging.getLogger("gateway.access")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", **fields, "exc"?}``, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger message key=value …``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


def configure(config: LoggingConfig) -> None:
    """Send every logger's records at ``config.level`` and above to stderr, formatted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[config.format]())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)


def dict_config(config: LoggingConfig) -> dict[str, Any]:
    """The same set-up as ``configure``, as a ``logging.config.dictConfig`` mapping (for
    servers whose worker processes configure logging themselves)."""
    formatter = FORMATTERS[config.format]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "gateway": {
                "formatter": "gateway",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["gateway"], "level": config.level},
    }


def access(fields: dict[str, Any]) -> None:
    """One access-log line (the caller checks that the access log is on)."""
    ACCESS.info("request", extra={"fields": fields})
