"""Running the gateway under uvicorn: one process, or several workers sharing a port."""

from __future__ import annotations

import logging
import os
from typing import Any

import uvicorn

from gateway.api.app import create_app
from gateway.config import GatewayConfig


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def uvicorn_options(config: GatewayConfig) -> dict[str, Any]:
    server, tls = config.server, config.server.tls
    return {
        "host": server.host,
        "port": server.port,
        "log_level": "warning",
        "access_log": False,  # the data plane logs one line per request itself
        "timeout_graceful_shutdown": server.shutdown_grace_s,
        "ssl_certfile": tls.certfile if tls else None,
        "ssl_keyfile": tls.keyfile if tls else None,
    }


def serve(config: GatewayConfig, config_path: str) -> None:
    """Serve until SIGINT/SIGTERM. With ``workers > 1`` each worker builds its own app."""
    configure_logging()
    options = uvicorn_options(config)
    if config.server.workers > 1:
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
        uvicorn.run(
            "gateway.api.app:app_from_env",
            factory=True,
            workers=config.server.workers,
            **options,
        )
    else:
        uvicorn.run(create_app(config), **options)
