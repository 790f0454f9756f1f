"""Redis Sentinel: the master of a named set, found by asking its sentinels, and found again
after a failover.

The link asks the sentinels in turn (``SENTINEL get-master-addr-by-name``) where the master is,
checks with ``ROLE`` that the node there answers as a master (a sentinel may not have seen a
failover yet), and sends every command to it over one ``resp.Pipe``. Once that connection is
lost, or the node answers that it cannot take writes (``-READONLY``: a failover made it a
replica; ``-LOADING``; ``-MASTERDOWN``: ``resp.Unavailable``), the sentinels are asked again.
A failover that leaves the old master up (``SENTINEL FAILOVER``, a partition) would not drop
the connection until the sentinels demote it, seconds later, while it takes writes the new one
never sees: so one background task (``watch_switches``) stays subscribed to a sentinel's
``+switch-master`` and sends the next call to the sentinels the moment one is announced.

A switch-over is a short store outage, never a silent change of store: the call that finds a
different master than before fails with ``ConnectionLost`` like the calls the old one dropped.
The new master may lack the old one's last writes (replication is asynchronous); the rejoin
after an outage (failover.py) adds this replica's last window to it, which covers them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import replace

from gateway.limiter.resp import (
    Address,
    ConnectionLost,
    Pipe,
    Reply,
    RespError,
    auth_command,
    encode,
    take_replies,
)

_PING_AFTER_S = 5.0
"""A quiet subscription is pinged after this long, and given up after twice as long."""


class SentinelLink:
    def __init__(
        self, sentinels: tuple[tuple[str, int], ...], master: str, address: Address,
        timeout_s: float, clock: Callable[[], float],
        sentinel_auth: tuple[str | None, str | None] = (None, None),
    ) -> None:  # fmt: skip
        # The sentinels are asked with their own credentials, if any, not the master's.
        username, password = sentinel_auth
        plain = replace(address, db=0, username=username, password=password)
        self._sentinels = [Pipe(replace(plain, host=h, port=p), timeout_s, clock)
                           for h, p in sentinels]  # fmt: skip
        self._name = master
        self._address = address
        self._timeout_s = timeout_s
        self._clock = clock
        self._pipe: Pipe | None = None
        self._finding: asyncio.Lock | None = None
        self._watch: asyncio.Task[None] | None = None
        self.master: tuple[str, int] | None = None
        """Where the master was last found (for logs and tests)."""
        self.switches = 0
        """``+switch-master`` announcements seen for this master."""

    async def call(self, *args: bytes | str | int) -> Reply:
        pipe = self._pipe
        if pipe is None or not pipe.connected:  # never reconnect blindly to where it was
            pipe = await self._find()
        try:
            return await pipe.call(*args)
        except ConnectionLost:
            self._forget(pipe)
            raise

    def _forget(self, pipe: Pipe) -> None:
        if self._pipe is pipe:
            self._pipe = None
            pipe.close()

    def switched(self) -> None:
        """A sentinel announced a new master: calls in flight on the old one fail, and the next
        call asks where it is (and fails as an outage when it has moved)."""
        self.switches += 1
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    async def _find(self) -> Pipe:
        if self._watch is None:  # owned by this link; cancelled in close()
            self._watch = asyncio.get_running_loop().create_task(self._watch_switches())
        if self._finding is None:
            self._finding = asyncio.Lock()
        async with self._finding:
            if self._pipe is not None:
                if self._pipe.connected:
                    return self._pipe
                self._forget(self._pipe)
            problems: list[str] = []
            tried: set[tuple[str, int]] = set()
            for i, sentinel in enumerate(self._sentinels):
                where = f"sentinel {sentinel.address.host}:{sentinel.address.port}"
                try:
                    reply = await sentinel.call("SENTINEL", "get-master-addr-by-name", self._name)
                except (ConnectionLost, RespError) as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                if not isinstance(reply, list) or len(reply) != 2:
                    problems.append(f"{where} knows no master {self._name!r}")
                    continue
                node = (reply[0].decode(), int(reply[1]))
                if node in tried:
                    continue
                tried.add(node)
                pipe = await self._master_at(node, problems)
                if pipe is not None:
                    self._sentinels.insert(0, self._sentinels.pop(i))  # ask it first next time
                    before, self._pipe, self.master = self.master, pipe, node
                    if before not in (None, node):
                        raise ConnectionLost(
                            f"the master of {self._name!r} moved from {before[0]}:{before[1]} "
                            f"to {node[0]}:{node[1]}"
                        )
                    return pipe
            raise ConnectionLost(f"no master for {self._name!r}: {'; '.join(problems)}")

    async def _master_at(self, node: tuple[str, int], problems: list[str]) -> Pipe | None:
        pipe = Pipe(replace(self._address, host=node[0], port=node[1]), self._timeout_s,
                    self._clock)  # fmt: skip
        try:
            role = await pipe.call("ROLE")
        except (ConnectionLost, RespError) as exc:
            problems.append(f"master {node[0]}:{node[1]}: {exc}")
            pipe.close()
            return None
        if not isinstance(role, list) or role[:1] != [b"master"]:
            problems.append(f"{node[0]}:{node[1]} is not a master (yet)")
            pipe.close()
            return None
        return pipe

    async def _watch_switches(self) -> None:
        while True:
            for sentinel in list(self._sentinels):
                try:
                    await self._subscribed(sentinel.address)
                except (OSError, TimeoutError, ConnectionLost, ValueError):
                    continue  # the next sentinel
            await asyncio.sleep(1.0)  # none answers: try them again in a second

    async def _subscribed(self, address: Address) -> None:
        """Read ``+switch-master`` from one sentinel until its connection fails."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port,
                                    ssl=ssl.create_default_context() if address.tls else None),
            self._timeout_s,
        )  # fmt: skip
        try:
            if address.password is not None:
                writer.write(auth_command(address))
            writer.write(encode(("SUBSCRIBE", "+switch-master")))
            buf, quiet = bytearray(), 0
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), _PING_AFTER_S)
                except TimeoutError:
                    quiet += 1
                    if quiet > 1:
                        raise
                    writer.write(encode(("PING",)))
                    continue
                if not chunk:
                    raise ConnectionLost("sentinel closed the subscription")
                buf += chunk
                quiet = 0
                for message in take_replies(buf):
                    if isinstance(message, RespError):  # refused: AUTH, or SUBSCRIBE without it
                        raise ConnectionLost(f"sentinel refused the subscription: {message}")
                    self._on_message(message)
        finally:
            writer.close()

    def _on_message(self, message: object) -> None:
        if (isinstance(message, list) and message[:2] == [b"message", b"+switch-master"]
                and message[2].split(b" ", 1)[0].decode() == self._name):  # fmt: skip
            self.switched()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        for sentinel in self._sentinels:
            sentinel.close()
