"""Runtime changes on 3 replicas (separate ``bedrock-gateway serve`` processes, one Redis): a key
created on one works on every one, a budget change bites and a revoked key fails, each within
1 s of the admin call's answer (measured and printed)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from gateway.tenancy.secrets import new_sealing_key
from tests.conftest import ENVIRON, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

ADMIN_KEY = "gwk-admin-propagation-0123456789"
BOUND_S = 1.0


@pytest.fixture(scope="module")
def replicas(simulator: ServerThread, redis_server: RedisServer) -> Iterator[list[GatewayProcess]]:
    settings = gateway_settings(simulator.url)
    settings["server"] = {"http": "h1"}
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url, "replicas": 3,
                           "key_prefix": "prop" + os.urandom(3).hex()}  # fmt: skip
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)]}
    environ = {**ENVIRON, "GATEWAY_SECRETS_KEY": new_sealing_key()}
    started: list[GatewayProcess] = []
    try:
        for _ in range(3):
            started.append(GatewayProcess(settings, environ).start())
        yield started
    finally:
        for process in started:
            process.stop()


def _call(client: Any) -> str:
    """``ok`` or the error code the gateway answered with."""
    try:
        client.converse(modelId="claude-sonnet", inferenceConfig={"maxTokens": 20},
                        messages=[{"role": "user", "content": [{"text": "hi"}]}])  # fmt: skip
    except client.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


def _until(clients: list[Any], outcome: str, since: float) -> list[float]:
    """Seconds from ``since`` until each client first sees ``outcome`` (polled every 10 ms)."""
    seen: list[float] = []
    for client in clients:
        while _call(client) != outcome:
            assert time.monotonic() - since < 5, f"no {outcome} within 5 s"
            time.sleep(0.01)
        seen.append(time.monotonic() - since)
    return seen


def test_changes_reach_every_replica_within_a_second(
    replicas: list[GatewayProcess], make_client: ClientFactory
) -> None:
    admin = httpx.Client(base_url=replicas[0].url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    made: Callable[..., Any] = make_client
    assert admin.post("/admin/tenants", json={"id": "roaming", "tpm": 100000}).status_code == 201
    pair = admin.post("/admin/tenants/roaming/credentials",
                      json={"kind": "sigv4", "name": "p"}).json()  # fmt: skip
    since = time.monotonic()
    clients = [made(r.url, pair["access_key_id"], pair["secret_access_key"]) for r in replicas]
    created = _until(clients, "ok", since)

    # A budget no request fits: the answer becomes a ValidationException naming it.
    assert admin.patch("/admin/tenants/roaming", json={"tpm": 5}).status_code == 200
    since = time.monotonic()
    budget = _until(clients, "ValidationException", since)

    assert admin.patch("/admin/tenants/roaming", json={"tpm": None}).status_code == 200
    _until(clients, "ok", time.monotonic())
    revoked = admin.delete(f"/admin/tenants/roaming/credentials/{pair['access_key_id']}")
    assert revoked.status_code == 200
    since = time.monotonic()
    refused = _until(clients, "AccessDeniedException", since)

    for what, figures in (("new key works", created), ("budget change bites", budget),
                          ("revoked key fails", refused)):  # fmt: skip
        print(f"[propagation] {what}: " + ", ".join(f"replica {i} {s * 1000:.0f} ms"
                                                   for i, s in enumerate(figures)))  # fmt: skip
        assert max(figures) < BOUND_S, (what, figures)
