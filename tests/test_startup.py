"""Start-up that tells the operator what is wrong: the real ``serve`` process, one line, an exit
code per problem, no traceback, nothing left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway import preflight
from tests.conftest import ENVIRON, gateway_settings
from tests.servers import free_port

START_TIMEOUT_S = 60


def environment(home: Path) -> dict[str, str]:
    """This process's environment without any AWS credentials the default chain could find."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= ENVIRON | {"HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true",
                      "AWS_CONFIG_FILE": str(home / "none"),
                      "AWS_SHARED_CREDENTIALS_FILE": str(home / "none")}  # fmt: skip
    return env


def write(tmp_path: Path, settings: dict[str, Any]) -> Path:
    settings["server"] |= {"host": "127.0.0.1", "http": "h1"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def serve(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        env=environment(tmp_path), capture_output=True, text=True, timeout=START_TIMEOUT_S,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def assert_one_clear_line(result: subprocess.CompletedProcess[str], code: int, *says: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stderr
    for words in says:
        assert words in lines[0], lines[0]


def settings(**server: Any) -> dict[str, Any]:
    return gateway_settings("http://127.0.0.1:9", port=free_port(), **server)


def test_missing_aws_credentials(tmp_path: Path) -> None:
    config = settings()
    config["accounts"]["test"] = {}  # the default chain, which finds nothing here
    result = serve(write(tmp_path, config), tmp_path)
    assert_one_clear_line(result, preflight.EXIT_CREDENTIALS, "accounts.test",
                          "no AWS credentials")  # fmt: skip


def test_unreachable_redis_with_deny(tmp_path: Path) -> None:
    config = settings()
    config["limiter"] = {"backend": "redis", "redis_url": f"redis://:pw@127.0.0.1:{free_port()}/0",
                         "on_store_failure": "deny"}  # fmt: skip
    result = serve(write(tmp_path, config), tmp_path)
    assert_one_clear_line(result, preflight.EXIT_STORE, "limiter.redis_url", "does not answer",
                          "deny")  # fmt: skip
    assert "pw" not in result.stderr


def test_unreachable_sentinels_are_named_without_their_password(tmp_path: Path) -> None:
    config = settings()
    config["limiter"] = {"backend": "redis", "on_store_failure": "deny",
                         "redis_url": f"redis+sentinel://:pw1@127.0.0.1:{free_port()}/gw"
                                      f"?sentinel_password=pw2"}  # fmt: skip
    result = serve(write(tmp_path, config), tmp_path)
    assert_one_clear_line(result, preflight.EXIT_STORE, "limiter.redis_url", "does not answer")
    assert "pw1" not in result.stderr
    assert "pw2" not in result.stderr


def test_unreachable_redis_with_local_starts_degraded_and_stops_cleanly(tmp_path: Path) -> None:
    config = settings()
    port = config["server"]["port"]
    config["limiter"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0",
                         "on_store_failure": "local"}  # fmt: skip
    path = write(tmp_path, config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        env=environment(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)  # waiting for a real process to listen, not passing time
        assert ready is not None, "the gateway never listened"
        assert "degraded" in ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "local share" in output


def test_a_bad_tls_file(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    config = settings(tls={"certfile": str(tmp_path / "cert.pem"),
                           "keyfile": str(tmp_path / "missing-key.pem")})  # fmt: skip
    result = serve(write(tmp_path, config), tmp_path)
    assert_one_clear_line(result, preflight.EXIT_TLS, "server.tls")


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = settings()
        config["server"]["port"] = taken.getsockname()[1]
        result = serve(write(tmp_path, config), tmp_path)
    assert_one_clear_line(result, preflight.EXIT_PORT, "server.port", "in use")


def test_a_memory_store_that_may_be_one_of_several_replicas_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.config import parse_config

    config = parse_config(settings() | {"limiter": {"backend": "memory", "replicas": 3}})
    with caplog.at_level("WARNING"):
        preflight.warn_memory_store(config, {})
        preflight.warn_memory_store(config.model_copy(update={"limiter": config.limiter.model_copy(
            update={"replicas": 1})}), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})  # fmt: skip
        preflight.warn_memory_store(config.model_copy(update={"limiter": config.limiter.model_copy(
            update={"replicas": 1})}), {})  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "limiter.replicas is 3" in warnings[0]
    assert "Kubernetes" in warnings[1]
