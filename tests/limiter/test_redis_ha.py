"""Sentinel and Cluster links against real servers: URLs, slots, a resharding under the store,
a master turned replica, a Sentinel failover, and the tenant store on both.

The limiter conformance suite itself runs on both through ``conftest.store``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import redis
from pydantic import ValidationError

from gateway.config import LimiterConfig
from gateway.limiter.cluster import ClusterLink, hash_slot
from gateway.limiter.core import Admitted, Charge, Denied, Plan, window_bucket
from gateway.limiter.redis_store import RedisStore, StoreUnavailable
from gateway.limiter.resp import ConnectionLost, Pipe, Unavailable
from gateway.limiter.sentinel import SentinelLink
from gateway.limiter.topology import Topology, open_link, parse_topology
from gateway.tenancy.redis_store import RedisTenantStore
from gateway.tenancy.store import TenantStore
from tests.servers import RedisCluster, RedisSentinelSet
from tests.tenancy.test_store import test_writes_are_compare_and_set_and_audited

T0 = 1_800_000_000_000
__all__ = ["test_writes_are_compare_and_set_and_audited"]  # collected here too, on HA stores


def _client(port: int, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, password=password)


def test_sentinel_and_cluster_urls() -> None:
    sentinel = parse_topology("rediss+sentinel://u:p%40ss@s1:26380,s2,[::1]:26381/cache?db=2")
    assert sentinel == Topology(
        "sentinel", (("s1", 26380), ("s2", 26379), ("::1", 26381)),
        parse_topology("rediss://u:p%40ss@s1:26380/2").address, "cache",
    )  # fmt: skip
    cluster = parse_topology("redis+cluster://clustercfg.example.cache.amazonaws.com,n2:7000")
    assert cluster.kind == "cluster"
    assert cluster.nodes == (("clustercfg.example.cache.amazonaws.com", 6379), ("n2", 7000))
    for bad, says in [("redis+sentinel://s1:26379", "names its master"),
                      ("redis+cluster://n1/2", "database 0 only"),
                      ("redis://a,b", "one server"), ("redis://a:x", "bad port"),
                      ("redis+sentinel://s/m?db=x", "database number"),
                      ("redis://a/0?sentinel_password=x", "belong to a redis.s")]:  # fmt: skip
        with pytest.raises(ValueError, match=says):
            parse_topology(bad)
    guarded = parse_topology("redis+sentinel://:pw@s1/m?sentinel_password=sp&sentinel_username=su")
    assert guarded.sentinel_auth == ("su", "sp")
    assert guarded.address.password == "pw"  # the master's, not the sentinels'
    assert sentinel.sentinel_auth == (None, None)


def test_the_config_refuses_a_redis_url_it_cannot_use() -> None:
    assert LimiterConfig(backend="redis", redis_url="redis+cluster://n1,n2:7000").redis_url
    with pytest.raises(ValidationError, match="names its master"):
        LimiterConfig(backend="redis", redis_url="redis+sentinel://s1:26379")


def test_hash_slots_are_the_clusters(redis_cluster: RedisCluster) -> None:
    client = _client(redis_cluster.ports[0])
    for key in ["{bgw}:pool:x", "{bgw}:tenants", "foo", "{}x", "a{b}c", "{{x}}", "x{}{y}", ""]:
        assert hash_slot(key.encode()) == client.cluster("KEYSLOT", key), key


def _window(key: str, limit: int = 10) -> object:
    return window_bucket(key, limit, window_ms=60_000, slot_ms=1000, margin_ms=0, label="w")


async def _admit(store: RedisStore, key: str, cost: int, member: str) -> object:
    bucket = _window(key)
    return await store.admit(Plan(member, (Charge(bucket, cost),)), T0)  # type: ignore[arg-type]


async def test_a_resharded_slot_is_followed_with_its_state(redis_cluster: RedisCluster) -> None:
    """ASK while the slot migrates (the key has left), MOVED once it has: the store keeps
    admitting from the same window, now on the other master."""
    key = "{reshard}:w"
    slot, source = hash_slot(key.encode()), redis_cluster.owner(key)
    target = next(p for p in redis_cluster.ports if p != source)
    ids = {p: _client(p).cluster("MYID").decode() for p in redis_cluster.ports}
    link = open_link(redis_cluster.url, 2.0)
    assert isinstance(link, ClusterLink)
    store = RedisStore(link)
    try:
        assert isinstance(await _admit(store, key, 4, "a"), Admitted)
        assert link.node == ("127.0.0.1", source)

        _client(target).cluster("SETSLOT", slot, "IMPORTING", ids[source])
        _client(source).cluster("SETSLOT", slot, "MIGRATING", ids[target])
        keys = _client(source).cluster("GETKEYSINSLOT", slot, 100)
        assert len(keys) == 1
        _client(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        assert isinstance(await _admit(store, key, 3, "b"), Admitted)  # ASK: once, to target
        assert link.node == ("127.0.0.1", source)

        for port in redis_cluster.ports:
            _client(port).cluster("SETSLOT", slot, "NODE", ids[target])
        assert isinstance(await _admit(store, key, 3, "c"), Admitted)  # MOVED: from now on
        assert link.node == ("127.0.0.1", target)
        denied = await _admit(store, key, 1, "d")
        assert isinstance(denied, Denied)  # 4 + 3 + 3 of 10, all in the window that moved
    finally:
        await store.close()


async def test_a_killed_cluster_master_is_an_outage_until_its_replica_serves() -> None:
    cluster = RedisCluster(replicas=1).start()
    key = "{cf}:w"
    old = cluster.owner(key)
    link = open_link(cluster.url, 0.5)
    assert isinstance(link, ClusterLink)
    store = RedisStore(link)
    try:
        assert isinstance(await _admit(store, key, 6, "a"), Admitted)
        # the replica has it (a replica just created may still be making its first sync)
        for _ in range(10):
            if _client(old).execute_command("WAIT", 1, 2000) == 1:
                break
        else:
            raise AssertionError("the replica did not acknowledge the write within 20 s")
        cluster.kill(old)
        failures = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:  # the replica takes over after cluster-node-timeout (2 s)
            try:
                decision = await _admit(store, key, 4, "b")
                break
            except StoreUnavailable:
                failures += 1
                assert loop.time() < deadline, "no replica took over within 20 s"
                await asyncio.sleep(0.1)  # retrying, as failover.py does after retry_after_s
        print(
            f"\n[cluster failover] {failures} calls refused, served again "
            f"{loop.time() - deadline + 20:.2f} s after the kill"
        )
        assert failures > 0  # an outage the failover store sees, not a silent switch
        assert link.node not in (None, ("127.0.0.1", old))
        assert isinstance(decision, Admitted)  # 6 + 4: the window came along
        assert isinstance(await _admit(store, key, 1, "c"), Denied)
    finally:
        await store.close()
        cluster.stop()


async def test_a_master_turned_replica_is_an_outage_never_a_write_to_a_replica() -> None:
    """-READONLY fails the call as an outage; while the sentinel still names the demoted node,
    the link refuses it (ROLE); once it is a master again, the store serves."""
    servers = RedisSentinelSet(replicas=1, sentinels=1, down_after_ms=30_000).start()
    master, replica = servers.data_ports
    store = RedisStore.from_url(servers.url, timeout_s=2.0)
    try:
        assert isinstance(await _admit(store, "{ro}:w", 1, "a"), Admitted)
        _client(master).replicaof("127.0.0.1", replica)  # behind the sentinel's back
        with pytest.raises(StoreUnavailable, match="READONLY"):
            await _admit(store, "{ro}:w", 1, "b")
        with pytest.raises(StoreUnavailable, match="not a master"):
            await _admit(store, "{ro}:w", 1, "c")
        _client(master).replicaof("NO", "ONE")
        assert isinstance(await _admit(store, "{ro}:w", 1, "d"), Admitted)
    finally:
        await store.close()
        servers.stop()


async def test_a_readonly_reply_is_unavailable_not_an_error() -> None:
    servers = RedisSentinelSet(replicas=1, sentinels=1, down_after_ms=30_000).start()
    try:
        replica = Pipe(parse_topology(f"redis://127.0.0.1:{servers.data_ports[1]}").address, 2.0)
        assert await replica.call("PING") == b"PONG"
        with pytest.raises(Unavailable, match="READONLY"):
            await replica.call("SET", "k", "v")
        assert isinstance(Unavailable("x"), ConnectionLost)
        replica.close()
    finally:
        servers.stop()


@pytest.mark.parametrize("password", [None, "s3cret"], ids=["open", "requirepass"])
async def test_a_sentinel_failover_is_a_short_outage_then_the_new_master(
    password: str | None,
) -> None:
    """The old master stays up (``SENTINEL FAILOVER``): the link hears ``+switch-master``, the
    first call after it fails as an outage (failover.py then seeds the new master), the next
    ones go to the new master, which has what the old one had. With ``requirepass`` on every
    node and sentinel, the link asks the sentinels (and subscribes) with
    ``sentinel_password``; without it, the sentinels refuse and the store says so."""
    servers = RedisSentinelSet(replicas=1, sentinels=1, down_after_ms=30_000,
                               password=password).start()  # fmt: skip
    old, new = servers.data_ports
    if password is not None:
        unauthorised = RedisStore(open_link(servers.url.split("?")[0], 2.0))
        with pytest.raises(StoreUnavailable, match=r"(?i)auth"):
            await _admit(unauthorised, "{fo}:w", 1, "x")
        await unauthorised.close()
    link = open_link(servers.url, 2.0)
    assert isinstance(link, SentinelLink)
    store = RedisStore(link)
    try:
        assert isinstance(await _admit(store, "{fo}:w", 6, "a"), Admitted)
        assert link.master == ("127.0.0.1", old)
        assert _client(old, password).execute_command("WAIT", 1, 2000) == 1  # the replica has it
        _client(servers.sentinel_ports[0], password).execute_command(
            "SENTINEL", "FAILOVER", servers.NAME)  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while link.switches == 0:  # the old master is still up and would take writes
            assert loop.time() < deadline, "no +switch-master within 15 s"
            await asyncio.sleep(0.05)  # polling the link, not passing time
        assert servers.master_port() == new
        with pytest.raises(StoreUnavailable, match="moved from"):
            await _admit(store, "{fo}:w", 4, "b")
        assert link.master == ("127.0.0.1", new)
        assert isinstance(await _admit(store, "{fo}:w", 4, "b"), Admitted)  # 6 + 4 of 10
        assert isinstance(await _admit(store, "{fo}:w", 1, "c"), Denied)
    finally:
        await store.close()
        servers.stop()


@pytest.fixture(params=["cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TenantStore]:
    """The tenant store on a Cluster and through Sentinel (the suite in tests/tenancy)."""
    servers = request.getfixturevalue(f"redis_{request.param}")
    tenants = RedisTenantStore.from_url(servers.url, "unit" + os.urandom(3).hex(), 2.0, retain=10)
    yield tenants
    await tenants.close()
