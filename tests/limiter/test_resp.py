"""The pipelining Redis connection: reply parsing, ordering, timeouts, reconnects, both loops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from gateway.limiter.core import Admitted, Charge, Plan, window_bucket
from gateway.limiter.redis_store import RedisStore, StoreUnavailable, parse_redis_url
from gateway.limiter.resp import Address, ConnectionLost, Pipe, RespError, _Incomplete, parse
from tests.servers import RedisServer

LOOPS: dict[str, Callable[[Awaitable[Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b":42\r\n", 42), (b"$3\r\nabc\r\n", b"abc"), (b"$-1\r\n", None), (b"+PONG\r\n", b"PONG"),
     (b"*3\r\n:1\r\n$2\r\nhi\r\n*1\r\n:-7\r\n", [1, b"hi", [-7]]), (b"*0\r\n", [])],
)  # fmt: skip
def test_parse_replies(raw: bytes, value: Any) -> None:
    assert parse(raw, 0) == (value, len(raw))


def test_parse_error_reply() -> None:
    error, _ = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(error, RespError)
    assert str(error).startswith("NOSCRIPT")


@pytest.mark.parametrize("raw", [b":4", b"$3\r\nab", b"*2\r\n:1\r\n", b"$3\r\nabc\r"])
def test_parse_waits_for_the_whole_reply(raw: bytes) -> None:
    with pytest.raises(_Incomplete):
        parse(raw, 0)


def test_redis_urls() -> None:
    assert parse_redis_url("rediss://u:p%40ss@cache.internal:6380/3") == Address(
        "cache.internal", 6380, 3, "u", "p@ss", True
    )
    assert parse_redis_url("redis://127.0.0.1") == Address("127.0.0.1", 6379)
    with pytest.raises(ValueError, match="scheme"):
        parse_redis_url("http://x")


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_replies_reach_their_callers(redis_server: RedisServer, loop: str) -> None:
    async def run() -> list[Any]:
        pipe = Pipe(parse_redis_url(redis_server.url), timeout_s=2)
        await pipe.call("DEL", "counter")
        results = await asyncio.gather(*(pipe.call("INCR", "counter") for _ in range(200)))
        pipe.close()
        return results

    assert LOOPS[loop](run()) == list(range(1, 201))  # in order, one reply per caller


@pytest.mark.parametrize("loop", LOOPS)
def test_error_replies_fail_only_their_call(redis_server: RedisServer, loop: str) -> None:
    async def run() -> Any:
        pipe = Pipe(parse_redis_url(redis_server.url), timeout_s=2)
        bad, good = await asyncio.gather(pipe.call("NOSUCHCOMMAND"), pipe.call("PING"),
                                         return_exceptions=True)  # fmt: skip
        pipe.close()
        return bad, good

    bad, good = LOOPS[loop](run())
    assert isinstance(bad, RespError)
    assert good == b"PONG"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_silent_server_times_out(loop: str) -> None:
    """A server that accepts and never answers: the call fails after the timeout, not never."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def run() -> None:
            pipe = Pipe(Address("127.0.0.1", port), timeout_s=0.2)
            with pytest.raises(ConnectionLost, match="no reply within"):
                await asyncio.wait_for(pipe.call("PING"), 5)

        LOOPS[loop](run())


@pytest.mark.parametrize("loop", LOOPS)
def test_the_store_survives_a_redis_restart(loop: str) -> None:
    """Connection lost → StoreUnavailable; Redis back (scripts gone) → reconnect and reload."""
    server = RedisServer().start()
    bucket = window_bucket("{t}:r", 10, window_ms=60_000, slot_ms=1000, margin_ms=0, label="t")

    async def run() -> None:
        store = RedisStore.from_url(server.url, timeout_s=1)
        assert isinstance(await store.admit(Plan("a", (Charge(bucket, 1),))), Admitted)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.admit(Plan("b", (Charge(bucket, 1),)))
        server.port_restart()
        assert isinstance(await store.admit(Plan("c", (Charge(bucket, 1),))), Admitted)
        await store.close()

    try:
        LOOPS[loop](run())
    finally:
        server.stop()
