"""What reaches Bedrock: a recording upstream checks the gateway's request as sent on the wire,
signature included (the simulator checks no signatures)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import sigv4
from gateway.asgi import Receive, Scope, Send, read_body
from gateway.config import parse_config
from gateway.simulator.events import event_frame
from tests.conftest import (
    ENVIRON,
    SONNET,
    ClientFactory,
    gateway_settings,
    messages_body,
    start_gateway,
)
from tests.servers import ServerThread


class Recorder:
    """An upstream that keeps each request's raw path, headers and body and answers Converse."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, list[str]], bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive, 1 << 20)
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode(), []).append(value.decode())
        self.requests.append((scope["raw_path"], headers, body))
        if scope["raw_path"].endswith(b"-stream"):
            answer = event_frame("chunk", {"bytes": base64.b64encode(b"{}").decode()})
            content_type = b"application/vnd.amazon.eventstream"
        else:
            answer = json.dumps({"output": {"message": {"role": "assistant", "content": []}},
                                 "stopReason": "end_turn", "usage": {"inputTokens": 3,
                                 "outputTokens": 1, "totalTokens": 4}}).encode()  # fmt: skip
            content_type = b"application/json"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type)]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, ServerThread]]:
    app = Recorder()
    with ServerThread(app, lifespan="off") as server:
        yield app, server


@pytest.fixture(scope="module")
def gateway(recorder: tuple[Recorder, ServerThread]) -> Iterator[ServerThread]:
    server = start_gateway(parse_config(gateway_settings(recorder[1].url)))
    yield server
    server.stop()


def test_the_upstream_signature_covers_the_path_as_sent(
    recorder: tuple[Recorder, ServerThread], gateway: ServerThread, make_client: ClientFactory
) -> None:
    make_client(gateway.url).converse(
        modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    raw_path, headers, body = recorder[0].requests[-1]
    # botocore's encoding, kept on the wire: Bedrock canonicalises the path it receives.
    assert raw_path == f"/model/{SONNET.replace(':', '%3A')}/converse".encode()
    auth = sigv4.parse_authorization(headers["authorization"][0])
    assert auth.access_key_id == ENVIRON["TEST_UPSTREAM_KEY"]
    signed: Any = {name: headers[name] for name in (*auth.signed_headers, "x-amz-date")}
    sigv4.verify(
        auth, ENVIRON["TEST_UPSTREAM_SECRET"], method="POST", raw_path=raw_path.decode(),
        raw_query="", headers=signed, payload_hash=hashlib.sha256(body).hexdigest(),
        now=time.time(), max_skew_s=60, keys=sigv4.SigningKeys(),
    )  # fmt: skip


def test_invoke_stream_sends_the_chunk_type_as_x_amzn_bedrock_accept(
    recorder: tuple[Recorder, ServerThread], gateway: ServerThread, make_client: ClientFactory
) -> None:
    reply = make_client(gateway.url).invoke_model_with_response_stream(
        modelId="claude-sonnet", body=json.dumps(messages_body()), accept="application/json"
    )
    assert [json.loads(e["chunk"]["bytes"]) for e in reply["body"]] == [{}]
    raw_path, headers, _ = recorder[0].requests[-1]
    assert raw_path.endswith(b"/invoke-with-response-stream")
    assert headers["x-amzn-bedrock-accept"] == ["application/json"]
    assert headers.get("accept", ["*/*"]) == ["*/*"]  # aiohttp's default, unsigned; not ours
    assert "accept" not in sigv4.parse_authorization(headers["authorization"][0]).signed_headers
