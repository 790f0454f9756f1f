"""A pipelining Redis connection for the limiter's hot path: a few commands, one socket.

redis-py checks a connection out of its pool for each command, packs and parses in Python and
holds the connection until the reply: about 33 µs of CPU per call on this machine, and the
limiter calls Redis twice per request. This connection sends each command without waiting for
earlier replies (Redis answers in order) and resolves a FIFO of futures from the reply stream.
The commands sent in one turn of the event loop (the admissions and settlements of every request
that turn served) go out in one write at its end: on loopback a socket write costs the sender
the receiver's work too, so one write per command was the costliest line of the hot path
(py-spy, docs/benchmarks.md), and Redis reads them in one go as well. One watchdog timer, not one
per call, fails the connection when the oldest command outlives the timeout. It speaks RESP2 and
only what the limiter needs; a ``Link`` is anything that answers calls like it (a ``Pipe``, or
the Sentinel and Cluster links built on it).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Reply = int | bytes | list[Any] | None


class RespError(Exception):
    """Redis answered with an error reply (``-ERR …``, ``-NOSCRIPT …``)."""


class ConnectionLost(Exception):
    """The connection failed, timed out or closed before the reply arrived."""


class Unavailable(ConnectionLost):
    """The server answered but cannot serve writes now: ``-READONLY`` (a master turned replica
    by a failover), ``-LOADING``, ``-MASTERDOWN``, ``-CLUSTERDOWN``, ``-TRYAGAIN``. To the
    store that is an outage like a lost connection, and a link looks for the master again."""


UNAVAILABLE = (b"READONLY", b"LOADING", b"MASTERDOWN", b"CLUSTERDOWN", b"TRYAGAIN")


class _Incomplete(Exception):
    pass


class Link(Protocol):
    """What the stores call: one command in, its reply out (``ConnectionLost`` when none)."""

    async def call(self, *args: bytes | str | int) -> Reply: ...

    def close(self) -> None: ...


def auth_command(address: Address) -> bytes:
    """``AUTH [username] password`` for ``address`` (which has a password)."""
    assert address.password is not None
    if address.username:
        return encode(("AUTH", address.username, address.password))
    return encode(("AUTH", address.password))


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply | RespError | Unavailable, int]:
    """One reply starting at ``pos``: (value, position after it). Raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        items: list[Any] = []
        for _ in range(int(line)):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        error = Unavailable if line.startswith(UNAVAILABLE) else RespError
        return error(line.decode(errors="replace")), pos
    raise ConnectionLost(f"unexpected reply type {kind!r}")


def take_replies(buf: bytearray) -> list[Reply | RespError | Unavailable]:
    """Every whole reply at the start of ``buf``, removed from it (a subscription's messages)."""
    replies, pos = [], 0
    try:
        while pos < len(buf):
            value, pos = parse(buf, pos)
            replies.append(value)
    except _Incomplete:
        pass
    del buf[:pos]
    return replies


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float, clock: Callable[[], float]) -> None:
        self._timeout_s = timeout_s
        self._clock = clock
        self._pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._buf = bytearray()
        self._transport: asyncio.WriteTransport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] | None = None
        """Commands sent in this turn of the event loop, written together at its end."""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods
        self._transport = transport  # type: ignore[assignment]

    def send(self, payload: bytes) -> asyncio.Future[Reply]:
        if self.closed or self._transport is None:
            raise ConnectionLost("connection closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((future, self._clock()))
        if self._out is None:
            self._out = [payload]
            loop.call_soon(self._flush)
        else:
            self._out.append(payload)
        if self._watchdog is None:
            self._arm()
        return future

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out and not self.closed and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        try:
            while pos < len(self._buf):
                value, pos = parse(self._buf, pos)
                future, _ = self._pending.popleft()
                if not future.done():
                    if isinstance(value, RespError | Unavailable):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except (ConnectionLost, IndexError, ValueError) as exc:
            self.abort(ConnectionLost(f"bad reply stream: {exc!r}"))
            return
        del self._buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection lost: {exc!r}" if exc else "connection closed"))

    def abort(self, error: ConnectionLost) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(error)

    def _fail(self, error: ConnectionLost) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    def _arm(self) -> None:
        oldest = self._pending[0][1]
        delay = max(0.0, oldest + self._timeout_s - self._clock())
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        if self._clock() - self._pending[0][1] >= self._timeout_s:
            self.abort(ConnectionLost(f"no reply within {self._timeout_s:g} s"))
        else:
            self._arm()


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


class Pipe:
    """One lazily (re)connected pipelining connection. ``call`` raises ``ConnectionLost``."""

    def __init__(
        self, address: Address, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._clock = clock
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def address(self) -> Address:
        return self._address

    @property
    def connected(self) -> bool:
        """Connected now (a call would not have to connect first)."""
        return self._protocol is not None and not self._protocol.closed

    async def call(self, *args: bytes | str | int) -> Reply:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(encode(args))

    async def call_asking(self, *args: bytes | str | int) -> Reply:
        """``ASKING`` and the command in one write, so no other command comes between them
        (a Cluster node migrating a slot in serves it to a client that asks first)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        asking = protocol.send(encode(("ASKING",)))
        reply = protocol.send(encode(args))
        await asyncio.gather(asking, reply, return_exceptions=True)
        await asking
        return await reply

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            address, loop = self._address, asyncio.get_running_loop()
            context = ssl.create_default_context() if address.tls else None
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Protocol(self._timeout_s, self._clock),
                        address.host, address.port, ssl=context,
                    ),
                    self._timeout_s,
                )  # fmt: skip
            except (OSError, TimeoutError) as exc:
                raise ConnectionLost(f"cannot connect to {address.host}:{address.port}: "
                                     f"{exc!r}") from exc  # fmt: skip
            await self._handshake(protocol)
            self._protocol = protocol
            return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        address = self._address
        if address.password is not None:
            await protocol.send(auth_command(address))
        if address.db:
            await protocol.send(encode(("SELECT", address.db)))

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.abort(ConnectionLost("closed by the gateway"))
            self._protocol = None
