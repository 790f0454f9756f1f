"""Quota enforcement: a pure core, an in-memory store and a Redis store."""
