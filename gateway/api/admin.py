"""The admin API: the platform team's view of pools and learned quotas, behind its own key.

Every route needs ``Authorization: Bearer <admin key>`` (stored as SHA-256, compared in constant
time); tenant credentials never open it. Errors are Bedrock-shaped like the rest.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from gateway.catalog import Catalog
from gateway.errors import AccessDenied
from gateway.limiter.calibrating import Calibrations
from gateway.limiter.learning import LearnedQuotas
from gateway.limiter.service import Limiter


def _check(request: Request, digests: Sequence[str]) -> None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        raise AccessDenied("The admin API needs Authorization: Bearer <admin key>.")
    presented = hashlib.sha256(header[7:].strip().encode()).hexdigest()
    if not any(hmac.compare_digest(presented, digest) for digest in digests):
        raise AccessDenied("The admin key is not valid.")


def admin_router(
    digests: Sequence[str], catalog: Catalog, limiter: Limiter, learned: LearnedQuotas,
    calibrations: Calibrations,
) -> APIRouter:  # fmt: skip
    router = APIRouter(prefix="/admin")

    @router.get("/pools")
    async def pools(request: Request) -> dict[str, Any]:
        """Every quota pool the routes draw on: configured limits and the learned quota (its
        factor, when Bedrock last lowered it and until when it holds, in Unix seconds); and
        per model and body family, the factor input estimates are scaled by and the answers
        (samples) it was learned from."""
        _check(request, digests)
        seen: dict[str, dict[str, Any]] = {}
        states, hold_s = learned.states(), learned.aimd.hold_s
        for target in catalog.targets():
            for route in target.routes:
                pool = limiter.pool_of(route)
                factor = learned.factor(pool)
                since = states[pool][1] if pool in states else None
                entry = seen.setdefault(pool, {
                    "pool": pool, "account": route.account, "region": route.region,
                    "scope": route.scope, "base_model": route.base_model, "tpm": route.tpm,
                    "rpm": route.rpm, "tokens_per_day": route.tokens_per_day,
                    "max_concurrency": route.max_concurrency, "quota_factor": round(factor, 4),
                    "effective_tpm": None if route.tpm is None else int(route.tpm * factor),
                    "throttled_at": since,
                    "holds_until": None if since is None else since + hold_s,
                    "routes": [],
                })  # fmt: skip
                if route.label not in entry["routes"]:
                    entry["routes"].append(route.label)
        return {"pools": list(seen.values()), "calibration": calibrations.status()}

    return router
