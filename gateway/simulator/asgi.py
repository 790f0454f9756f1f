"""The few ASGI primitives the simulator needs beyond the gateway's own (gateway/asgi.py):
a header lookup, whole JSON responses, responses cut short, and answering the lifespan
protocol."""

from __future__ import annotations

from gateway.asgi import ClientDisconnected, Receive, Scope, Send, read_body
from gateway.errors import Headers

__all__ = [
    "MAX_BODY", "ClientDisconnected", "CutShort", "Receive", "Scope", "Send", "read_body",
]  # fmt: skip

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


class CutShort(Exception):
    """A response to break off half-way (a ``reset`` fault): raised by the operation, sent
    by the app with ``send_cut_short``."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


async def send_cut_short(send: Send, cut: CutShort) -> None:
    """The status, the headers (the full content-length) and half the body, then return
    without ending the response: the server closes the connection mid-response."""
    await send({"type": "http.response.start", "status": cut.status, "headers": cut.headers})
    half = cut.body[: len(cut.body) // 2]
    await send({"type": "http.response.body", "body": half, "more_body": True})


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
