"""The few ASGI primitives the simulator needs beyond the gateway's own (gateway/api/asgi.py):
a header lookup, whole JSON responses, and answering the lifespan protocol."""

from __future__ import annotations

from gateway.api.asgi import ClientDisconnected, Receive, Scope, Send, read_body
from gateway.errors import Headers

__all__ = ["MAX_BODY", "ClientDisconnected", "Receive", "Scope", "Send", "read_body"]

MAX_BODY = 25_000_000  # InvokeModel's modelled body limit (docs/bedrock.md §1)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), if any."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def send_response(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_headers(request_id: str, body: bytes) -> Headers:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-amzn-requestid", request_id.encode()),
    ]


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Nothing to open or close: the simulator's state lives in the app object."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
