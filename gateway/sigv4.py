"""AWS Signature Version 4, both directions: verify a client's signature, sign upstream calls.

Pure: no I/O, no clock (callers pass ``now``). One canonical-request builder serves both
directions, mirroring botocore's ``SigV4Auth`` for non-S3 services, including the second
percent-encoding of the already-encoded path (docs/bedrock.md §1).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SigV4Error(Exception):
    """The request's SigV4 authentication is malformed, stale or does not verify."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


class SigningKeys:
    """Derived signing keys, cached: they change once a day per (secret, region, service)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._max = max_entries

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        cache_key = (secret, date, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = _hmac(("AWS4" + secret).encode(), date)
            for part in (region, service, "aws4_request"):
                key = _hmac(key, part)
            if len(self._keys) >= self._max:
                self._keys.clear()
            self._keys[cache_key] = key
        return key


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def parse_authorization(value: str) -> ParsedAuthorization:
    """Split ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error(f"unsupported authorization scheme {algorithm[:32]!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, val = part.strip().partition("=")
        if sep:
            fields[name] = val
    try:
        credential, signed, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
    except KeyError as missing:
        raise SigV4Error(f"authorization header lacks {missing.args[0]}") from None
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise SigV4Error("malformed credential scope")
    return ParsedAuthorization(
        access_key_id=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=tuple(signed.split(";")),
        signature=signature.strip(),
    )


_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")


def parse_amz_date(value: str) -> float:
    """Seconds since the epoch of an ``X-Amz-Date`` value (``20261122T045500Z``). A regular
    expression and ``datetime`` (which checks the ranges): a third of ``time.strptime``'s cost,
    on every SigV4 request."""
    match = _AMZ_DATE.fullmatch(value)
    try:
        if match is None:
            raise ValueError
        y, mo, d, h, mi, sec = (int(part) for part in match.groups())
        return datetime.datetime(y, mo, d, h, mi, sec, tzinfo=datetime.UTC).timestamp()
    except ValueError:
        raise SigV4Error(f"malformed X-Amz-Date {value[:32]!r}") from None


def format_amz_date(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def canonical_query(raw_query: str) -> str:
    if not raw_query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in raw_query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_headers(headers: Mapping[str, list[str]], names: Iterable[str]) -> str:
    lines = []
    for name in names:
        values = headers.get(name)
        if values is None:
            raise SigV4Error(f"signed header {name!r} is missing")
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    signed_headers: tuple[str, ...],
    payload_hash: str,
    amz_date: str,
    scope: str,
) -> str:
    canonical = "\n".join(
        (
            method.upper(),
            quote(raw_path, safe="/~"),
            canonical_query(raw_query),
            canonical_headers(headers, signed_headers),
            ";".join(signed_headers),
            payload_hash,
        )
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def verify(
    auth: ParsedAuthorization,
    secret: str,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    payload_hash: str,
    now: float,
    max_skew_s: float,
    keys: SigningKeys,
) -> None:
    """Raise ``SigV4Error`` unless ``auth`` is a fresh, valid signature of this request.

    Over HTTP/2 the AWS SDK for JavaScript signs the ``:authority`` pseudo-header instead of
    ``host``; ASGI servers pass its value on as ``host``, so that is what it is checked against.
    """
    if ":authority" in auth.signed_headers and "host" in headers:
        headers = {**headers, ":authority": headers["host"]}
    elif "host" not in auth.signed_headers:
        raise SigV4Error("the host header must be signed")
    dates = headers.get("x-amz-date")
    if not dates or "x-amz-date" not in auth.signed_headers:
        raise SigV4Error("X-Amz-Date must be present and signed")
    amz_date = dates[0]
    if abs(now - parse_amz_date(amz_date)) > max_skew_s:
        raise SigV4Error("Signature expired: X-Amz-Date is too far from the gateway's time")
    if amz_date[:8] != auth.date:
        raise SigV4Error("the credential scope date does not match X-Amz-Date")
    sts = string_to_sign(
        method, raw_path, raw_query, headers, auth.signed_headers, payload_hash, amz_date,
        auth.scope,
    )  # fmt: skip
    key = keys.get(secret, auth.date, auth.region, auth.service)
    expected = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, auth.signature):
        raise SigV4Error("The request signature we calculated does not match the signature "
                         "you provided.")  # fmt: skip


def sign(
    creds: Credentials,
    *,
    method: str,
    raw_path: str,
    headers: dict[str, str],
    payload_hash: str,
    region: str,
    service: str,
    now: float,
    keys: SigningKeys,
) -> None:
    """Add ``x-amz-date``, ``x-amz-security-token`` and ``authorization`` to ``headers``.

    Every header already in ``headers`` (lower-case names, ``host`` included) is signed.
    """
    amz_date = format_amz_date(now)
    headers["x-amz-date"] = amz_date
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    names = tuple(sorted(headers))
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    multi = {k: [v] for k, v in headers.items()}
    sts = string_to_sign(method, raw_path, "", multi, names, payload_hash, amz_date, scope)
    key = keys.get(creds.secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
