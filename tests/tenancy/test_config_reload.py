"""Config reload on 3 replicas (separate ``bedrock-gateway serve`` processes, one Redis): an
invalid file changes nothing anywhere, a good one reaches every replica within a second
(measured), a change that needs a restart is refused, and a replica whose own file is bad keeps
its last good config and says why."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from tests.conftest import ENVIRON, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

ADMIN = "gwk-admin-reload-0123456789"
BOUND_S = 1.0


@pytest.fixture(scope="module")
def settings(simulator: ServerThread, redis_server: RedisServer) -> dict[str, Any]:
    settings = gateway_settings(simulator.url)
    settings["server"] = {"http": "h1"}
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url, "replicas": 3,
                           "key_prefix": "reload" + os.urandom(3).hex()}  # fmt: skip
    settings["admin"] = {"key_sha256": [hash_key(ADMIN)], "sync_interval_s": 0.1}
    settings["models"]["claude-haiku"]["routes"][0]["tpm"] = 100_000
    return settings


@pytest.fixture(scope="module")
def replicas(settings: dict[str, Any]) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        for _ in range(3):
            started.append(GatewayProcess(settings, ENVIRON).start())
        yield started
    finally:
        for process in started:
            process.stop()


def _write(replica: GatewayProcess, settings: dict[str, Any] | str) -> None:
    """Replace the replica's config file (its own port kept)."""
    with open(replica.config_path, "w", encoding="utf-8") as file:
        if isinstance(settings, str):
            file.write(settings)
        else:
            server = {**settings.get("server", {}), "port": replica.port}
            json.dump({**settings, "server": server}, file)


def _admin(replica: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=replica.url, headers={"authorization": f"Bearer {ADMIN}"})


def _haiku_tpm(replica: GatewayProcess) -> int:
    pools = _admin(replica).get("/admin/pools").json()["pools"]
    return next(p["tpm"] for p in pools if p["base_model"].startswith("anthropic.claude-3-5-haiku"))


def _serves(client: Any, model: str = "claude-haiku") -> bool:
    reply = client.converse(modelId=model, inferenceConfig={"maxTokens": 10},
                            messages=[{"role": "user", "content": [{"text": "hi"}]}])  # fmt: skip
    return bool(reply["usage"]["outputTokens"])


def _until(check: Callable[[], bool], since: float) -> float:
    while not check():
        assert time.monotonic() - since < 5, "not within 5 s"
        time.sleep(0.01)
    return time.monotonic() - since


def test_reload_on_every_replica_or_nowhere(
    replicas: list[GatewayProcess], settings: dict[str, Any], make_client: ClientFactory
) -> None:
    clients = [make_client(r.url) for r in replicas]
    first = _admin(replicas[0])

    # 1. An invalid file everywhere: refused with the reason, every replica as it was.
    for replica in replicas:
        _write(replica, "models: [this is not: valid")
    refused = first.post("/admin/config/reload")
    assert refused.status_code == 400
    assert refused.json()["field"] == "config"
    assert "not valid YAML" in refused.json()["message"]
    assert first.get("/admin/config").json()["last_error"]["message"] == refused.json()["message"]
    for replica, client in zip(replicas, clients, strict=True):
        assert _haiku_tpm(replica) == 100_000
        assert _serves(client)

    # 2. A change only a restart can make: refused, naming it.
    restart = json.loads(json.dumps(settings))
    restart["upstream"]["read_timeout_s"] = 20
    for replica in replicas:
        _write(replica, restart)
    refused = first.post("/admin/config/reload")
    assert refused.status_code == 400
    assert "upstream changed; it needs a restart" in refused.json()["message"]

    # 3. A good file: a route's quota, a price and a new model alias, on every replica in < 1 s.
    good = json.loads(json.dumps(settings))
    good["models"]["claude-haiku"]["routes"][0]["tpm"] = 250_000
    good["models"]["claude-haiku"]["price"] = {"input": 0.0008, "output": 0.004}
    good["models"]["haiku-fast"] = good["models"]["claude-haiku"]
    good["tenants"]["team-c"] = {"key_sha256": hash_key("gwk-team-c-0123456789")}
    for replica in replicas:
        _write(replica, good)
    since = time.monotonic()
    reloaded = first.post("/admin/config/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changed"] == ["models", "tenants"]
    seen = [_until(lambda r=r: _haiku_tpm(r) == 250_000, since) for r in replicas]  # type: ignore[misc]
    print(f"\nconfig reload reached the replicas after {[round(s, 3) for s in seen]} s")
    assert max(seen) < BOUND_S
    for client in clients:
        assert _serves(client, "haiku-fast")
    assert _admin(replicas[2]).get("/admin/tenants/team-c").status_code == 200
    audit = first.get("/admin/audit", params={"limit": 5}).json()["entries"]
    assert [e["action"] for e in audit].count("config.reload") == 1
    assert audit[0]["after"]["changed"] == ["models", "tenants"]

    # 4. A replica whose own file is bad keeps its last good config and says why.
    newer = json.loads(json.dumps(good))
    newer["models"]["claude-haiku"]["routes"][0]["tpm"] = 300_000
    _write(replicas[0], newer)
    _write(replicas[1], newer)
    _write(replicas[2], "models: {claude-haiku: {routes: []}}")
    since = time.monotonic()
    assert first.post("/admin/config/reload").status_code == 200
    _until(lambda: _haiku_tpm(replicas[1]) == 300_000, since)
    _until(lambda: _admin(replicas[2]).get("/admin/config").json()["last_error"] is not None,
           since)  # fmt: skip
    state = _admin(replicas[2]).get("/admin/config").json()
    assert "accounts" in state["last_error"]["message"]
    assert _haiku_tpm(replicas[2]) == 250_000
    assert _serves(clients[2], "haiku-fast")
