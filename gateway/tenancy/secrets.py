"""Credentials at rest: new keys, bearer digests, SigV4 secrets sealed with Fernet.

The sealing keys come from the environment (``admin.secrets_key_env``), comma-separated: the
first seals, every one opens, so a key is rotated by putting a new one first and keeping the
old ones until every stored secret has been re-sealed or revoked. Only this module imports
``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway.config import ConfigError

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class SealingUnavailable(Exception):
    """No sealing key is configured, so no SigV4 secret can be stored."""


class Unsealable(Exception):
    """A stored secret could not be opened with any configured key."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_bearer_key() -> str:
    return "gwk-" + secrets.token_urlsafe(32)


def new_access_key_pair() -> tuple[str, str]:
    """(access key id, secret): ``GWAK`` + 16 base-32 characters, and 40 random characters."""
    key_id = "GWAK" + "".join(secrets.choice(_BASE32) for _ in range(16))
    return key_id, secrets.token_urlsafe(30)


def new_sealing_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Seals and opens SigV4 secrets; ``None`` keys mean no secret may be stored."""

    def __init__(self, keys: list[str] | None) -> None:
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], name: str) -> SecretBox:
        raw = environ.get(name, "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        for i, key in enumerate(keys):
            try:
                if len(base64.urlsafe_b64decode(key.encode())) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"admin.secrets_key_env: key {i + 1} in {name} is not a Fernet "
                                  f"key (32 url-safe base64-encoded bytes)") from None  # fmt: skip
        return cls(keys or None)

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            raise SealingUnavailable
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, token: str) -> str:
        if self._fernet is None:
            raise Unsealable("no sealing key is configured")
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise Unsealable("no configured key opens it") from None

    def reseal(self, token: str) -> str:
        """``token`` sealed again with the first (newest) key."""
        if self._fernet is None:
            raise Unsealable("no sealing key is configured")
        return self._fernet.rotate(token.encode()).decode()
