"""The tenant store in Redis, over the limiter's link (``resp.Link``: one server, Sentinel or
Cluster; gateway/limiter/topology.py).

Keys, all in the ``{prefix}`` hash slot: ``{p}:tenants`` (hash: id → record JSON),
``{p}:tenants:version`` (bumped by every write; replicas poll it), ``{p}:tenants:config``
(the config generation, bumped by every config reload), ``{p}:tenants:audit``
(sorted set scored by version), ``{p}:tenants:deleted`` (set) and ``{p}:tenants:used`` (hash:
credential id → last use, Unix seconds). A write is one Lua script (``lua/write.lua``).
Connection failures become ``StoreUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from gateway.limiter.resp import ConnectionLost, Link, RespError
from gateway.limiter.store import StoreUnavailable
from gateway.limiter.topology import open_link
from gateway.tenancy.model import AuditEntry, TenantRecord
from gateway.tenancy.store import Snapshot, StaleRevision, Write

_WRITE = resources.files("gateway.tenancy").joinpath("lua", "write.lua").read_text("utf-8")
_WRITE_SHA = hashlib.sha1(_WRITE.encode()).hexdigest()
# A config reload: bump the generation and the version, and audit it under the new version.
_SIGNAL = """
local v = redis.call('INCR', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], v, '{"seq":' .. v .. ',' .. string.sub(ARGV[1], 2))
return v
"""


class RedisTenantStore:
    def __init__(self, pipe: Link, prefix: str, retain: int = 10_000) -> None:
        self._pipe = pipe
        base = f"{{{prefix}}}:tenants"
        self._hash, self._version = base, f"{base}:version"
        self._audit, self._deleted, self._used = f"{base}:audit", f"{base}:deleted", f"{base}:used"
        self._config = f"{base}:config"
        self._retain = retain

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float, retain: int) -> RedisTenantStore:
        return cls(open_link(url, timeout_s), prefix, retain)

    async def version(self) -> int:
        return int(await self._call("GET", self._version) or 0)

    async def load(self) -> Snapshot:
        # The version is read first: a write landing in between is seen again at the next poll.
        version = await self.version()
        flat = await self._call("HGETALL", self._hash)
        deleted = await self._call("SMEMBERS", self._deleted)
        generation = int(await self._call("GET", self._config) or 0)
        tenants = {}
        for raw in flat[1::2]:
            record = TenantRecord.model_validate_json(raw)
            tenants[record.id] = record
        return Snapshot(version, tenants, frozenset(d.decode() for d in deleted), generation)

    async def signal_reload(self, audit: AuditEntry) -> int:
        keys = [self._version, self._config, self._audit]
        entry = audit.model_dump_json(exclude={"seq"})
        return int(await self._call("EVAL", _SIGNAL, len(keys), *keys, entry))

    async def write(self, write: Write) -> int:
        record = "" if write.record is None else write.record.model_dump_json()
        audit = write.audit.model_dump_json(exclude={"seq"})
        keys = [self._hash, self._version, self._audit, self._deleted]
        args: list[str | int] = [write.tenant, write.expect, record, audit, self._retain]
        try:
            reply = await self._call("EVALSHA", _WRITE_SHA, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # EVAL, not SCRIPT LOAD: it has keys, so a Cluster sends it where they are
            reply = await self._call("EVAL", _WRITE, len(keys), *keys, *args)
        if int(reply[0]) != 1:
            raise StaleRevision(int(reply[1]))
        return int(reply[1])

    async def audit(self, limit: int, before: int | None) -> list[AuditEntry]:
        top = "+inf" if before is None else f"({before}"
        raw = await self._call("ZRANGE", self._audit, top, "-inf", "BYSCORE", "REV", "LIMIT", 0,
                               limit)  # fmt: skip
        return [AuditEntry.model_validate_json(r) for r in raw]

    async def record_use(self, used: dict[str, float]) -> None:
        if used:
            flat = [v for key, at in used.items() for v in (key, f"{at:.3f}")]
            await self._call("HSET", self._used, *flat)

    async def last_used(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        values = await self._call("HMGET", self._used, *ids)
        return {i: float(v) for i, v in zip(ids, values, strict=True) if v is not None}

    async def close(self) -> None:
        self._pipe.close()

    async def _call(self, *args: str | int) -> Any:
        try:
            return await self._pipe.call(*args)
        except ConnectionLost as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
