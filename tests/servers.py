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


# ---- Redis Cluster and Sentinel -----------------------------------------------------------


def _redis_node(port: int, workdir: str, *extra: str) -> subprocess.Popen[bytes]:
    """A redis-server on ``port`` (nothing persisted) with ``extra`` arguments, not waited on."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    return subprocess.Popen(
        [binary, *extra, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check()`` (connection errors count as not yet) until true; TimeoutError after."""
    import redis

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, redis.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def _client(port: int, password: str | None = None) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, password=password)


class RedisCluster:
    """A local Redis Cluster of ``masters`` masters with ``replicas`` replicas each, every node
    in a directory of its own, made with ``redis-cli --cluster create``; ready once every node
    says ``cluster_state:ok``."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.ports = [free_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.dir = tempfile.mkdtemp(prefix="gw-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> RedisCluster:
        for port in self.ports:
            workdir = os.path.join(self.dir, str(port))
            os.makedirs(workdir, exist_ok=True)
            # The bus port is port + 10000 unless given: past 65535 for many free ports.
            self.procs[port] = _redis_node(port, workdir, "--cluster-enabled", "yes",
                                           "--cluster-port", str(free_port()),
                                           "--cluster-config-file", "nodes.conf",
                                           "--cluster-node-timeout", "2000")  # fmt: skip
        for port in self.ports:
            _until(lambda p=port: _client(p).ping(), timeout, f"cluster node {port} up")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
        )  # fmt: skip
        for port in self.ports:
            _until(lambda p=port: b"cluster_state:ok" in _client(p).execute_command(
                "CLUSTER", "INFO"), timeout, f"cluster node {port} ok")  # fmt: skip
        return self

    def owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a node still running says."""
        client = _client(next(iter(self.procs)))
        slot = client.execute_command("CLUSTER", "KEYSLOT", key)
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        for port in self.ports:
            if _client(port).info("replication")["role"] == "master":
                _client(port).flushall()

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisSentinelSet:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching it as ``gw`` (quorum:
    a majority), each a process of its own; ready once every sentinel knows every replica and
    the other sentinels, and the replicas are in sync."""

    NAME = "gw"

    def __init__(self, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
                 password: str | None = None) -> None:  # fmt: skip
        self.password = password
        """Set on every node and sentinel (``requirepass``), as Bitnami's chart does by default."""
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.dir = tempfile.mkdtemp(prefix="gw-sentinel-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        if self.password is None:
            return f"redis+sentinel://{nodes}/{self.NAME}"
        pw = self.password
        return f"redis+sentinel://:{pw}@{nodes}/{self.NAME}?sentinel_password={pw}"

    def master_port(self) -> int:
        """The master's port as the first sentinel answering says."""
        for port in self.sentinel_ports:
            with contextlib.suppress(Exception):  # a sentinel down, or not knowing it yet
                return int(_client(port, self.password)
                           .sentinel_get_master_addr_by_name(self.NAME)[1])  # fmt: skip
        raise LookupError("no sentinel answers")

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> RedisSentinelSet:
        master, *replicas = self.data_ports
        for port in self.data_ports:
            workdir = os.path.join(self.dir, str(port))
            os.makedirs(workdir, exist_ok=True)
            # no 5 s wait for more replicas before a full sync
            extra: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
            if self.password is not None:
                extra += ("--requirepass", self.password, "--masterauth", self.password)
            if port != master:
                extra += ("--replicaof", "127.0.0.1", str(master))
            self.procs[port] = _redis_node(port, workdir, *extra)
        for port in replicas:
            _until(lambda p=port: _client(p, self.password).info("replication")[
                "master_link_status"] == "up", timeout, f"replica {port} in sync")  # fmt: skip
        quorum = len(self.sentinel_ports) // 2 + 1
        ids = {port: f"{port:040x}" for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            # Told of each other and of the replicas, not left to find them (seconds of hellos).
            lines = [f"sentinel myid {ids[port]}",
                     f"sentinel monitor {self.NAME} 127.0.0.1 {master} {quorum}",
                     f"sentinel down-after-milliseconds {self.NAME} {self.down_after_ms}",
                     f"sentinel failover-timeout {self.NAME} 10000",
                     *(f"sentinel known-replica {self.NAME} 127.0.0.1 {r}" for r in replicas),
                     *(f"sentinel known-sentinel {self.NAME} 127.0.0.1 {o} {ids[o]}"
                       for o in self.sentinel_ports if o != port)]  # fmt: skip
            if self.password is not None:
                lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}",
                          f"sentinel auth-pass {self.NAME} {self.password}"]  # fmt: skip
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(conf, "w", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")
            self.procs[port] = _redis_node(port, self.dir, conf, "--sentinel")
        others, known = len(self.sentinel_ports) - 1, len(replicas)

        def settled(port: int) -> bool:
            state = _client(port, self.password).sentinel_master(self.NAME)
            return state["num-other-sentinels"] == others and state["num-slaves"] == known

        for port in self.sentinel_ports:
            _until(lambda p=port: settled(p), timeout, f"sentinel {port} knows the set")
        return self

    def kill(self, port: int) -> None:
        """SIGKILL one process of the set (the master, say), as a crash would."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def flush(self) -> None:
        _client(self.master_port(), self.password).flushall()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
