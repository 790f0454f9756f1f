"""Redis Cluster: the master serving the gateway's hash slot, followed through resharding and
failover.

Every key of one gateway is ``{prefix}:…``, so all of them live in one hash slot, on one master
at a time, and every script's keys are in that slot. The link reads the slot map once
(``CLUSTER SLOTS``, from a seed node or any node it has met), sends the first command to the
master of its key's slot, and from then on sends every command to that master: nothing is
computed per request. A ``-MOVED`` answer (the slot was resharded, or a replica took over) makes
the node it names the one used from then on, and the call goes there again; ``-ASK`` (the slot
is being migrated and this key has left already) sends ``ASKING`` and the call to the node
named, that once. A lost connection, or ``-CLUSTERDOWN`` / ``-TRYAGAIN`` / ``-LOADING``, fails
the call with ``ConnectionLost`` (a store outage, failover.py) and the next call reads the slot
map again.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable
from dataclasses import replace

from gateway.limiter.resp import Address, ConnectionLost, Pipe, Reply, RespError

SLOTS = 16384
MAX_REDIRECTS = 5
_KEYLESS = frozenset({"PING", "SCRIPT", "ROLE", "CLUSTER", "INFO", "TIME"})
Node = tuple[str, int]


def hash_slot(key: bytes) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its ``{tag}`` if it has one."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


def _raw(arg: bytes | str | int) -> bytes:
    return arg if isinstance(arg, bytes) else str(arg).encode()


def first_key(args: tuple[bytes | str | int, ...]) -> bytes | None:
    """The first key of a command the stores send (``None``: it has none)."""
    name = _raw(args[0]).decode().upper()
    if name in ("EVAL", "EVALSHA"):
        return _raw(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return _raw(args[1])


def _redirect(error: RespError, asked: Node) -> tuple[bool, Node] | None:
    """(is it ASK, the node) of a ``-MOVED slot host:port`` / ``-ASK …`` answer."""
    kind, _, rest = str(error).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    host, _, port = rest.partition(" ")[2].rpartition(":")
    return kind == "ASK", (host or asked[0], int(port))


def parse_slots(reply: Reply, asked: Node) -> list[tuple[int, int, Node]]:
    """``CLUSTER SLOTS`` as (first slot, last slot, master); an unknown host is the one asked."""
    ranges = []
    for entry in reply if isinstance(reply, list) else []:
        start, end, master = entry[0], entry[1], entry[2]
        host = master[0].decode()
        ranges.append((int(start), int(end), (asked[0] if host in ("", "?") else host,
                                              int(master[1]))))  # fmt: skip
    return ranges


class ClusterLink:
    def __init__(
        self, seeds: tuple[Node, ...], address: Address, timeout_s: float,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self._seeds = list(seeds)
        self._address = address
        self._timeout_s = timeout_s
        self._clock = clock
        self._pipes: dict[Node, Pipe] = {}
        self._current: Pipe | None = None
        self._finding: asyncio.Lock | None = None

    @property
    def node(self) -> Node | None:
        """The master every command goes to now (for logs and tests)."""
        current = self._current
        return None if current is None else (current.address.host, current.address.port)

    async def call(self, *args: bytes | str | int) -> Reply:
        pipe = self._current or await self._route(args)
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                return await (pipe.call_asking(*args) if asking else pipe.call(*args))
            except RespError as exc:
                redirect = _redirect(exc, (pipe.address.host, pipe.address.port))
                if redirect is None:
                    raise
                asking, node = redirect
                pipe = self._pipe(node)
                if not asking:
                    self._current = pipe
            except ConnectionLost:
                if self._current is pipe:
                    self._current = None  # read the slot map again
                raise
        raise ConnectionLost(f"still redirected after {MAX_REDIRECTS} tries")

    def _pipe(self, node: Node) -> Pipe:
        pipe = self._pipes.get(node)
        if pipe is None:
            address = replace(self._address, host=node[0], port=node[1])
            pipe = self._pipes[node] = Pipe(address, self._timeout_s, self._clock)
        return pipe

    async def _route(self, args: tuple[bytes | str | int, ...]) -> Pipe:
        if self._finding is None:
            self._finding = asyncio.Lock()
        async with self._finding:
            if self._current is not None:
                return self._current
            ranges = await self._slot_map()
            key = first_key(args)
            slot = None if key is None else hash_slot(key)
            for start, end, node in ranges:
                if slot is None or start <= slot <= end:
                    self._current = self._pipe(node)
                    return self._current
            raise ConnectionLost(f"no Cluster node serves slot {slot}")

    async def _slot_map(self) -> list[tuple[int, int, Node]]:
        problems = []
        for node in dict.fromkeys([*self._seeds, *self._pipes]):
            try:
                ranges = parse_slots(await self._pipe(node).call("CLUSTER", "SLOTS"), node)
            except (ConnectionLost, RespError) as exc:
                problems.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            if ranges:
                return ranges
            problems.append(f"{node[0]}:{node[1]}: no slots assigned")
        raise ConnectionLost(f"no Cluster node gave the slot map: {'; '.join(problems)}")

    def close(self) -> None:
        self._current = None
        for pipe in self._pipes.values():
            pipe.close()
