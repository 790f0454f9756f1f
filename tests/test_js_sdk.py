"""The AWS SDK for JavaScript v3 (npm, default HTTP/2-only request handler, a tenant's SigV4
credentials) calling the gateway over http:// (cleartext HTTP/2) and https:// (ALPN h2).

tests/js/calls.mjs makes the calls; ``npm ci`` installs the pinned SDK when node_modules is
missing. Skipped only where node or npm is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENVIRON, KEY_ID, SECRET, gateway_settings
from tests.servers import GatewayProcess, ServerThread
from tests.test_server import issue_cert

JS = Path(__file__).parent / "js"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed"
)


@pytest.fixture(scope="module")
def sdk_installed() -> Path:
    if not (JS / "node_modules" / "@aws-sdk" / "client-bedrock-runtime").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True,
                       timeout=300)  # fmt: skip
    return JS


def run_calls(url: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "GATEWAY_URL": url, "MODEL_ID": "claude-sonnet",
           "TENANT_KEY_ID": KEY_ID, "TENANT_SECRET": SECRET, **(extra_env or {})}  # fmt: skip
    done = subprocess.run(["node", "calls.mjs"], cwd=JS, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def check(results: dict[str, Any]) -> None:
    assert results["converse"] == {"outputTokens": 5, "stopReason": "end_turn"}
    assert results["invoke"] == {"outputTokens": 6}
    stream = results["converseStream"]
    assert stream["events"][0] == "messageStart"
    assert stream["events"][-1] == "metadata"
    assert stream["outputTokens"] == 7
    invoke = results["invokeStream"]
    assert invoke["types"][0] == "message_start"
    assert invoke["types"][-1] == "message_stop"
    assert invoke["outputTokens"] == 8
    # A mid-stream exception frame surfaces as the SDK's own modelled class.
    assert results["streamError"] == {"name": "ThrottlingException"}


def test_js_sdk_over_cleartext_http2(sdk_installed: Path, simulator: ServerThread) -> None:
    with GatewayProcess(gateway_settings(simulator.url), ENVIRON) as gateway:
        check(run_calls(gateway.url))


def test_js_sdk_over_tls(sdk_installed: Path, simulator: ServerThread, tmp_path: Path) -> None:
    certfile, keyfile, cafile = issue_cert(tmp_path)
    settings = gateway_settings(simulator.url, tls={"certfile": certfile, "keyfile": keyfile})
    with GatewayProcess(settings, ENVIRON, cafile=cafile) as gateway:
        assert gateway.url.startswith("https://")
        check(run_calls(gateway.url, {"NODE_EXTRA_CA_CERTS": cafile}))
