"""Settings and a richer client for the queue, retry and learned-quota load tests.

``harness.py`` runs one model with one route and one tenant. These scenarios need more: a
model with an on-demand route and a cross-region profile route, several models, tenants with
their own keys, weights and priorities, the admin key, queue and server settings. ``Scenario``
is a ``Launcher`` that starts a simulator with per-pool quotas and gateway replicas from a
settings builder; ``Loop`` is an ``OpenLoop`` that sends extra headers and records what the
gateway says about each answer (route, model, queue wait, attempts, tokens, message).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import hash_key
from tests.load.harness import (
    MODEL_ID,
    REGION,
    Launcher,
    OpenLoop,
    Outcome,
    Process,
    _ready,
    get_text,
    simulator_settings,
    wait_until,
)
from tests.servers import RedisServer, free_port

PROFILE_ID = f"us.{MODEL_ID}"  # the geographic cross-region profile of the same model
ON_DEMAND_LABEL = f"sim/{REGION}/{MODEL_ID}"
PROFILE_LABEL = f"sim/{REGION}/{PROFILE_ID}"
# Another burndown-1 model, for a second, independent pool in the same gateway.
OTHER_MODEL = "claude-haiku-3"
OTHER_MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"


def route(tpm: int | None = None, *, profile: str | None = None, **limits: Any) -> dict[str, Any]:
    """One route of account ``sim`` in REGION: on-demand, or ``profile``."""
    entry: dict[str, Any] = {"account": "sim", "region": REGION, **limits}
    if tpm is not None:
        entry["tpm"] = tpm
    if profile is not None:
        entry["profile"] = profile
    return entry


def model(model_id: str, *routes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model_id": model_id, "output_burndown": 1, "routes": list(routes), **extra}


def gateway_settings(
    port: int,
    *,
    upstream_url: str,
    redis_url: str,
    models: dict[str, dict[str, Any]],
    tenants: dict[str, dict[str, Any]],
    queue: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    limiter: dict[str, Any] | None = None,
    admin_key: str | None = None,
) -> dict[str, Any]:
    """A gateway on the simulator (account ``sim``), the Redis limiter, the given models and
    tenants (each already carrying its ``key_sha256``)."""
    return {
        "server": {"host": "127.0.0.1", "port": port, **(server or {})},
        "upstream": {"connect_timeout_s": 2, "read_timeout_s": 10, **(upstream or {})},
        "queue": queue or {},
        "limiter": {"backend": "redis", "redis_url": redis_url, **(limiter or {})},
        "admin": {"key_sha256": [hash_key(admin_key)] if admin_key else []},
        "accounts": {
            "sim": {
                "access_key_id_env": "LOADTEST_AWS_KEY",
                "secret_access_key_env": "LOADTEST_AWS_SECRET",
                "endpoint_url": upstream_url,
            }
        },
        "models": models,
        "tenants": tenants,
    }


class Scenario(Launcher):
    """A ``Launcher`` with its own redis-server, several tenants (one bearer key each) and an
    admin key. ``stop_all`` stops the processes, then the Redis."""

    def __init__(self, workdir: Path, tenants: Iterable[str] = ("load",)) -> None:
        super().__init__(workdir)
        self.keys = {name: f"gwk-{name}-" + os.urandom(12).hex() for name in tenants}
        self.admin_key = "gwk-admin-" + os.urandom(12).hex()
        self._redis: RedisServer | None = None

    @property
    def redis_url(self) -> str:
        """A fresh redis-server of this scenario's own, started on first use."""
        if self._redis is None:
            self._redis = RedisServer().start()
        return self._redis.url

    def stop_all(self) -> None:
        try:
            super().stop_all()
        finally:
            if self._redis is not None:
                self._redis.stop()
                self._redis = None

    def tenants(self, **settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Every tenant with its key's digest, plus ``settings[name]`` (weight, priority…)."""
        return {name: {"key_sha256": hash_key(key), **settings.get(name, {})}
                for name, key in self.keys.items()}  # fmt: skip

    def sim(
        self, *, mode: str, tpm: int, pools: Sequence[dict[str, Any]] = (), **latency: float
    ) -> Process:
        """The simulator with a default quota of ``tpm`` and per-model ``pools`` overrides."""
        port = free_port()
        settings = simulator_settings(port, mode=mode, tpm=tpm, **latency)
        settings["pools"] = list(pools)
        config = self._write("sim.yaml", settings)
        process = self._spawn("simulator", ["simulator", "--config", str(config),
                                            "--port", str(port)], port)  # fmt: skip
        wait_until(partial(_ready, process, "/health"), 30, "simulator ready")
        return process

    def replicas(self, n: int, build: Callable[[int], dict[str, Any]]) -> list[Process]:
        """``n`` gateway processes, each configured by ``build(port)``."""
        started = []
        for i in range(n):
            port = free_port()
            config = self._write(f"gw{i}.yaml", build(port))
            started.append(self._spawn(f"gateway{i}", ["serve", "--config", str(config),
                                                       "--port", str(port)], port))  # fmt: skip
        for process in started:
            wait_until(partial(_ready, process, "/health/ready"), 30, f"{process.name} ready")
        return started


# ---- the client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, with what the gateway's headers and the body say about it."""

    index: int
    sent: float
    """Wall-clock seconds when the request was sent."""
    latency: float
    gateway: int
    status: int
    error_type: str = ""
    retry_after_ms: str | None = None
    retry_after: str | None = None
    route: str | None = None
    model: str | None = None
    queue_ms: int | None = None
    attempts: int | None = None
    tokens: int = 0
    """input + output tokens of a 200 answer's usage (burndown 1: the quota tokens)."""
    message: str = ""
    error: str = ""

    @property
    def done(self) -> float:
        return self.sent + self.latency

    @property
    def admitted(self) -> float:
        """Wall-clock seconds of the (last) admission: sent + the gateway's queue wait."""
        return self.sent + (self.queue_ms or 0) / 1000

    @property
    def gateway_own(self) -> bool:
        """A refusal by the gateway itself (queue full, deadline), not one passed on."""
        return "bedrock-gateway" in self.message


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class Loop(OpenLoop):
    """``OpenLoop`` sending ``headers`` as well, recording a ``Reply`` per request."""

    headers: dict[str, str] = field(default_factory=dict)
    replies: list[Reply] = field(default_factory=list)

    async def _one(self, session: aiohttp.ClientSession, i: int) -> None:
        loop = asyncio.get_running_loop()
        gateway = i % len(self.urls)
        url = f"{self.urls[gateway]}/model/{self.model}/invoke"
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json",
                   "accept": "application/json", **self.headers}  # fmt: skip
        sent, wall = loop.time(), time.time()
        try:
            async with session.post(url, data=self.bodies[i % len(self.bodies)].raw,
                                    headers=headers) as answer:  # fmt: skip
                raw = await answer.read()
                latency = loop.time() - sent
                h = answer.headers
                document = orjson.loads(raw) if raw[:1] == b"{" else {}
                usage = document.get("usage") or {}
                reply = Reply(
                    i, wall, latency, gateway, answer.status, h.get("x-amzn-ErrorType", ""),
                    h.get("x-amz-retry-after"), h.get("Retry-After"), h.get("x-gateway-route"),
                    h.get("x-gateway-model"), _int(h.get("x-gateway-queue-ms")),
                    _int(h.get("x-gateway-attempts")),
                    int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0)),
                    str(document.get("message") or document.get("Message") or ""),
                )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            latency = loop.time() - sent
            reply = Reply(i, wall, latency, gateway, 0, error=repr(exc))
        finally:
            self.in_flight -= 1
        self.replies.append(reply)
        self.outcomes.append(Outcome(sent, wall, gateway, reply.status, reply.error_type,
                                     reply.retry_after_ms, reply.route, latency,
                                     reply.error))  # fmt: skip


# ---- figures --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def sim_pools(session: aiohttp.ClientSession, sim_url: str) -> dict[str, dict[str, Any]]:
    """The simulator's pools by model id (region REGION)."""
    stats = orjson.loads(await get_text(session, f"{sim_url}/_simulator/stats"))
    return {p["model"]: p for p in stats["pools"] if p["region"] == REGION}


async def admin_pools(session: aiohttp.ClientSession, url: str, key: str) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"}
    async with session.get(f"{url}/admin/pools", headers=headers,
                           timeout=aiohttp.ClientTimeout(total=5)) as answer:  # fmt: skip
        assert answer.status == 200, await answer.text()
        return list(orjson.loads(await answer.read())["pools"])


async def redis_commands(url: str) -> tuple[int, dict[str, int]]:
    """(total_commands_processed, calls per command) of the Redis at ``url``. The probe's own
    connection adds a few commands (HELLO/CLIENT, INFO): negligible against the intervals
    measured."""
    client = aioredis.Redis.from_url(url, socket_timeout=2)
    try:
        stats = await client.info("stats")
        commands = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()}
    return int(stats["total_commands_processed"]), calls


def labelled(exposition: str, name: str, label: str) -> dict[str, float]:
    """Sum of ``name`` samples by the value of ``label``."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(label, "")
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums
