"""The admin API's tenant routes: tenants, their credentials, the audit log.

Routes are thin: they validate the body (pydantic, so the OpenAPI schema is exact), call
``TenantAdmin`` under the admin key's name (``request.state.admin``, set by ``AdminGuard``)
and shape the answer. No response ever carries a digest, a sealed secret or, except the one
that creates it, a plaintext credential.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.tenancy.model import (
    AuditEntry,
    Credential,
    TenantPatch,
    TenantRecord,
    TenantSpec,
    public_credential,
)
from gateway.tenancy.service import TenantAdmin


class TenantCreate(TenantSpec):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    """1-64 letters, digits, '_', '-' or '.'; the name budgets and metrics use."""


class CredentialOut(BaseModel):
    id: str
    kind: Literal["bearer", "sigv4"]
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    state: Literal["active", "revoked", "expired"]
    source: Literal["api", "config"]


class TenantOut(TenantSpec):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    source: Literal["api", "config"]
    created_at: float
    updated_at: float
    revision: int
    credentials: list[CredentialOut]


class TenantPage(BaseModel):
    tenants: list[TenantOut]
    next: str | None
    """Pass as ``after`` for the next page; null on the last."""


class CredentialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bearer", "sigv4"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    expires_at: float | None = None
    """Unix seconds; null: never."""


class CredentialCreated(BaseModel):
    credential: CredentialOut
    key: str | None = None
    """The bearer key (kind bearer). Shown only here, once."""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    """The SigV4 secret (kind sigv4). Shown only here, once."""


class CredentialList(BaseModel):
    credentials: list[CredentialOut]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before: int | None
    """Pass as ``before`` for older entries; null when there are none."""


def tenants_router(admin: TenantAdmin, clock: Any) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["tenants"])

    def credential_out(c: Credential, used: dict[str, float]) -> CredentialOut:
        return CredentialOut.model_validate(public_credential(c, clock(), used.get(c.id)))

    def tenant_out(record: TenantRecord, used: dict[str, float]) -> TenantOut:
        return TenantOut(
            **record.spec.model_dump(), id=record.id, source=record.source,
            created_at=record.created_at, updated_at=record.updated_at,
            revision=record.revision,
            credentials=[credential_out(c, used) for c in record.credentials],
        )  # fmt: skip

    @router.post("/tenants", status_code=201)
    async def create_tenant(request: Request, body: TenantCreate) -> TenantOut:
        spec = TenantSpec.model_validate(body.model_dump(exclude={"id"}))
        return tenant_out(await admin.create(request.state.admin, body.id, spec), {})

    @router.get("/tenants")
    async def list_tenants(
        limit: Annotated[int, Query(ge=1, le=500)] = 50, after: str | None = None
    ) -> TenantPage:
        records = await admin.tenants()
        ids = sorted(i for i in records if after is None or i > after)
        page = ids[:limit]
        return TenantPage(tenants=[tenant_out(records[i], {}) for i in page],
                          next=page[-1] if len(ids) > limit else None)  # fmt: skip

    @router.get("/tenants/{tenant_id}")
    async def show_tenant(tenant_id: str) -> TenantOut:
        record = await admin.tenant(tenant_id)
        return tenant_out(record, await admin.last_used(record))

    @router.patch("/tenants/{tenant_id}")
    async def update_tenant(request: Request, tenant_id: str, body: TenantPatch) -> TenantOut:
        return tenant_out(await admin.update(request.state.admin, tenant_id, body), {})

    @router.delete("/tenants/{tenant_id}", status_code=204)
    async def delete_tenant(request: Request, tenant_id: str) -> Response:
        await admin.delete(request.state.admin, tenant_id)
        return Response(status_code=204)

    @router.post("/tenants/{tenant_id}/credentials", status_code=201)
    async def create_credential(
        request: Request, tenant_id: str, body: CredentialCreate
    ) -> CredentialCreated:
        _, credential, plaintext = await admin.add_credential(
            request.state.admin, tenant_id, body.kind, body.name, body.expires_at
        )
        return CredentialCreated(credential=credential_out(credential, {}), **plaintext)

    @router.get("/tenants/{tenant_id}/credentials")
    async def list_credentials(tenant_id: str) -> CredentialList:
        record = await admin.tenant(tenant_id)
        used = await admin.last_used(record)
        return CredentialList(credentials=[credential_out(c, used) for c in record.credentials])

    @router.delete("/tenants/{tenant_id}/credentials/{credential_id}")
    async def revoke_credential(
        request: Request, tenant_id: str, credential_id: str
    ) -> CredentialOut:
        """Revoke (the credential stays listed, as revoked; using it is AccessDenied)."""
        credential = await admin.revoke(request.state.admin, tenant_id, credential_id)
        return credential_out(credential, {})

    @router.get("/audit")
    async def audit(
        limit: Annotated[int, Query(ge=1, le=500)] = 50, before: int | None = None
    ) -> AuditPage:
        """Every admin change, newest first: who (the admin key's name), when, what, and the
        tenant before and after (no secrets, digests or sealed secrets)."""
        entries = await admin.audit(limit + 1, before)
        more = len(entries) > limit
        return AuditPage(entries=entries[:limit],
                         next_before=entries[limit - 1].seq if more else None)  # fmt: skip

    return router
