"""The newest boto3 generation (botocore >= 1.44, tests/clients/requirements.txt) against the
gateway, in a virtual environment of its own: a service on today's SDK, unmodified.

botocore 1.44 changed what a gateway meets (docs/bedrock.md §0, §2, §6): standard retries
by default (3 attempts), ``x-amz-retry-after`` honoured, bearer tokens refused over plain http.
The venv is made once under ``.venv/clients`` (pip from PyPI) and reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gateway.api.app import create_app
from gateway.config import parse_config
from tests.conftest import (
    BEARER,
    ENVIRON,
    KEY_ID,
    SECRET,
    gateway_settings,
    start_gateway,
)
from tests.servers import ServerThread
from tests.test_server import issue_cert

CLIENTS = Path(__file__).parent / "clients"
VENV = Path(__file__).parent.parent / ".venv" / "clients"
WINDOW_S = 3  # a short window: the gateway's retry hint is ~3.5 s, not a minute


@pytest.fixture(scope="module")
def python() -> Path:
    """The client venv's interpreter, installed from requirements.txt if it is not yet."""
    requirements = CLIENTS / "requirements.txt"
    stamp = VENV / "requirements.txt"
    binary = VENV / "bin" / "python"
    if not binary.exists() or not stamp.exists() or stamp.read_text() != requirements.read_text():
        venv.create(VENV, with_pip=True, clear=True)
        subprocess.run([str(binary), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(requirements)],
                       check=True, timeout=300)  # fmt: skip
        stamp.write_text(requirements.read_text())
    return binary


def calls(python: Path, endpoint: str, n: int, **args: Any) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", **args.pop("env", {}))
    done = subprocess.run(
        [str(python), str(CLIENTS / "newest_boto3.py")],
        input=json.dumps({"endpoint": endpoint, "calls": n, **args}),
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["botocore"].startswith("1.44."), result
    return result


@pytest.fixture
def budgeted(simulator: ServerThread) -> Iterator[ServerThread]:
    """A tenant whose budget holds one call per WINDOW_S, and no queueing: the second call in
    a row gets the gateway's own ThrottlingException with a retry hint of about WINDOW_S."""
    settings = gateway_settings(simulator.url)
    settings["limiter"] = {"window_s": WINDOW_S}
    settings["queue"] = {"max_wait_s": 0}
    settings["tenants"]["team-a"]["tpm"] = 60
    server = start_gateway(parse_config(settings))
    yield server
    server.stop()


def test_sigv4_calls_and_the_retry_hint_is_honoured(python: Path, budgeted: ServerThread) -> None:
    result = calls(python, budgeted.url, 2, key_id=KEY_ID, secret=SECRET)
    first, second = result["calls"]
    assert first == {"outputTokens": 20, "retries": 0, "elapsed": first["elapsed"]}
    # refused at once with x-amz-retry-after ~3.5 s: botocore waited that long (its own
    # backoff is under 1 s for a first throttling retry) and the retry was admitted
    assert second["outputTokens"] == 20
    assert second["retries"] == 1
    assert WINDOW_S - 0.5 < second["elapsed"] < WINDOW_S + 5


def test_without_the_hint_the_older_client_gives_up(budgeted: ServerThread) -> None:
    """The control: botocore 1.40 in standard mode ignores x-amz-retry-after, retries within
    its own 1 s and 2 s backoffs while the budget is still spent, and raises."""
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=budgeted.url,
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )  # fmt: skip
    messages = [{"role": "user", "content": [{"text": "hello [sim:output_tokens=20]"}]}]
    client.converse(modelId="claude-haiku", messages=messages, inferenceConfig={"maxTokens": 20})
    with pytest.raises(client.exceptions.ThrottlingException) as refused:
        client.converse(modelId="claude-haiku", messages=messages,
                        inferenceConfig={"maxTokens": 20})  # fmt: skip
    assert refused.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert int(refused.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-retry-after"]) > 0


def test_bearer_key_over_tls(python: Path, simulator: ServerThread, tmp_path: Path) -> None:
    certfile, keyfile, cafile = issue_cert(tmp_path)
    config = parse_config(gateway_settings(simulator.url))
    server = ServerThread(
        create_app(config, environ=ENVIRON), ssl_certfile=certfile, ssl_keyfile=keyfile
    ).start()
    try:
        result = calls(python, server.url, 1, ca=cafile, env={"AWS_BEARER_TOKEN_BEDROCK": BEARER})
        assert result["calls"][0]["outputTokens"] == 20
        wrong = calls(python, server.url, 1, ca=cafile,
                      env={"AWS_BEARER_TOKEN_BEDROCK": "gwk-not-a-key"})  # fmt: skip
        assert wrong["calls"][0]["error"] == "AccessDeniedException"
        assert wrong["calls"][0]["retries"] == 0
    finally:
        server.stop()
