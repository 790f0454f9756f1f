"""The registry and authentication against it: a manual clock, no sleeps."""

from __future__ import annotations

import pytest

from gateway.auth import Authenticator, RequestFacts
from gateway.errors import AccessDenied
from gateway.tenancy.model import Credential
from gateway.tenancy.registry import TenantRegistry
from gateway.tenancy.secrets import SecretBox, hash_key
from gateway.tenancy.store import MemoryTenantStore, Write
from tests.tenancy.test_store import NOW, Clock, _audit, _record


def _facts(key: str) -> RequestFacts:
    return RequestFacts(
        "POST", "/model/m/converse", "", [(b"authorization", f"Bearer {key}".encode())], ""
    )


async def test_a_revoked_or_expired_key_is_access_denied_and_changes_are_heard() -> None:
    clock, heard = Clock(), []
    store = MemoryTenantStore()
    registry = TenantRegistry(
        store,
        SecretBox(None),
        {},
        on_change=lambda name, spec: heard.append((name, spec and spec.tpm)),
    )
    auth = Authenticator(lambda: registry.directory, clock, 300, on_use=registry.used)
    keys = {n: Credential(id=f"bk-{n}", kind="bearer", name=n, created_at=NOW,
                          key_sha256=hash_key(f"key-{n}"),
                          expires_at=NOW + 60 if n == "soon" else None)
            for n in ("good", "soon", "gone")}  # fmt: skip
    keys["gone"] = keys["gone"].model_copy(update={"revoked_at": NOW})
    await store.write(Write("a", _record("a", *keys.values(), tpm=9), 0, _audit("a")))
    assert await registry.refresh()
    assert not await registry.refresh()  # one GET, nothing reloaded
    assert heard == [("a", 9)]
    assert auth.authenticate(_facts("key-good")).tenant.name == "a"
    assert registry.pending_use("bk-good") == NOW
    assert auth.authenticate(_facts("key-soon")).tenant.name == "a"
    with pytest.raises(AccessDenied, match="revoked"):
        auth.authenticate(_facts("key-gone"))
    clock.now = NOW + 60
    with pytest.raises(AccessDenied, match="expired"):
        auth.authenticate(_facts("key-soon"))
    with pytest.raises(AccessDenied, match="not valid"):
        auth.authenticate(_facts("key-unknown"))
    await store.write(Write("a", None, 1, _audit("a")))
    await registry.refresh()
    assert heard[-1] == ("a", None)
    with pytest.raises(AccessDenied, match="not valid"):
        auth.authenticate(_facts("key-good"))
    await registry.flush_use()
    assert await store.last_used(["bk-good"]) == {"bk-good": NOW}


async def test_a_start_without_the_store_serves_the_file_tenants() -> None:
    from gateway.config import parse_config
    from gateway.tenancy.wiring import Tenancy
    from tests.conftest import BEARER, ENVIRON, gateway_settings
    from tests.servers import free_port

    settings = gateway_settings("http://127.0.0.1:1")
    settings["limiter"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0",
                           "timeout_s": 0.05}  # fmt: skip
    tenancy = Tenancy(parse_config(settings), ENVIRON, lambda name, spec: None, Clock())
    await tenancy.start(0.2)
    try:
        assert tenancy.registry.pending is not None  # seeding waits for the store
        assert tenancy.registry.directory.bearer[hash_key(BEARER)].tenant.name == "team-a"
        assert set(tenancy.registry.records) == {"team-a", "team-b"}
    finally:
        await tenancy.close()


async def test_a_store_that_lost_its_state_is_restored_from_the_replica() -> None:
    store = MemoryTenantStore()
    registry = TenantRegistry(store, SecretBox(None), {}, on_change=lambda name, spec: None,
                              clock=Clock())  # fmt: skip
    key = Credential(id="bk-k", kind="bearer", name="k", created_at=NOW, key_sha256=hash_key("k"))
    await store.write(Write("a", _record("a", key), 0, _audit("a")))
    await store.write(Write("b", _record("b"), 0, _audit("b")))
    await registry.refresh()
    emptied = MemoryTenantStore()  # what a Redis restarted without persistence looks like
    registry.store = emptied
    assert await registry.refresh()
    assert set(registry.records) == {"a", "b"}
    assert hash_key("k") in registry.directory.bearer
    assert set((await emptied.load()).tenants) == {"a", "b"}
    assert (await emptied.audit(1, None))[0].actor == "replica-restore"
