"""The tenant stores (memory, file, Redis), seeding and sealed secrets: no gateway running."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import TenantConfig
from gateway.tenancy.model import AuditEntry, Credential, TenantPatch, TenantRecord, TenantSpec
from gateway.tenancy.redis_store import RedisTenantStore
from gateway.tenancy.secrets import SecretBox, Unsealable, hash_key, new_sealing_key
from gateway.tenancy.seed import seed
from gateway.tenancy.store import MemoryTenantStore, StaleRevision, TenantStore, Write
from tests.servers import RedisServer

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _record(name: str, *credentials: Credential, revision: int = 1, **spec: object) -> TenantRecord:
    return TenantRecord(id=name, spec=TenantSpec.model_validate(spec), credentials=credentials,
                        created_at=NOW, updated_at=NOW, revision=revision)  # fmt: skip


def _audit(name: str) -> AuditEntry:
    return AuditEntry(at=NOW, actor="test", action="tenant.create", tenant=name)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[TenantStore]:
    if request.param == "memory":
        yield MemoryTenantStore(retain=10)
        return
    redis_store = RedisTenantStore.from_url(redis_server.url, "unit" + os.urandom(3).hex(), 2.0,
                                            retain=10)  # fmt: skip
    yield redis_store
    await redis_store.close()


async def test_writes_are_compare_and_set_and_audited(store: TenantStore) -> None:
    assert await store.version() == 0
    assert await store.write(Write("a", _record("a"), 0, _audit("a"))) == 1
    with pytest.raises(StaleRevision) as stale:
        await store.write(Write("a", _record("a"), 0, _audit("a")))
    assert stale.value.current == 1
    await store.write(Write("a", _record("a", revision=2, tpm=5), 1, _audit("a")))
    await store.write(Write("a", None, 2, _audit("a")))
    snapshot = await store.load()
    assert (snapshot.version, snapshot.tenants, snapshot.deleted) == (3, {}, frozenset({"a"}))
    for n in range(15):
        await store.write(Write(f"t{n}", _record(f"t{n}"), 0, _audit(f"t{n}")))
    newest = await store.audit(4, None)
    assert [e.seq for e in newest] == [18, 17, 16, 15]
    assert [e.seq for e in await store.audit(3, 16)] == [15, 14, 13]
    assert len(await store.audit(100, None)) == 10  # retain
    await store.record_use({"k1": NOW})
    assert await store.last_used(["k1", "k2"]) == {"k1": NOW}


async def test_the_memory_store_survives_a_restart_in_its_file(tmp_path: Path) -> None:
    path = str(tmp_path / "tenants.json")
    first = MemoryTenantStore(path)
    await first.write(Write("a", _record("a", tpm=7), 0, _audit("a")))
    await first.write(Write("b", _record("b"), 0, _audit("b")))
    await first.write(Write("b", None, 1, _audit("b")))
    again = await MemoryTenantStore(path).load()
    assert (again.version, again.tenants["a"].spec.tpm, again.deleted) == (3, 7, {"b"})


async def test_sealed_secrets_open_with_an_old_key_after_rotation() -> None:
    old, new = new_sealing_key(), new_sealing_key()
    token = SecretBox([old]).seal("s3cret")
    assert "s3cret" not in token
    rotated = SecretBox([new, old])
    assert rotated.open(token) == "s3cret"
    assert SecretBox([new]).open(rotated.reseal(token)) == "s3cret"
    with pytest.raises(Unsealable):
        SecretBox([new]).open(token)


async def test_seeding_missing_keeps_the_store_and_deleted_tenants() -> None:
    store = MemoryTenantStore()
    file = {"a": TenantConfig(tpm=10), "b": TenantConfig(key_sha256=[hash_key("kb")])}
    assert await seed(store, file, "missing", NOW) == ["a", "b"]
    assert await seed(store, file, "missing", NOW) == []  # a second replica: nothing to do
    current = (await store.load()).tenants["a"]
    await store.write(Write("a", current.model_copy(update={"revision": 2, "spec": TenantPatch(
        tpm=99).apply(current.spec)}), 1, _audit("a")))  # fmt: skip
    await store.write(Write("b", None, 1, _audit("b")))
    assert await seed(store, file, "missing", NOW) == []
    snapshot = await store.load()
    assert snapshot.tenants["a"].spec.tpm == 99  # the admin API's change wins
    assert "b" not in snapshot.tenants  # deleted through the API: not re-created
    assert (await store.audit(10, None))[-1].actor == "config-file"


async def test_seeding_file_overwrites_settings_and_keeps_api_credentials() -> None:
    store = MemoryTenantStore()
    api_key = Credential(id="bk-api", kind="bearer", name="api", created_at=NOW,
                         key_sha256=hash_key("api"))  # fmt: skip
    await store.write(Write("a", _record("a", api_key, tpm=99), 0, _audit("a")))
    assert await seed(store, {"a": TenantConfig(tpm=10, key_sha256=[hash_key("f")])}, "file",
                      NOW) == ["a"]  # fmt: skip
    record = (await store.load()).tenants["a"]
    assert record.spec.tpm == 10
    assert {c.source for c in record.credentials} == {"api", "config"}
