"""AWS credentials per account, for signing upstream calls.

Static keys from the environment, a named profile, the default chain, or a role assumed
through STS. aiobotocore's refreshable credentials renew before expiry; the frozen copy is
fetched at most every ``recheck_s`` so the hot path rarely awaits anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import aioboto3
from aiobotocore.credentials import AioRefreshableCredentials

from gateway.config import AccountConfig, ConfigError
from gateway.sigv4 import Credentials


class CredentialSource(Protocol):
    async def get(self) -> Credentials: ...


class StaticSource:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def get(self) -> Credentials:
        return self._credentials


class BotocoreSource:
    """Wraps aiobotocore credentials (possibly refreshable); rechecks them periodically."""

    def __init__(
        self, provider: Any, clock: Callable[[], float] = time.monotonic, recheck_s: float = 30.0
    ) -> None:
        self._provider = provider
        self._clock = clock
        self._recheck_s = recheck_s
        self._cached: Credentials | None = None
        self._recheck_at = 0.0

    async def get(self) -> Credentials:
        now = self._clock()
        if self._cached is None or now >= self._recheck_at:
            frozen = await self._provider.get_frozen_credentials()
            self._cached = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
            self._recheck_at = now + self._recheck_s
        return self._cached


def _static(name: str, account: AccountConfig, environ: Mapping[str, str]) -> Credentials | None:
    if account.access_key_id_env is None or account.secret_access_key_env is None:
        return None
    values = []
    for var in (account.access_key_id_env, account.secret_access_key_env):
        value = environ.get(var)
        if not value:
            raise ConfigError(f"accounts.{name}: environment variable {var} is not set")
        values.append(value)
    token = environ.get(account.session_token_env) if account.session_token_env else None
    return Credentials(values[0], values[1], token)


async def _assume_role(
    session: aioboto3.Session, account: AccountConfig, environ: Mapping[str, str]
) -> AioRefreshableCredentials:
    params: dict[str, Any] = {
        "RoleArn": account.role_arn,
        "RoleSessionName": account.role_session_name,
    }
    if account.external_id_env:
        params["ExternalId"] = environ[account.external_id_env]

    async def refresh() -> dict[str, str]:
        async with session.client("sts") as sts:
            reply = await sts.assume_role(**params)
        creds = reply["Credentials"]
        expiry: datetime = creds["Expiration"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry.isoformat(),
        }

    return AioRefreshableCredentials.create_from_metadata(
        metadata=await refresh(), refresh_using=refresh, method="sts-assume-role"
    )


async def open_source(
    name: str, account: AccountConfig, environ: Mapping[str, str]
) -> CredentialSource:
    """The credential source for one account; raises ConfigError when none can be found."""
    static = _static(name, account, environ)
    if static is not None:
        return StaticSource(static)
    session = aioboto3.Session(profile_name=account.profile)
    if account.role_arn:
        return BotocoreSource(await _assume_role(session, account, environ))
    provider = await session.get_credentials()
    if provider is None:
        raise ConfigError(f"accounts.{name}: no AWS credentials found (profile "
                          f"{account.profile or 'default chain'})")  # fmt: skip
    return BotocoreSource(provider)
