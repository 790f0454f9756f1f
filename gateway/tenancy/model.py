"""What a tenant is, as the store holds it: its settings, its credentials, its revision.

Pure data and validation, no I/O: the admin API, the stores and the registry share these
models. A stored credential never carries a usable secret: bearer keys are SHA-256 digests,
SigV4 secrets are Fernet tokens (``secret_enc``) or, for pairs from the config file, the name
of the environment variable holding them (``secret_env``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gateway.config import _LABEL as LABEL_NAME
from gateway.config import TENANT_ID, TenantConfig

LIMITS = ("tpm", "rpm", "tokens_per_day", "tokens_per_month", "max_concurrency")
"""The token and request budgets the limiter enforces (and ``monthly_spend_usd``, apart)."""


def _whole(value: object) -> object:
    # JSON Schema counts 5.0 as an integer: so do the strict request models
    return int(value) if isinstance(value, float) and value.is_integer() else value


PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_whole)]
_LABELS_SCHEMA: dict[str, object] = {"maxProperties": 32,
                                     "propertyNames": {"pattern": LABEL_NAME.pattern}}  # fmt: skip
Labels = Annotated[
    dict[str, Annotated[str, Field(max_length=256)]], Field(json_schema_extra=_LABELS_SCHEMA)
]
"""Free-form labels: at most 32, names as the config file's (the schema says so too)."""


class TenantSpec(BaseModel):
    """The settings of a tenant an admin may set: everything but its id and credentials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    display_name: Annotated[str, Field(max_length=200)] | None = None
    models: list[str] | None = None
    """Model names this tenant may call; null: every configured model."""
    tpm: PositiveInt | None = None
    rpm: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None
    tokens_per_month: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None
    monthly_spend_usd: Annotated[float, Field(gt=0, le=1e9)] | None = None
    """US dollars per UTC calendar month, from the models' price tables."""
    priority: Literal["interactive", "batch"] = "interactive"
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    max_wait_s: Annotated[float, Field(ge=0, le=300)] | None = None
    allow_fallback: bool = False
    labels: Labels = {}

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:  # whole names: ``match`` and ``$`` let a trailing newline through
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(f"label name {name[:64]!r}: 1-63 letters, digits, '_', '-', '.'")
        # the same rule as the config file's
        return TenantConfig.model_validate({"labels": v}).labels

    def limits(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMITS}


class TenantPatch(BaseModel):
    """A partial update: only the fields sent change; null clears an optional one. Strict:
    JSON as the schema types it (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    display_name: Annotated[str, Field(max_length=200)] | None = None
    models: list[str] | None = None
    tpm: PositiveInt | None = None
    rpm: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None
    tokens_per_month: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None
    monthly_spend_usd: Annotated[float, Field(gt=0, le=1e9)] | None = None
    priority: Literal["interactive", "batch"] | None = None
    weight: Annotated[float, Field(gt=0, le=1000)] | None = None
    max_wait_s: Annotated[float, Field(ge=0, le=300)] | None = None
    allow_fallback: bool | None = None
    labels: Labels | None = None

    def apply(self, spec: TenantSpec) -> TenantSpec:
        """``spec`` with this patch's fields; raises pydantic's ValidationError."""
        changes = {name: getattr(self, name) for name in self.model_fields_set}
        for required in ("priority", "weight", "allow_fallback", "labels"):
            if required in changes and changes[required] is None:
                changes[required] = TenantSpec.model_fields[required].default
        return TenantSpec.model_validate(spec.model_dump() | changes)


class Credential(BaseModel):
    """One credential as stored; ``public()`` is what the admin API shows of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    """The access key id (SigV4), or ``bk-`` and the first 16 hex digits of the key's digest."""
    kind: Literal["bearer", "sigv4"]
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    source: Literal["api", "config"] = "api"
    key_sha256: str | None = None
    secret_enc: str | None = None
    secret_env: str | None = None

    def state(self, now: float) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class TenantRecord(BaseModel):
    """A tenant as the store holds it. ``revision`` counts its writes (compare-and-set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    spec: TenantSpec
    credentials: tuple[Credential, ...] = ()
    created_at: float
    updated_at: float
    revision: int = 1
    source: Literal["api", "config"] = "api"


class AuditEntry(BaseModel):
    """One admin change: who (the admin key's name), when, what, and the tenant before and after
    it, without secrets (digests and encrypted secrets are left out too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = 0
    """The store's tenant version the change produced (set by the store)."""
    at: float
    actor: str
    action: str
    tenant: str
    credential: str | None = None
    before: dict[str, object] | None = None
    after: dict[str, object] | None = None


def valid_tenant_id(value: str) -> bool:
    # fullmatch: ``$`` alone would let a trailing newline through (JSON Schema's would not)
    return bool(TENANT_ID.fullmatch(value))


def public_credential(credential: Credential, now: float, last_used: float | None) -> dict[
    str, object
]:  # fmt: skip
    """What anyone may see of a credential: never a digest, a secret or its ciphertext."""
    return {
        "id": credential.id, "kind": credential.kind, "name": credential.name,
        "created_at": credential.created_at, "expires_at": credential.expires_at,
        "revoked_at": credential.revoked_at, "last_used_at": last_used,
        "state": credential.state(now), "source": credential.source,
    }  # fmt: skip


def public_tenant(record: TenantRecord) -> dict[str, object]:
    """A tenant without its credentials' secrets (for responses and the audit log)."""
    return {
        "id": record.id, **record.spec.model_dump(), "source": record.source,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "revision": record.revision,
        "credentials": [
            {k: v for k, v in c.model_dump().items()
             if k not in ("key_sha256", "secret_enc")}
            for c in record.credentials
        ],
    }  # fmt: skip


def spec_from_config(config: TenantConfig) -> TenantSpec:
    return TenantSpec.model_validate(config.model_dump(exclude={"key_sha256", "access_keys"}))


def credentials_from_config(config: TenantConfig, now: float) -> tuple[Credential, ...]:
    bearer = tuple(
        Credential(id=f"bk-{d[:16]}", kind="bearer", name=f"config-key-{i}", created_at=now,
                   source="config", key_sha256=d)
        for i, d in enumerate(config.key_sha256, 1)
    )  # fmt: skip
    pairs = tuple(
        Credential(id=p.id, kind="sigv4", name=f"config-{p.id}", created_at=now,
                   source="config", secret_env=p.secret_env)
        for p in config.access_keys
    )  # fmt: skip
    return bearer + pairs
