"""Helpers for the tenancy tests: every key and value in a Redis, as bytes."""

from __future__ import annotations

import redis


def dump_redis(url: str) -> list[bytes]:
    """Every key name and every value (string, hash, set, sorted set, list) in the database."""
    client = redis.Redis.from_url(url)
    found: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            found.append(key)
            kind = client.type(key)
            if kind == b"string":
                found.append(client.get(key) or b"")
            elif kind == b"hash":
                for field, value in client.hgetall(key).items():
                    found += [field, value]
            elif kind == b"set":
                found += list(client.smembers(key))
            elif kind == b"zset":
                found += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                found += list(client.lrange(key, 0, -1))
    finally:
        client.close()
    return found
