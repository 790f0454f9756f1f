"""The admin API end to end: a real gateway over TLS on a real Redis, boto3 with the keys it
issues, and a scan of every Redis key and value for plaintext secrets."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme

from gateway.auth import hash_key
from gateway.config import parse_config
from gateway.logs import JsonFormatter
from gateway.tenancy.secrets import new_sealing_key
from tests.conftest import BEARER, ENVIRON, ClientFactory, gateway_settings
from tests.servers import RedisServer, ServerThread
from tests.tenancy.conftest import dump_redis

ADMIN_KEY = "gwk-admin-for-tests-0123456789"
OPS_KEY = "gwk-ops-admin-for-tests-012345"
SEALING_KEY = new_sealing_key()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    ca, folder = trustme.CA(), tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = tuple(str(folder / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(paths[0])
    cert.private_key_pem.write_to_path(paths[1])
    ca.cert_pem.write_to_path(paths[2])
    return paths  # type: ignore[return-value]


@pytest.fixture(scope="module")
def admin_gateway(
    simulator: ServerThread, redis_server: RedisServer, tls: tuple[str, str, str]
) -> Iterator[tuple[ServerThread, str, str]]:
    prefix = "adm" + os.urandom(3).hex()
    settings = gateway_settings(simulator.url)
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix}
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)],
                         "keys": [{"name": "ops", "key_sha256": hash_key(OPS_KEY)}]}  # fmt: skip
    settings["logging"] = {"access_log": True}  # so the secrets check reads every request's line
    from gateway.api.app import create_app

    app = create_app(
        parse_config(settings), environ={**ENVIRON, "GATEWAY_SECRETS_KEY": SEALING_KEY}
    )
    server = ServerThread(app, ssl_certfile=tls[0], ssl_keyfile=tls[1]).start()
    yield server, prefix, redis_server.url
    server.stop()


def _trust(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def _admin(server: ServerThread, cafile: str, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=_trust(cafile),
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip


def _converse(client: Any, model: str = "claude-sonnet") -> Any:
    return client.converse(
        modelId=model,
        messages=[{"role": "user", "content": [{"text": "hi [sim:output_tokens=3]"}]}],
    )


def test_tenant_crud_and_validation_errors(
    admin_gateway: tuple[ServerThread, str, str], tls: tuple[str, str, str]
) -> None:
    server, _, _ = admin_gateway
    with _admin(server, tls[2]) as admin:
        labels = {"team": "search", "cost-centre": "cc-42"}
        created = admin.post("/admin/tenants", json={
            "id": "crud-1", "display_name": "CRUD one", "tpm": 10000, "models": ["claude-haiku"],
            "monthly_spend_usd": 12.5, "labels": labels})  # fmt: skip
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["id"], body["tpm"], body["revision"]) == ("crud-1", 10000, 1)
        assert admin.post("/admin/tenants", json={"id": "crud-1"}).status_code == 409
        for payload, field in [({"id": "bad id!"}, "id"), ({"id": "x", "tpm": 0}, "tpm"),
                               ({"id": "x", "models": ["nope"]}, "models"),
                               ({"id": "x", "surprise": 1}, "surprise"),
                               ({"id": "x", "priority": "urgent"}, "priority"),
                               ({"id": "x", "max_wait_s": 45}, "max_wait_s")]:  # fmt: skip
            reply = admin.post("/admin/tenants", json=payload)
            assert reply.status_code == 400, (payload, reply.text)
            assert reply.json()["field"] == field, reply.json()
            assert reply.json()["type"] == "ValidationException"
        patched = admin.patch("/admin/tenants/crud-1", json={"tpm": 20000, "display_name": None})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["tpm"], patched.json()["display_name"]) == (20000, None)
        assert patched.json()["models"] == ["claude-haiku"]  # untouched by the patch
        assert admin.patch("/admin/tenants/crud-1", json={"weight": -1}).json()["field"] == "weight"
        assert admin.get("/admin/tenants/crud-1").json()["revision"] == 2
        assert admin.get("/admin/tenants/nobody").status_code == 404
        for n in range(3):
            admin.post("/admin/tenants", json={"id": f"crud-page-{n}"})
        first = admin.get("/admin/tenants", params={"limit": 2}).json()
        assert len(first["tenants"]) == 2
        assert first["next"]
        rest = admin.get("/admin/tenants", params={"limit": 500, "after": first["next"]}).json()
        seen = [t["id"] for t in first["tenants"] + rest["tenants"]]
        assert seen == sorted(seen)
        assert {"crud-1", "team-a", "team-b"} <= set(seen)
        assert admin.delete("/admin/tenants/crud-1").status_code == 204
        assert admin.get("/admin/tenants/crud-1").status_code == 404
        assert admin.get("/admin/openapi.json").json()["paths"]["/admin/tenants"]
    with _admin(server, tls[2], OPS_KEY) as ops:
        ops.patch("/admin/tenants/crud-page-0", json={"rpm": 5})
        entries = ops.get("/admin/audit", params={"limit": 50}).json()["entries"]
    latest = entries[0]
    assert (latest["actor"], latest["action"], latest["tenant"]) == ("ops", "tenant.update",
                                                                     "crud-page-0")  # fmt: skip
    assert (latest["before"]["rpm"], latest["after"]["rpm"]) == (None, 5)
    deleted = next(e for e in entries if e["action"] == "tenant.delete")
    assert deleted["actor"] == "admin-1"
    assert deleted["after"] is None
    assert deleted["before"]["tpm"] == 20000


def test_issued_keys_work_with_boto3_and_revoked_ones_do_not(
    admin_gateway: tuple[ServerThread, str, str], tls: tuple[str, str, str],
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    server, prefix, redis_url = admin_gateway
    with _admin(server, tls[2]) as admin:
        assert admin.post("/admin/tenants", json={"id": "keys-1", "models": ["claude-sonnet"],
                                                  "tpm": 100000}).status_code == 201  # fmt: skip
        pair = admin.post("/admin/tenants/keys-1/credentials",
                          json={"kind": "sigv4", "name": "ci"}).json()  # fmt: skip
        bearer = admin.post("/admin/tenants/keys-1/credentials",
                            json={"kind": "bearer", "name": "laptop"}).json()  # fmt: skip
        sigv4_client = make_client(server.url, pair["access_key_id"], pair["secret_access_key"],
                                   verify=tls[2])  # fmt: skip
        assert _converse(sigv4_client)["usage"]["outputTokens"] == 3
        with pytest.raises(sigv4_client.exceptions.AccessDeniedException, match="claude-haiku"):
            _converse(sigv4_client, "claude-haiku")
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", bearer["key"])
        bearer_client = make_client(server.url, verify=tls[2])
        assert _converse(bearer_client)["usage"]["outputTokens"] == 3
        monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK")

        listed = admin.get("/admin/tenants/keys-1/credentials").json()["credentials"]
        assert {c["state"] for c in listed} == {"active"}
        assert all(c["last_used_at"] for c in listed)  # noted on use, shown before any flush
        text = str(listed) + admin.get("/admin/tenants/keys-1").text
        assert pair["secret_access_key"] not in text
        assert bearer["key"] not in text
        assert hash_key(bearer["key"]) not in text
        assert "secret_enc" not in text

        revoked = admin.delete(f"/admin/tenants/keys-1/credentials/{pair['credential']['id']}")
        assert revoked.json()["state"] == "revoked"
        with pytest.raises(sigv4_client.exceptions.AccessDeniedException, match="revoked"):
            _converse(sigv4_client)
        admin.delete(f"/admin/tenants/keys-1/credentials/{bearer['credential']['id']}")
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", bearer["key"])
        with pytest.raises(bearer_client.exceptions.AccessDeniedException, match="revoked"):
            _converse(make_client(server.url, verify=tls[2]))
        monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK")

        assert (
            admin.post(
                "/admin/tenants/keys-1/credentials",
                json={"kind": "bearer", "name": "old", "expires_at": 1.0},
            ).json()["field"]
            == "expires_at"
        )
        # Secrets at rest: no key or value in Redis holds a plaintext key or secret.
        plaintexts = [pair["secret_access_key"], bearer["key"], ADMIN_KEY, OPS_KEY, SEALING_KEY]
        everything = dump_redis(redis_url)
        assert any(pair["access_key_id"].encode() in v for v in everything)  # the scan sees it
        assert any(f"{{{prefix}}}:tenants".encode() in v for v in everything)
        for value in everything:
            for secret in plaintexts:
                assert secret.encode() not in value
        # ...nor the gateway's logs (every level; boto3's own client logs are not the gateway's)
        # or its metrics.
        ours = [r for r in caplog.records if r.name.startswith(("gateway", "uvicorn"))]
        lines = "\n".join(JsonFormatter().format(r) for r in ours)
        assert '"logger":"gateway.access"' in lines
        assert '"tenant":"keys-1"' in lines
        exposed = lines + admin.get("/metrics").text
        assert "team-a" in exposed or "keys-1" in exposed  # they do see the traffic
        for secret in plaintexts:
            assert secret not in exposed


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Basic abc", 401), ("Bearer wrong", 403), (f"Bearer {BEARER}", 403)],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/tenants"), ("POST", "/admin/tenants"), ("GET", "/admin/tenants/team-a"),
     ("DELETE", "/admin/tenants/team-a"), ("GET", "/admin/audit"), ("GET", "/admin/openapi.json"),
     ("GET", "/admin/no-such-path"), ("GET", "/admin/pools")],
)  # fmt: skip
def test_admin_calls_without_an_admin_key_are_refused_and_leak_nothing(
    admin_gateway: tuple[ServerThread, str, str], tls: tuple[str, str, str],
    authorization: str | None, status: int, method: str, path: str,
) -> None:  # fmt: skip
    server, _, _ = admin_gateway
    headers = {"authorization": authorization} if authorization else {}
    reply = httpx.request(method, server.url + path, headers=headers, verify=_trust(tls[2]),
                          content=b"{not json")  # fmt: skip
    assert reply.status_code == status
    assert set(reply.json()) == {"message", "type", "field"}
    assert "team-a" not in reply.text
    assert "tenant" not in reply.text.lower()
    assert (
        httpx.get(
            f"{server.url}/admin/tenants/team-a",
            verify=_trust(tls[2]),
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ).status_code
        == 200
    )
