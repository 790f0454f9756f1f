"""``bedrock-gateway serve`` as deployed: HTTP/1.1 and HTTP/2 on one port (granian), cleartext
and TLS, several workers, graceful shutdown; and the HTTP/1.1-only uvicorn choice."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import BEARER, ENVIRON, KEY_ID, SECRET, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

SLOW = "slow [sim:output_tokens=40] [sim:token_ms=50]"  # 10 deltas, 200 ms apart
STREAM_BODY = orjson.dumps({"messages": [{"role": "user", "content": [{"text": SLOW}]}]})


def issue_cert(directory: Path) -> tuple[str, str, str]:
    """(certfile, keyfile, cafile) for 127.0.0.1 from a throwaway CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = tuple(str(directory / name) for name in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(paths[0])
    cert.private_key_pem.write_to_path(paths[1])
    ca.cert_pem.write_to_path(paths[2])
    return paths


def signed(url: str, body: bytes) -> dict[str, str]:
    request = AWSRequest("POST", url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "bedrock", "us-east-1").add_auth(request)
    return dict(request.headers)


def stream_over_http2(base_url: str, verify: Any = True) -> tuple[str, float, float, bytes]:
    """ConverseStream with an HTTP/2-only client: (protocol, first-bytes s, total s, body)."""
    url = f"{base_url}/model/claude-sonnet/converse-stream"
    with httpx.Client(http1=False, http2=True, verify=verify, timeout=30) as client:
        started = time.perf_counter()
        with client.stream("POST", url, content=STREAM_BODY,
                           headers=signed(url, STREAM_BODY)) as reply:  # fmt: skip
            assert reply.status_code == 200, reply.read()
            pieces = reply.iter_raw()
            first = next(pieces)
            first_at = time.perf_counter() - started
            body = first + b"".join(pieces)
        return reply.http_version, first_at, time.perf_counter() - started, body


def test_one_port_serves_http1_and_cleartext_http2(
    simulator: ServerThread, make_client: ClientFactory
) -> None:
    with GatewayProcess(gateway_settings(simulator.url), ENVIRON) as gateway:
        reply = make_client(gateway.url).converse(  # boto3: HTTP/1.1
            modelId="claude-sonnet",
            messages=[{"role": "user", "content": [{"text": "hi [sim:output_tokens=3]"}]}],
        )
        assert reply["usage"]["outputTokens"] == 3
        protocol, first, total, body = stream_over_http2(gateway.url)  # prior knowledge
    assert protocol == "HTTP/2"
    assert b"metadata" in body
    assert total >= 1.9  # 10 deltas 200 ms apart…
    assert first < 0.5  # …and the first frame came through at once: nothing buffered


def test_tls_negotiates_h2_by_alpn_and_still_serves_http1(
    simulator: ServerThread, make_client: ClientFactory, tmp_path: Path, monkeypatch: Any
) -> None:
    certfile, keyfile, cafile = issue_cert(tmp_path)
    settings = gateway_settings(simulator.url, tls={"certfile": certfile, "keyfile": keyfile})
    with GatewayProcess(settings, ENVIRON, cafile=cafile) as gateway:
        trust = ssl.create_default_context(cafile=cafile)
        protocol, first, total, body = stream_over_http2(gateway.url, verify=trust)
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", BEARER)  # bearer: HTTPS only in botocore
        reply = make_client(gateway.url, verify=cafile).converse(
            modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
    assert protocol == "HTTP/2"
    assert first < total / 2
    assert b"metadata" in body
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_workers_finish_a_stream_in_flight_on_sigterm(
    simulator: ServerThread, make_client: ClientFactory, redis_server: RedisServer
) -> None:
    settings = gateway_settings(simulator.url, workers=2)
    # Two workers share their quotas through Redis (the memory store is refused for them).
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url}
    gateway = GatewayProcess(settings, ENVIRON).start()
    events: list[str] = []
    started = threading.Event()

    def read_stream() -> None:
        reply = make_client(gateway.url).converse_stream(
            modelId="claude-sonnet",
            messages=[{"role": "user", "content": [{"text": SLOW}]}],
        )
        for event in reply["stream"]:
            events.extend(event)
            started.set()

    reader = threading.Thread(target=read_stream)
    try:
        reader.start()
        assert started.wait(10)
        gateway.terminate()  # mid-stream
        reader.join(timeout=20)
        code = gateway.stop()
    finally:
        gateway.stop()
    assert events[-1] == "metadata"  # the stream ran to its end
    assert code == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.url}/health/live")


def _read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length (its head and body may come in
    separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_h1_serves_http1_only_with_uvicorn(
    simulator: ServerThread, make_client: ClientFactory
) -> None:
    settings = gateway_settings(simulator.url, http="h1", keep_alive_s=1)
    with GatewayProcess(settings, ENVIRON) as gateway:
        reply = make_client(gateway.url).converse(
            modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
        assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
        with pytest.raises(httpx.HTTPError):
            stream_over_http2(gateway.url)
        # an idle kept-alive connection is closed after server.keep_alive_s
        port = int(gateway.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /health/live HTTP/1.1\r\nhost: gateway\r\n\r\n")
            assert _read_response(conn).startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            assert conn.recv(65536) == b""  # the gateway closed it
            assert 0.9 <= time.monotonic() - answered < 5
