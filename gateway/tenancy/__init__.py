"""Tenants managed at runtime: model, secrets at rest, stores, registry, admin operations."""
