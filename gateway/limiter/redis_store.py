"""The Redis store: the limiter core as two Lua scripts, one round trip to admit, one to settle.

The only module that imports ``redis``. Scripts are package data, sent once and then run by
SHA (redis-py reloads them on NOSCRIPT). Redis's failures become ``StoreUnavailable`` here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.limiter.core import Admitted, Charge, Decision, Denied, Plan


class StoreUnavailable(Exception):
    """The shared store did not answer; the limiter decides what that means."""


def _script(name: str) -> str:
    return resources.files("gateway.limiter").joinpath("lua", name).read_text(encoding="utf-8")


def encode_admit(plan: Plan, now_ms: int | None) -> tuple[list[str], list[Any]]:
    groups = plan.groups()
    keys: list[str] = []
    specs: list[Any] = []
    for group in groups:
        for charge in group:
            bucket = charge.bucket
            keys.append(bucket.key)
            specs += (int(bucket.kind), bucket.limit, charge.cost, bucket.a, bucket.b)
    head: list[Any] = ["" if now_ms is None else now_ms, plan.member, len(groups)]
    return keys, head + [len(g) for g in groups] + specs


def encode_settle(
    charges: tuple[Charge, ...], member: str, admitted: Admitted, delta: int, now_ms: int | None
) -> tuple[list[str], list[Any]]:
    keys = [c.bucket.key for c in charges]
    args: list[Any] = ["" if now_ms is None else now_ms, member, admitted.now_ms]
    for charge in charges:
        bucket = charge.bucket
        args += (int(bucket.kind), bucket.a, bucket.b, delta if charge.settles else 0)
    return keys, args


class RedisStore:
    name = "redis"

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._admit = client.register_script(_script("admit.lua"))
        self._settle = client.register_script(_script("settle.lua"))

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> RedisStore:
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, retry_on_timeout=False,
        )  # fmt: skip
        return cls(client)

    async def admit(self, plan: Plan, now_ms: int | None = None) -> Decision:
        keys, args = encode_admit(plan, now_ms)
        reply = await self._call(self._admit, keys, args)
        if int(reply[0]) == 1:
            return Admitted(int(reply[1]), int(reply[2]))
        wait = int(reply[1])
        flat = [c.bucket for group in plan.groups() for c in group]
        return Denied(None if wait < 0 else wait, flat[int(reply[2]) - 1])

    async def settle(
        self, plan: Plan, admitted: Admitted, delta: int, now_ms: int | None = None
    ) -> None:
        charges = plan.committed(admitted.alternative)
        keys, args = encode_settle(charges, plan.member, admitted, delta, now_ms)
        await self._call(self._settle, keys, args)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
