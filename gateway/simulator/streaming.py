"""The streaming model operations over ASGI: frames sent as they are generated, paced by the
latency model, and the reservation settled at the end, or at the tokens already sent when the
client goes away or the stream is cut short (a ``reset`` fault ends the response half-way
through the output, without its end, so the server closes the connection)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from gateway.asgi import until_disconnect
from gateway.errors import Headers
from gateway.simulator.admission import Admitted, Sim, admit
from gateway.simulator.asgi import Receive, Scope, Send
from gateway.simulator.events import (
    Answer,
    Step,
    anthropic_steps,
    converse_steps,
    exception_frame,
    with_faults,
)

_log = logging.getLogger(__name__)


class _Progress:
    """Output tokens the client has received so far: the count settled if the stream stops."""

    tokens = 0


async def stream_operation(
    sim: Sim,
    scope: Scope,
    receive: Receive,
    send: Send,
    body: bytes,
    model: str,
    op: str,
    request_id: str,
) -> None:
    admitted = admit(sim, scope, body, model, op)  # errors here still get a plain HTTP error
    progress = _Progress()

    def settle() -> None:  # idempotent: the first call wins
        admitted.settle(sim.clock(), progress.tokens)

    try:
        steps = _steps(sim, admitted, op)
        cut_at = admitted.output_tokens // 2 if admitted.cut else None
        frames = _produce(send, _headers(op, request_id), steps, progress, settle, cut_at)
        worker = await until_disconnect(receive, frames)
        if not worker.cancelled() and worker.exception() is not None:
            _log.error("simulator stream failed", exc_info=worker.exception())
    finally:
        settle()


def _steps(sim: Sim, admitted: Admitted, op: str) -> Iterator[Step]:
    answer = Answer(
        model=admitted.model,
        input_tokens=admitted.call.input_tokens,
        output_tokens=admitted.output_tokens,
        capped=admitted.capped,
        ttft_s=admitted.ttft_s,
        token_s=admitted.token_s,
    )

    def elapsed_ms() -> int:
        return round((sim.clock() - admitted.started) * 1000)

    make = anthropic_steps if op == "invoke-with-response-stream" else converse_steps
    directives = admitted.directives
    return with_faults(make(answer, elapsed_ms), directives.stream_error, directives.stream_bad_crc)


def _headers(op: str, request_id: str) -> Headers:
    headers = [
        (b"content-type", b"application/vnd.amazon.eventstream"),
        (b"x-amzn-requestid", request_id.encode()),
    ]
    if op == "invoke-with-response-stream":
        headers.append((b"x-amzn-bedrock-content-type", b"application/json"))
    return headers


async def _produce(
    send: Send,
    headers: Headers,
    steps: Iterator[Step],
    progress: _Progress,
    settle: Callable[[], None],
    cut_at: int | None = None,
) -> None:
    """``cut_at``: stop without ending the response once this many output tokens are sent."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        for step in steps:
            if step.delay > 0:
                await asyncio.sleep(step.delay)
            await send({"type": "http.response.body", "body": step.frame, "more_body": True})
            progress.tokens = step.tokens
            if cut_at is not None and step.tokens >= cut_at:
                return
    except OSError:  # the client is gone (some servers raise, uvicorn drops the bytes)
        return
    except Exception:
        # The status line has gone out: the only way left to report a bug is in-stream.
        _log.exception("simulator bug mid-stream")
        frame = exception_frame("internalServerException", "The simulator failed mid-stream.")
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    # Settled before the stream ends, so a client that has seen the end sees settled stats.
    settle()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
