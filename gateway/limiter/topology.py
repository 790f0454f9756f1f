"""Which Redis the gateway talks to, from ``limiter.redis_url``: one server, a Sentinel set or a
Cluster, and the link (``resp.Link``) that reaches its master.

* ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS): one server.
* ``redis+sentinel://[user:password@]host:port[,host:port…]/master-name[?db=N]
  [&sentinel_password=…[&sentinel_username=…]]`` (``rediss+sentinel://``): the sentinels of
  ``master-name``; the credentials and TLS are the master's; the sentinels are asked with
  ``sentinel_password`` (and ``sentinel_username``) when given, else without a password, over
  TLS when the scheme says so.
* ``redis+cluster://[user:password@]host:port[,host:port…]`` (``rediss+cluster://``): any
  nodes of a Cluster (an ElastiCache configuration endpoint is one); a Cluster has db 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.limiter.cluster import ClusterLink
from gateway.limiter.resp import Address, Link, Pipe
from gateway.limiter.sentinel import SentinelLink

Kind = Literal["single", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False), "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}  # fmt: skip


@dataclass(frozen=True)
class Topology:
    kind: Kind
    nodes: tuple[tuple[str, int], ...]
    """The server; the sentinels; or the Cluster nodes to ask for the slot map first."""
    address: Address
    """How to talk to a data node (its credentials, db, TLS); host and port are the first node's."""
    master: str = ""
    """The Sentinel master name."""
    sentinel_auth: tuple[str | None, str | None] = (None, None)
    """(username, password) the sentinels are asked with."""


def _nodes(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` items, comma-separated, after any ``user:password@``; ``[v6]:port`` too."""
    nodes = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if port and not port.isdigit():
            raise ValueError(f"bad port in Redis URL node {item!r}")
        nodes.append((host or "127.0.0.1", int(port) if port else default_port))
    return tuple(nodes)


def parse_topology(url: str) -> Topology:
    """The topology a Redis URL names; ``ValueError`` saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis, rediss, "
                         f"redis+sentinel, redis+cluster, or rediss+ either)")  # fmt: skip
    kind, tls = _SCHEMES[parts.scheme]
    default_port = 26379 if kind == "sentinel" else 6379
    nodes = _nodes(parts.netloc, default_port)
    path = parts.path.lstrip("/")
    query = parse_qs(parts.query)
    if kind == "sentinel":
        if not path or "/" in path:
            raise ValueError("a redis+sentinel URL names its master: redis+sentinel://host:port"
                             "[,host:port]/master-name[?db=N]")  # fmt: skip
        master, db_text = unquote(path), query.get("db", ["0"])[0]
        sentinel_auth = (query.get("sentinel_username", [None])[0],
                         query.get("sentinel_password", [None])[0])  # fmt: skip
    else:
        if {"sentinel_username", "sentinel_password"} & query.keys():
            raise ValueError("sentinel_password and sentinel_username belong to a "
                             "redis+sentinel URL")  # fmt: skip
        sentinel_auth = (None, None)
        if kind == "single" and len(nodes) > 1:
            raise ValueError("a redis:// URL names one server; several nodes need redis+sentinel "
                             "or redis+cluster")  # fmt: skip
        master, db_text = "", path or "0"
    if not db_text.isdigit():
        raise ValueError(f"bad Redis database number {db_text!r}")
    db = int(db_text)
    if kind == "cluster" and db:
        raise ValueError("a Redis Cluster has database 0 only")
    address = Address(
        host=nodes[0][0], port=nodes[0][1], db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )  # fmt: skip
    return Topology(kind, nodes, address, master, sentinel_auth)


def open_link(url: str, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> Link:
    """The link for ``url``; nothing connects until the first call."""
    topology = parse_topology(url)
    if topology.kind == "sentinel":
        return SentinelLink(topology.nodes, topology.master, topology.address, timeout_s, clock,
                            sentinel_auth=topology.sentinel_auth)  # fmt: skip
    if topology.kind == "cluster":
        return ClusterLink(topology.nodes, topology.address, timeout_s, clock)
    return Pipe(topology.address, timeout_s, clock)
