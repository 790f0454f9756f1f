"""Stopping without dropping anything: what SIGTERM sets off in each worker process.

1. At once: ``/health/ready`` answers 503 (component ``shutdown: draining``) and every new
   data-plane request gets a ServiceUnavailableException with retry hints, and
   ``connection: close`` on HTTP/1.1, so the client's retry opens a new connection that the
   load balancer sends to another replica. The listener stays open meanwhile: a request that
   arrives before the load balancer has taken this replica out is answered, not refused.
2. What was accepted runs on: calls in flight and streams finish, queued requests wait for
   capacity as before (their deadlines are shorter than the grace period, the config checks
   it), and each settles its reservation as it ends.
3. Once nothing is admitted or queued, or ``server.shutdown_grace_s`` after the signal (the
   requests still running or queued are then cancelled: each answers a 503 if its response
   has not started, and settles), the server is asked to stop as the signal would have: it
   closes the listener, lets what is left finish within ``SERVER_TAIL_S``, and the lifespan
   closes the parts. The process exits 0.

The hot path pays nothing: the data plane is swapped for the refusal when the drain starts,
"nothing admitted or queued" is read from counts the limiter and the queues keep anyway,
polled only while draining, and the requests to cancel at the deadline are found then, among
the event loop's tasks.

Both servers install their own SIGTERM and SIGINT handlers before the app's lifespan starts.
uvicorn's is a Python signal handler: the drain takes over both signals and calls it when
done. granian's workers register one callback for both signals with the event loop, which
cannot be handed back: the drain takes over SIGTERM only and then raises SIGINT in its own
process, which granian's callback handles as the stop it would have been.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any

from gateway.asgi import ClientDisconnected, Headers, Receive, Scope, Send, read_body
from gateway.errors import GatewayError, ServiceUnavailable, new_request_id, render
from gateway.metrics import Metrics

log = logging.getLogger("gateway.shutdown")

SERVER_TAIL_S = 2.0
"""How long past the grace period the server may take to finish and exit."""
RETRY_AFTER_MS = 1000
"""The retry hint of a request refused while draining: soon, and to another replica."""
_POLL_S = 0.05


class ShuttingDown(ServiceUnavailable):
    """A request that came in while draining: retryable, with the same retry hints as a
    ThrottlingException (botocore >= 1.44 reads x-amz-retry-after in ms; the Anthropic SDK
    retry-after-ms, then Retry-After in whole seconds)."""

    def __init__(self, retry_after_ms: int = RETRY_AFTER_MS) -> None:
        super().__init__("The gateway is shutting down; retry the request.")
        self.retry_after_ms = retry_after_ms

    def extra_headers(self) -> Headers:
        ms = str(self.retry_after_ms).encode()
        seconds = str(max(1, math.ceil(self.retry_after_ms / 1000))).encode()
        return [(b"x-amz-retry-after", ms), (b"retry-after-ms", ms), (b"retry-after", seconds)]


class Refusal:
    """The data plane while draining: every request gets ``ShuttingDown``, after its body is
    read (so the client reads the answer), and on HTTP/1.1 ``connection: close``, so its retry
    opens a new connection, which the load balancer sends to another replica."""

    def __init__(self, max_body_bytes: int, metrics: Metrics) -> None:
        self._max_body = max_body_bytes
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        with contextlib.suppress(ClientDisconnected, GatewayError):
            await read_body(receive, self._max_body)
        status, headers, body = render(ShuttingDown(), new_request_id())
        if scope.get("http_version") in ("1.0", "1.1"):
            headers.append((b"connection", b"close"))
        headers.append((b"content-length", str(len(body)).encode()))
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        self._metrics.request("unknown", "unknown", "none", "unknown", "unavailable",
                              time.perf_counter() - started, None)  # fmt: skip


class Drain:
    """One worker's drain. ``idle`` says nothing is admitted or queued; ``on_start`` turns
    readiness false and refuses new requests; ``on_deadline`` ends the requests still running
    or queued when the grace period is over."""

    def __init__(
        self,
        grace_s: float,
        idle: Callable[[], bool],
        on_start: Callable[[], None],
        on_deadline: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s = grace_s
        self._idle = idle
        self._on_start = on_start
        self._on_deadline = on_deadline
        self._clock = clock
        self.draining = False
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resume: Callable[[int, float], None] | None = None

    def install(self) -> bool:
        """Take over the server's SIGTERM (and, under uvicorn, SIGINT) in this process's main
        thread; False when no server handles them here (a test's server in a thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        term, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        if not callable(term):
            return False
        if _dispatched_by(term, loop):  # granian: hand the stop back by SIGINT
            self._resume = lambda _sig, _deadline: signal.raise_signal(signal.SIGINT)
            signals = [signal.SIGTERM]
        else:  # uvicorn: its Python handler, called once the drain is done
            self._resume = _python_handler(term, interrupt)
            signals = [signal.SIGTERM, signal.SIGINT] if callable(interrupt) else [signal.SIGTERM]
        for sig in signals:
            loop.add_signal_handler(sig, self.signalled, sig)
        return True

    def signalled(self, sig: int) -> None:
        """The signal arrived (on the event loop): start draining; a second one ends the
        drain at once."""
        if self.draining:
            log.warning("second stop signal: ending the drain now")
            self._hurry.set()
            return
        self.draining = True
        self._on_start()
        log.info("draining: readiness is false, new requests are refused; stopping when "
                 "nothing is in flight or queued, within %g s", self.grace_s)  # fmt: skip
        self._task = asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        started = self._clock()
        deadline = started + self.grace_s
        while not self._idle():
            left = deadline - self._clock()
            if left <= 0 or self._hurry.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), min(_POLL_S, left))
        if not self._idle():
            log.warning("the grace period is over: cancelling the requests still in flight "
                        "or queued")  # fmt: skip
            self._on_deadline()
        log.info("drained in %.2f s: stopping the server", self._clock() - started)
        if self._resume is not None:
            self._resume(sig, max(0.0, deadline - self._clock()))


def _dispatched_by(handler: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Is ``handler`` the event loop's own dispatcher, i.e. did the server register its
    callback with ``loop.add_signal_handler``?"""
    if getattr(handler, "__self__", None) is loop:  # uvloop
        return True
    return getattr(handler, "__name__", "") == "_sighandler_noop"  # asyncio's loops


def _python_handler(term: Any, interrupt: Any) -> Callable[[int, float], None]:
    """Call the server's own handler for the signal that started the drain. uvicorn's grace
    period starts when it is called: make it what is left of the drain's, plus the tail."""

    def resume(sig: int, left_s: float) -> None:
        server = getattr(term, "__self__", None)
        config = getattr(server, "config", None)
        if config is not None and hasattr(config, "timeout_graceful_shutdown"):
            config.timeout_graceful_shutdown = left_s + SERVER_TAIL_S
        handler = interrupt if sig == signal.SIGINT and callable(interrupt) else term
        handler(sig, None)

    return resume


def cancel_requests(handler: CodeType) -> int:
    """Cancel every task of the event loop running a request, i.e. with a coroutine of
    ``handler`` in its chain of awaits; how many. (Read at the deadline only: no request pays
    for being found.)"""
    current, cancelled = asyncio.current_task(), 0
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None and task is not current:
            if getattr(coro, "cr_code", None) is handler:
                task.cancel("the grace period is over")
                cancelled += 1
                break
            coro = getattr(coro, "cr_await", None)
    return cancelled
