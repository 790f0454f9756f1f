"""Running the gateway: one process or several workers sharing a port, under one of two servers.

``server.http: auto`` serves HTTP/1.1 and HTTP/2 on the same port with granian: cleartext
HTTP/2 with prior knowledge on ``http://`` and ALPN ``h2`` over TLS, which the AWS SDK for
JavaScript v3 needs (it speaks only HTTP/2 by default, docs/bedrock.md §8). ``server.http: h1``
serves HTTP/1.1 only, with uvicorn. docs/benchmarks.md compares the two.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import signal
from pathlib import Path
from typing import Any

from gateway import logs, preflight
from gateway.api.app import create_app
from gateway.config import GatewayConfig, LoggingConfig
from gateway.shutdown import SERVER_TAIL_S

_FACTORY = "gateway.api.app:app_from_env"  # each worker process builds its own app from it
MAX_HEAD_BYTES = 64 * 1024
"""A request's headers under uvicorn, and an HTTP/2 request's under granian (its HTTP/1 limit
is its own, about 400 KiB)."""


def configure_logging(level: str = "INFO") -> None:
    """Text logs at ``level`` (the demo and the command-line tools)."""
    logs.configure(LoggingConfig(level=level.upper(), format="text"))


def uvicorn_options(config: GatewayConfig) -> dict[str, Any]:
    from gateway.uvicorn_h1 import BoundedHttpTools

    server, tls = config.server, config.server.tls
    return {
        "host": server.host,
        "port": server.port,
        # httptools, with limits on a request head's size and time (gateway/uvicorn_h1.py)
        "http": functools.partial(
            BoundedHttpTools,
            head_timeout_s=server.request_read_timeout_s,
            max_head_bytes=MAX_HEAD_BYTES,
        ),
        "log_level": "warning",
        "access_log": False,  # the data plane logs one line per request itself
        # Nothing reads the client's address, and the status page reads X-Forwarded-Proto
        # itself: uvicorn's proxy-headers middleware would be a layer per request for nothing.
        "proxy_headers": False,
        "server_header": False,  # Bedrock sends none; no need to name the server
        # when the drain (gateway/shutdown.py) hands the stop over, it sets what is left
        "timeout_graceful_shutdown": server.shutdown_grace_s,
        "timeout_keep_alive": server.keep_alive_s,
        "ssl_certfile": tls.certfile if tls else None,
        "ssl_keyfile": tls.keyfile if tls else None,
    }


def granian_options(config: GatewayConfig) -> dict[str, Any]:
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings, HTTP2Settings

    server, tls = config.server, config.server.tls
    return {
        "address": server.host,
        "port": server.port,
        "interface": Interfaces.ASGI,
        "http": HTTPModes.auto,  # HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS)
        # a request head's time (HTTP/1; its size there is granian's own limit) and size (HTTP/2)
        "http1_settings": HTTP1Settings(
            header_read_timeout=math.ceil(server.request_read_timeout_s * 1000)
        ),
        "http2_settings": HTTP2Settings(max_headers_size=MAX_HEAD_BYTES),
        "websockets": False,
        "workers": server.workers,
        "loop": Loops.uvloop,
        # One Rust I/O thread per worker, beside its Python one: "auto" chose a multi-threaded
        # runtime, whose hand-offs cost HTTP/1.1 callers ~12 % more CPU than uvicorn, st ~5 %
        # (docs/benchmarks.md, HTTP/2 without the penalty).
        "runtime_mode": RuntimeModes.st,
        "factory": True,
        "log_access": False,  # the data plane logs one line per request itself
        "log_dictconfig": _granian_logging(config),
        # On SIGTERM each worker drains (gateway/shutdown.py) within the grace period, then
        # stops; a worker still running past it and the tail is killed (whole seconds).
        "workers_kill_timeout": math.ceil(server.shutdown_grace_s + SERVER_TAIL_S),
        "ssl_cert": Path(tls.certfile) if tls else None,
        "ssl_key": Path(tls.keyfile) if tls else None,
    }


def _granian_logging(config: GatewayConfig) -> dict[str, Any]:
    """granian's own logging setup, plus the gateway's loggers (through the root logger) as
    ``logging:`` says; workers apply it when they start."""
    from granian.log import LOGGING_CONFIG

    settings: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    ours = logs.dict_config(config.logging)
    settings["formatters"]["gateway"] = ours["formatters"]["gateway"]
    settings["handlers"]["gateway"] = ours["handlers"]["gateway"]
    settings["root"] = ours["root"]
    return settings


def _stop_quietly() -> None:
    """uvicorn re-raises the SIGTERM / SIGINT it handled once its graceful stop is done, with
    the handlers that were installed before it: make those a no-op, so a drained gateway exits
    0 (a stop that was asked for is not a failure) instead of dying of the signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def serve(config: GatewayConfig, config_path: str) -> None:
    """Serve until SIGINT/SIGTERM. Raises ``ConfigError`` for a config that cannot start and
    ``StartupError`` for what the start-up checks find (gateway/preflight.py)."""
    logs.configure(config.logging)
    preflight.run(config)
    create_app(config)  # fail here, with a clear message, on a missing secret or Redis URL
    if config.server.http == "auto" or config.server.workers > 1:
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
    _stop_quietly()
    if config.server.http == "auto":
        from granian.server import Server

        Server(_FACTORY, **granian_options(config)).serve()
    elif config.server.workers > 1:
        import uvicorn

        uvicorn.run(_FACTORY, factory=True, workers=config.server.workers,
                    **uvicorn_options(config))  # fmt: skip
    else:
        import uvicorn

        uvicorn.run(create_app(config, config_path=os.path.abspath(config_path)),
                    **uvicorn_options(config))  # fmt: skip
