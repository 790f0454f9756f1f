"""Tenant authentication: SigV4 with gateway-issued key pairs, or a bearer API key.

Bearer keys are held only as SHA-256 digests; SigV4 secrets are held in memory only, opened
by the tenant registry (gateway/tenancy/registry.py) from the environment or from their
sealed form in the store. Every failure, a revoked or expired key too, is an ``AccessDenied``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway import sigv4
from gateway.errors import AccessDenied

AsgiHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    models: frozenset[str] | None
    batch: bool = False
    """Its requests queue as batch traffic (after every interactive request)."""
    max_wait_s: float | None = None

    def may_use(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request, and how they proved it."""

    tenant: Tenant
    method: Literal["sigv4", "bearer"]
    key_id: str
    """The access key id, or the first 12 hex digits of the bearer key's digest (for logs)."""
    region: str | None
    """The region the client signed for (SigV4 only)."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What authentication needs from a request."""

    method: str
    raw_path: str
    raw_query: str
    headers: AsgiHeaders
    body_sha256: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Key:
    """One credential as the data plane checks it."""

    tenant: Tenant
    credential: str
    """The credential's id (an access key id, or ``bk-`` + 16 hex digits of the digest)."""
    expires_at: float | None = None
    revoked_at: float | None = None
    secret: str = ""
    """The SigV4 secret (empty for a bearer key)."""


@dataclass(frozen=True, slots=True)
class Directory:
    """Every credential the gateway accepts, built whole and swapped whole on each change."""

    bearer: Mapping[str, Key]
    """By SHA-256 hex digest of the bearer key."""
    pairs: Mapping[str, Key]
    """By SigV4 access key id."""


class Authenticator:
    """Checks a request against ``directory()``: in-process lookups only, no store call.
    ``on_use`` hears the credential id and time of each success (for last-used times)."""

    def __init__(
        self,
        directory: Callable[[], Directory],
        clock: Callable[[], float],
        max_skew_s: float,
        on_use: Callable[[str, float], None] | None = None,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._max_skew_s = max_skew_s
        self._on_use = on_use
        self._keys = sigv4.SigningKeys()

    def authenticate(self, request: RequestFacts) -> Caller:
        authorization = _header(request.headers, b"authorization")
        if authorization is None:
            raise AccessDenied("Missing Authentication Token: sign the request with SigV4 or "
                               "send Authorization: Bearer <gateway key>.")  # fmt: skip
        if authorization[:7].lower() == "bearer ":
            return self._bearer_caller(authorization[7:].strip())
        return self._sigv4_caller(authorization, request)

    def _bearer_caller(self, key: str) -> Caller:
        digest = hash_key(key)
        # The table is keyed by SHA-256 digests, which a caller cannot steer byte by byte, so the
        # lookup's timing tells nothing about stored keys.
        entry = self._directory().bearer.get(digest)
        if entry is None:
            raise AccessDenied("The API key is not valid for this gateway.")
        self._usable(entry, "The API key")
        return Caller(entry.tenant, "bearer", digest[:12], None)

    def _sigv4_caller(self, authorization: str, request: RequestFacts) -> Caller:
        try:
            auth = sigv4.parse_authorization(authorization)
        except sigv4.SigV4Error as exc:
            raise AccessDenied(f"Authorization header is malformed: {exc}") from None
        entry = self._directory().pairs.get(auth.access_key_id)
        if entry is None:
            raise AccessDenied("The security token included in the request is invalid: "
                               "unknown access key id.")  # fmt: skip
        if auth.service != "bedrock":
            raise AccessDenied(f"Credential should be scoped to service 'bedrock', "
                               f"not {auth.service[:32]!r}.")  # fmt: skip
        headers: dict[str, list[str]] = {}
        wanted = set(auth.signed_headers) | {"x-amz-date", "host"}
        for name, value in request.headers:
            key = name.decode("latin-1")
            if key in wanted:
                headers.setdefault(key, []).append(value.decode("latin-1"))
        try:
            sigv4.verify(
                auth, entry.secret, method=request.method, raw_path=request.raw_path,
                raw_query=request.raw_query, headers=headers,
                payload_hash=_payload_hash(headers, request.body_sha256),
                now=self._clock(), max_skew_s=self._max_skew_s, keys=self._keys,
            )  # fmt: skip
        except sigv4.SigV4Error as exc:
            raise AccessDenied(str(exc)) from None
        # Only a caller who holds the secret learns that the key was revoked or has expired.
        self._usable(entry, f"The access key {auth.access_key_id}")
        return Caller(entry.tenant, "sigv4", auth.access_key_id, auth.region)

    def _usable(self, entry: Key, what: str) -> None:
        now = self._clock()
        if entry.revoked_at is not None:
            raise AccessDenied(f"{what} was revoked; ask the platform team for a new one.")
        if entry.expires_at is not None and entry.expires_at <= now:
            raise AccessDenied(f"{what} has expired; ask the platform team for a new one.")
        if self._on_use is not None:
            self._on_use(entry.credential, now)


def _payload_hash(headers: Mapping[str, list[str]], body_sha256: str) -> str:
    claimed = headers.get("x-amz-content-sha256")
    if claimed and claimed[0] != body_sha256:
        raise AccessDenied("The provided x-amz-content-sha256 does not match the request body.")
    return body_sha256


def _header(headers: AsgiHeaders, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
