"""Real servers for tests: uvicorn on a free loopback port, redis-server on another, and the
gateway's own ``serve`` command as a child process.

Each runs for the life of a fixture and is waited on by readiness (uvicorn's ``started``
flag, a Redis PING), never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
import uvloop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerThread:
    """A uvicorn server for an ASGI app, on its own event loop in a daemon thread."""

    app: Any
    port: int = field(default_factory=free_port)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    lifespan: Literal["auto", "on", "off"] = "on"

    def __post_init__(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan=self.lifespan,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            loop="uvloop",  # what `serve` runs in production
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout: float = 20.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited before it started")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer:
    """A private redis-server on a free port; nothing persisted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server (its port stays this object's: ``port_restart`` reuses it)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def port_restart(self) -> RedisServer:
        """Start a fresh, empty redis-server on the same port."""
        self.stop()
        return self.start()

    def __del__(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class GatewayProcess:
    """``bedrock-gateway serve`` as a child process (the real server, granian or uvicorn, with
    its workers and lifespan), ready once ``/health/ready`` answers 200."""

    def __init__(
        self, config: dict[str, Any], environ: dict[str, str], cafile: str | None = None,
        log_path: str | None = None,
    ):  # fmt: skip
        self.dir = tempfile.mkdtemp(prefix="gw-serve-")
        self.config_path = os.path.join(self.dir, "gateway.yaml")
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        with open(self.config_path, "w", encoding="utf-8") as file:
            json.dump(config, file)  # JSON is YAML
        self.environ = environ
        self.cafile = cafile
        self.log_path = log_path  # the process's stdout and stderr, else discarded
        self.tls = bool(config["server"].get("tls"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        exe = os.path.join(os.path.dirname(sys.executable), "bedrock-gateway")
        output: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, "serve", "--config", self.config_path],
            env={**os.environ, **self.environ},
            stdout=output,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
        )
        if self.log_path:
            output.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        verify: Any = ssl.create_default_context(cafile=self.cafile) if self.cafile else True
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bedrock-gateway serve exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", verify=verify).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError("bedrock-gateway serve did not get ready in time")
            time.sleep(0.05)

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        if self.proc is not None:
            self.proc.terminate()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        return code

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
