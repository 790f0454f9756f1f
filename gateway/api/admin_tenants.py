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

from gateway.api.admin import AdminRouter, error_responses
from gateway.config import TENANT_ID
from gateway.tenancy.model import (
    AuditEntry,
    Credential,
    TenantPatch,
    TenantRecord,
    TenantSpec,
    public_credential,
)
from gateway.tenancy.service import CREDENTIAL_NAME, TenantAdmin


class TenantCreate(TenantSpec):
    # strict: JSON as the schema types it (no 0 for false, no "5" for 5)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # the pattern is for the schema; TenantAdmin.create checks it with its own message
    id: Annotated[str, Field(min_length=1, max_length=64,
                             json_schema_extra={"pattern": TENANT_ID.pattern})]  # fmt: skip
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
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["bearer", "sigv4"]
    name: Annotated[str, Field(min_length=1, max_length=64,
                               json_schema_extra={"pattern": CREDENTIAL_NAME.pattern})]  # fmt: skip
    expires_at: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """Unix seconds, in the future; null: never."""


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


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


_TENANT_LINKS = {
    "ShowTenant": _link("showTenant", tenant_id="$response.body#/id"),
    "UpdateTenant": _link("updateTenant", tenant_id="$response.body#/id"),
    "DeleteTenant": _link("deleteTenant", tenant_id="$response.body#/id"),
    "CreateCredential": _link("createCredential", tenant_id="$response.body#/id"),
    "ListCredentials": _link("listCredentials", tenant_id="$response.body#/id"),
}
"""From a tenant (created, shown, updated) to what can be done with it: OpenAPI links, so a
client (and schemathesis's stateful phase) can follow the id it was given."""

_CREDENTIAL_LINKS = {
    "RevokeCredential": _link(
        "revokeCredential",
        tenant_id="$request.path.tenant_id",
        credential_id="$response.body#/credential/id",
    ),
    "ListCredentials": _link("listCredentials", tenant_id="$request.path.tenant_id"),
    "ShowTenant": _link("showTenant", tenant_id="$request.path.tenant_id"),
}


def _branch(prop: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The ``kind`` alternative of a property's schema (``anyOf`` for optional fields)."""
    candidates: list[dict[str, Any]] = [prop, *prop.get("anyOf", [])]
    return next((c for c in candidates if c.get("type") == kind), None)


def _refine(admin: TenantAdmin) -> Any:
    """What the schema can say only with the config (as it is now: a reload may change it):
    the model names a tenant may be given, and that ``max_wait_s`` is shorter than
    ``server.shutdown_grace_s``. The checks stay in ``TenantAdmin``, with their messages."""

    def refine(schema: dict[str, Any]) -> None:
        models, max_wait_limit_s = sorted(admin.models), admin.max_wait_limit_s
        for name, component in schema.get("components", {}).get("schemas", {}).items():
            if not name.startswith(("TenantCreate", "TenantPatch")):
                continue
            props = component.get("properties", {})
            listed = _branch(props.get("models", {}), "array")
            if listed is not None and models:
                listed["items"] = {"type": "string", "enum": models}
            wait = _branch(props.get("max_wait_s", {}), "number")
            if wait is not None and max_wait_limit_s <= wait.get("maximum", float("inf")):
                wait.pop("maximum", None)
                wait["exclusiveMaximum"] = max_wait_limit_s

    return refine


def tenants_router(admin: TenantAdmin, clock: Any) -> APIRouter:
    router = AdminRouter(prefix="/admin", tags=["tenants"], refine=_refine(admin))

    def credential_out(c: Credential, used: dict[str, float]) -> CredentialOut:
        return CredentialOut.model_validate(public_credential(c, clock(), used.get(c.id)))

    def tenant_out(record: TenantRecord, used: dict[str, float]) -> TenantOut:
        return TenantOut(
            **record.spec.model_dump(), id=record.id, source=record.source,
            created_at=record.created_at, updated_at=record.updated_at,
            revision=record.revision,
            credentials=[credential_out(c, used) for c in record.credentials],
        )  # fmt: skip

    @router.post("/tenants", status_code=201, operation_id="createTenant",
                 responses={201: {"links": _TENANT_LINKS},
                            **error_responses(409, 503)})  # fmt: skip
    async def create_tenant(request: Request, body: TenantCreate) -> TenantOut:
        """Create a tenant (``id`` is the only field required)."""
        spec = TenantSpec.model_validate(body.model_dump(exclude={"id"}))
        return tenant_out(await admin.create(request.state.admin, body.id, spec), {})

    @router.get("/tenants", operation_id="listTenants", responses=error_responses(503))
    async def list_tenants(
        limit: Annotated[int, Query(ge=1, le=500)] = 50, after: str | None = None
    ) -> TenantPage:
        """Tenants in id order, ``limit`` at a time, from after ``after``."""
        records = await admin.tenants()
        ids = sorted(i for i in records if after is None or i > after)
        page = ids[:limit]
        return TenantPage(tenants=[tenant_out(records[i], {}) for i in page],
                          next=page[-1] if len(ids) > limit else None)  # fmt: skip

    @router.get("/tenants/{tenant_id}", operation_id="showTenant",
                responses={200: {"links": _TENANT_LINKS}, **error_responses(503)})  # fmt: skip
    async def show_tenant(tenant_id: str) -> TenantOut:
        """One tenant, with its credentials (no secrets) and when each was last used."""
        record = await admin.tenant(tenant_id)
        return tenant_out(record, await admin.last_used(record))

    @router.patch("/tenants/{tenant_id}", operation_id="updateTenant",
                  responses={200: {"links": _TENANT_LINKS},
                             **error_responses(409, 503)})  # fmt: skip
    async def update_tenant(request: Request, tenant_id: str, body: TenantPatch) -> TenantOut:
        """Change only the fields sent; ``null`` clears an optional one."""
        return tenant_out(await admin.update(request.state.admin, tenant_id, body), {})

    @router.delete("/tenants/{tenant_id}", status_code=204, operation_id="deleteTenant",
                   responses=error_responses(409, 503))  # fmt: skip
    async def delete_tenant(request: Request, tenant_id: str) -> Response:
        """Delete a tenant; its credentials stop working."""
        await admin.delete(request.state.admin, tenant_id)
        return Response(status_code=204)

    @router.post("/tenants/{tenant_id}/credentials", status_code=201,
                 operation_id="createCredential",
                 responses={201: {"links": _CREDENTIAL_LINKS},
                            **error_responses(409, 503)})  # fmt: skip
    async def create_credential(
        request: Request, tenant_id: str, body: CredentialCreate
    ) -> CredentialCreated:
        """Issue a bearer key or a SigV4 pair; its plaintext is in this answer only."""
        _, credential, plaintext = await admin.add_credential(
            request.state.admin, tenant_id, body.kind, body.name, body.expires_at
        )
        return CredentialCreated(credential=credential_out(credential, {}), **plaintext)

    @router.get("/tenants/{tenant_id}/credentials", operation_id="listCredentials",
                responses=error_responses(503))  # fmt: skip
    async def list_credentials(tenant_id: str) -> CredentialList:
        """Every credential of the tenant, revoked and expired ones too (no secrets)."""
        record = await admin.tenant(tenant_id)
        used = await admin.last_used(record)
        return CredentialList(credentials=[credential_out(c, used) for c in record.credentials])

    @router.delete("/tenants/{tenant_id}/credentials/{credential_id}",
                   operation_id="revokeCredential",
                   responses=error_responses(409, 503))  # fmt: skip
    async def revoke_credential(
        request: Request, tenant_id: str, credential_id: str
    ) -> CredentialOut:
        """Revoke (the credential stays listed, as revoked; using it is AccessDenied)."""
        credential = await admin.revoke(request.state.admin, tenant_id, credential_id)
        return credential_out(credential, {})

    @router.get("/audit", operation_id="auditLog", responses=error_responses(503))
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
