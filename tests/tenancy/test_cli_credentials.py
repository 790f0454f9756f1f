"""Credentials issued with the CLI, used by unmodified SDKs against the real server over TLS:
boto3 with a SigV4 pair and with a bearer key, AnthropicBedrock with each; and what must fail
does: a tampered signature, a signed request replayed after the skew window, a wrong secret."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import botocore.auth
import httpx
import pytest

from gateway.auth import hash_key
from gateway.tenancy.secrets import new_sealing_key
from tests.conftest import ENVIRON, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread
from tests.test_server import issue_cert

ADMIN_KEY = "gwk-admin-cli-credentials-0123456789"
EXE = os.path.join(os.path.dirname(sys.executable), "bedrock-gateway")
HELLO = [{"role": "user", "content": [{"text": "hello [sim:output_tokens=4]"}]}]


@pytest.fixture(scope="module")
def tls_gateway(
    simulator: ServerThread, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    certfile, keyfile, cafile = issue_cert(tmp_path_factory.mktemp("cli-credentials"))
    settings = gateway_settings(simulator.url)
    settings["server"] = {"tls": {"certfile": certfile, "keyfile": keyfile}}  # granian, h1 + h2
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url,
                           "key_prefix": "clicred" + os.urandom(3).hex()}  # fmt: skip
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)]}
    environ = {**ENVIRON, "GATEWAY_SECRETS_KEY": new_sealing_key()}
    with GatewayProcess(settings, environ, cafile=cafile) as process:
        yield process, cafile


def _cli(url: str, cafile: str, *args: str) -> Any:
    environ = {**os.environ, "BEDROCK_GATEWAY_URL": url, "BEDROCK_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    ran = subprocess.run([EXE, *args, "--cacert", cafile, "--json"], env=environ,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


@pytest.fixture(scope="module")
def issued(tls_gateway: tuple[GatewayProcess, str]) -> dict[str, Any]:
    """A tenant and one credential of each kind, made with ``bedrock-gateway tenants``."""
    gateway, cafile = tls_gateway
    _cli(gateway.url, cafile, "tenants", "create", "svc", "--models", "claude-haiku")
    pair = _cli(gateway.url, cafile, "tenants", "keys", "create", "svc", "--kind", "sigv4",
                "--name", "prod")  # fmt: skip
    bearer = _cli(gateway.url, cafile, "tenants", "keys", "create", "svc", "--kind", "bearer",
                  "--name", "laptop")  # fmt: skip
    return {"id": pair["access_key_id"], "secret": pair["secret_access_key"], "key": bearer["key"]}


def test_boto3_with_each_kind(
    tls_gateway: tuple[GatewayProcess, str], issued: dict[str, Any], make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    gateway, cafile = tls_gateway
    sigv4 = make_client(gateway.url, issued["id"], issued["secret"], verify=cafile)
    assert sigv4.converse(modelId="claude-haiku", messages=HELLO)["usage"]["outputTokens"] == 4
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", issued["key"])
    bearer = make_client(gateway.url, verify=cafile)
    assert bearer.converse(modelId="claude-haiku", messages=HELLO)["usage"]["outputTokens"] == 4


def test_anthropic_sdk_with_each_kind(
    tls_gateway: tuple[GatewayProcess, str], issued: dict[str, Any]
) -> None:
    from anthropic import AnthropicBedrock, DefaultHttpxClient

    gateway, cafile = tls_gateway
    trust = ssl.create_default_context(cafile=cafile)
    hello: Any = [{"role": "user", "content": "hello [sim:output_tokens=4]"}]
    for credentials in ({"aws_access_key": issued["id"], "aws_secret_key": issued["secret"]},
                        {"api_key": issued["key"]}):  # fmt: skip
        sdk = AnthropicBedrock(base_url=gateway.url, aws_region="us-east-1", max_retries=0,
                               http_client=DefaultHttpxClient(verify=trust),
                               **credentials)  # fmt: skip
        reply = sdk.messages.create(model="claude-haiku", max_tokens=20, messages=hello)
        assert reply.usage.output_tokens == 4


class _Captured(Exception):
    """Stops boto3 once the request is signed: nothing is sent."""


def _signed(gateway: GatewayProcess, cafile: str, issued: dict[str, Any],
            make_client: ClientFactory) -> dict[str, Any]:  # fmt: skip
    """A Converse request boto3 signed, captured instead of sent."""
    captured: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> Any:
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        captured.update(url=request.url, headers=headers, body=request.body)
        raise _Captured

    client = make_client(gateway.url, issued["id"], issued["secret"], verify=cafile)
    client.meta.events.register("before-send.bedrock-runtime.Converse", capture)
    with pytest.raises(_Captured):
        client.converse(modelId="claude-haiku", messages=HELLO)
    return captured


def _send(request: dict[str, Any], cafile: str) -> httpx.Response:
    return httpx.post(request["url"], headers=request["headers"], content=request["body"],
                      verify=ssl.create_default_context(cafile=cafile))  # fmt: skip


def test_what_must_fail_does(
    tls_gateway: tuple[GatewayProcess, str], issued: dict[str, Any], make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    gateway, cafile = tls_gateway
    fresh = _signed(gateway, cafile, issued, make_client)
    assert _send(fresh, cafile).status_code == 200  # the captured request itself is good

    # a tampered signature
    auth = fresh["headers"]["Authorization"]
    forged = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    refused = _send({**fresh, "headers": {**fresh["headers"], "Authorization": forged}}, cafile)
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "signature" in refused.json()["message"]

    # a request signed 10 minutes ago (the skew window is 5): replayed now, it is refused
    past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: past)
    stale = _signed(gateway, cafile, issued, make_client)
    monkeypatch.undo()
    replayed = _send(stale, cafile)
    assert replayed.status_code == 403
    assert "expired" in replayed.json()["message"]

    # a wrong secret
    wrong = make_client(gateway.url, issued["id"], issued["secret"][:-1] + "x", verify=cafile)
    with pytest.raises(wrong.exceptions.AccessDeniedException, match="signature"):
        wrong.converse(modelId="claude-haiku", messages=HELLO)
