"""The Redis store: the limiter core as two Lua scripts, one round trip to admit, one to settle.

Scripts are package data, run by SHA and sent whole (``EVAL``, which caches them) when Redis
answers NOSCRIPT (after a restart, a failover or SCRIPT FLUSH; on a Cluster node the slot just
moved to). Calls go over a ``resp.Link``: one server's pipelining connection, measured at a
fraction of redis-py's CPU per call (docs/benchmarks.md), or the Sentinel or Cluster link built
on it (topology.py). Its failures become ``StoreUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from importlib import resources
from typing import Any

from gateway.limiter import core
from gateway.limiter.adaptive import Aimd, State
from gateway.limiter.core import (
    Admitted,
    Bucket,
    Charge,
    Decision,
    Denied,
    Plan,
    Tally,
    WindowView,
)
from gateway.limiter.resp import Address, ConnectionLost, Link, RespError
from gateway.limiter.store import StoreUnavailable
from gateway.limiter.topology import open_link, parse_topology


def _lua(name: str) -> str:
    return resources.files("gateway.limiter").joinpath("lua", name).read_text(encoding="utf-8")


def _script(name: str, prelude: str | None = None) -> str:
    """A script's text, after the shared prelude it builds on (a script runs as one unit)."""
    return (_lua(prelude) + "\n" if prelude else "") + _lua(name)


def encode_admit(plan: Plan, now_ms: int | None) -> tuple[list[str], list[Any]]:
    groups = plan.groups()
    keys: list[str] = []
    specs: list[Any] = []
    for group in groups:
        for charge in group:
            bucket = charge.bucket
            keys.append(bucket.key)
            specs += (int(bucket.kind), bucket.limit, charge.cost, bucket.step, bucket.span)
    head: list[Any] = ["" if now_ms is None else now_ms, plan.member, len(groups)]
    watch = [len(plan.watch), *(i + 1 for i in plan.watch)]
    return keys, head + [len(g) for g in groups] + specs + watch


def encode_settle(
    charges: tuple[Charge, ...], member: str, admitted: Admitted, delta: int, now_ms: int | None,
    spend: int = 0, tally: Tally | None = None,
) -> tuple[list[str], list[Any]]:  # fmt: skip
    keys = [c.bucket.key for c in charges]
    args: list[Any] = ["" if now_ms is None else now_ms, member, admitted.now_ms, len(charges)]
    for charge in charges:
        bucket = charge.bucket
        args += (int(bucket.kind), bucket.step, bucket.span, charge.delta(delta, spend))
    for key, ttl_ms, fields in tally.counts if tally else ():
        keys.append(key)
        args += (ttl_ms, len(fields))
        for field, amount in fields:
            args += (field, amount)
    return keys, args


def _state(value: bytes) -> State:
    factor, since = value.decode().split(",")
    return float(factor), float(since)


class _Script:
    def __init__(self, name: str, prelude: str | None = None) -> None:
        self.text = _script(name, prelude)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


def parse_redis_url(url: str) -> Address:
    """How to reach a data node of the Redis ``url`` names (topology.py lists the forms)."""
    return parse_topology(url).address


class RedisStore:
    name = "redis"

    def __init__(self, pipe: Link) -> None:
        self._pipe = pipe
        self._admit = _Script("admit.lua", "common.lua")
        self._settle = _Script("settle.lua", "common.lua")
        self._seed = _Script("seed.lua", "common.lua")
        self._adapt = _Script("adapt.lua", "common.lua")
        self._calibrate = _Script("calibrate.lua", "common.lua")

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> RedisStore:
        return cls(open_link(url, timeout_s))

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision:
        keys, args = encode_admit(plan, now_ms)
        reply = await self._call(self._admit, keys, args)
        if int(reply[0]) == 1:
            remaining = int(reply[3])
            return Admitted(int(reply[1]), int(reply[2]), None if remaining < 0 else remaining)
        wait = int(reply[1])
        flat = [c.bucket for group in plan.groups() for c in group]
        views, at = [], 5
        for index in plan.watch:
            bucket = flat[index]
            slots = tuple(int(v) for v in reply[at : at + bucket.span])
            views.append(WindowView(bucket.limit, bucket.slot_ms, bucket.span, slots))
            at += bucket.span
        used = int(reply[4])
        return Denied(None if wait < 0 else wait, flat[int(reply[2]) - 1], int(reply[3]),
                      tuple(views), None if used < 0 else used)  # fmt: skip

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None, *,
        spend: int = 0, tally: Tally | None = None,
    ) -> None:  # fmt: skip
        charges = plan.committed(admitted.alternative)
        keys, args = encode_settle(charges, plan.member, admitted, delta, now_ms, spend, tally)
        await self._call(self._settle, keys, args)

    async def tallies(self, keys: list[str]) -> list[dict[str, int]]:
        """The counters of each tally hash (one pipelined round trip; {} for a missing key)."""
        if not keys:
            return []
        try:
            replies = await asyncio.gather(*(self._pipe.call("HGETALL", k) for k in keys))
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        found = []
        for reply in replies:
            assert isinstance(reply, list)
            found.append({f.decode(): int(v) for f, v in zip(reply[::2], reply[1::2],
                                                             strict=True)})  # fmt: skip
        return found

    async def add_tally(self, tally: Tally) -> None:
        """Add to tally hashes outside a settlement (refusals; what an outage held back)."""
        try:
            calls = []
            for key, ttl_ms, fields in tally.counts:
                calls += [self._pipe.call("HINCRBY", key, f, n) for f, n in fields]
                calls.append(self._pipe.call("PEXPIRE", key, ttl_ms))
            await asyncio.gather(*calls)
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def adapt(
        self, key: str, pool: str, aimd: Aimd, window: Bucket | None, now_ms: int | None = None
    ) -> State:
        """Record an upstream throttle on ``pool`` whose per-minute window is ``window``
        (see adaptive.py); the pool's shared (factor, since) after it."""
        keys = [key] if window is None else [key, window.key]
        args: list[Any] = ["" if now_ms is None else now_ms, pool, aimd.decrease,
                           aimd.recovery_per_s, aimd.floor, aimd.cooldown_s, aimd.target,
                           aimd.hold_s]  # fmt: skip
        if window is not None:
            args += (window.limit, window.slot_ms, window.span)
        return _state(await self._call(self._adapt, keys, args))

    async def learned(self, key: str) -> dict[str, State]:
        """Every pool's shared (factor, since)."""
        try:
            reply = await self._pipe.call("HGETALL", key)
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        assert isinstance(reply, list)
        return {field.decode(): _state(value) for field, value in zip(reply[::2], reply[1::2],
                                                                        strict=True)}  # fmt: skip

    async def calibrate(
        self, keys: list[str], pending: list[dict[int, int]], slot_ms: int, retain_slots: int,
        now_ms: int | None = None,
    ) -> tuple[int, list[dict[int, dict[int, int]]]]:  # fmt: skip
        """Add ``pending`` ({bin: count}, one per key) to the current slot of each key's
        calibration histogram; the current slot and every histogram after it."""
        args: list[Any] = ["" if now_ms is None else now_ms, slot_ms, retain_slots]
        for bins in pending:
            args.append(len(bins))
            for bin_, count in bins.items():
                args += (bin_, count)
        reply = await self._call(self._calibrate, keys, args)
        histograms = []
        for flat in reply[1:]:
            histogram: dict[int, dict[int, int]] = {}
            for field, value in zip(flat[::2], flat[1::2], strict=True):
                slot, bin_ = field.split(b":")
                histogram.setdefault(int(slot), {})[int(bin_)] = int(value)
            histograms.append(histogram)
        return int(reply[0]), histograms

    async def seed(self, windows: list[tuple[Bucket, dict[int, int]]],
                   now_ms: int | None = None) -> int:  # fmt: skip
        """Add ``windows`` ({slot: amount} per window bucket, what this replica admitted) to the
        shared windows (a rejoin after an outage, failover.py); the slots added."""
        args: list[Any] = ["" if now_ms is None else now_ms]
        for bucket, slots in windows:
            args += (bucket.slot_ms, bucket.span, len(slots))
            for slot, amount in slots.items():
                args += (slot, amount)
        return int(await self._call(self._seed, [b.key for b, _ in windows], args))

    async def ping(self) -> bool:
        try:
            return await self._pipe.call("PING") == b"PONG"
        except (ConnectionLost, RespError):
            return False

    async def close(self) -> None:
        self._pipe.close()

    async def _call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                return await self._pipe.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            # EVAL, not SCRIPT LOAD: it has keys, so a Cluster sends it where they are
            return await self._pipe.call("EVAL", script.text, len(keys), *keys, *args)
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def used(self, bucket: Bucket, now_ms: int | None = None) -> int:
        """What a window or period bucket holds now, read without changing it (the metrics'
        gauges; ``now_ms`` defaults to this process's clock, close enough for a gauge)."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        try:
            reply = await self._pipe.call("HGETALL", bucket.key)
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        assert isinstance(reply, list)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        if bucket.kind == core.Kind.PERIOD:
            current = fields.get(b"p") == str(core.period_of(now, bucket.period)).encode()
            return int(fields.get(b"t", 0)) if current else 0
        first = now // bucket.slot_ms - bucket.span + 1
        return sum(int(v) for f, v in fields.items() if f.isdigit() and int(f) >= first)
