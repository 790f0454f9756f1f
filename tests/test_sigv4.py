"""SigV4 verification and signing agree with botocore's own signer, byte for byte."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from gateway import sigv4

SECRET = "gw-secret-0123456789abcdef0123456789abcdef"
KEY_ID = "GWTESTKEY0000000001"
BODY = b'{"max_tokens": 10, "messages": []}'

PATHS = [
    "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
    "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse",
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc/invoke",
    # the Anthropic SDK's form: a literal ':' and an encoded '/'
    "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.x-v1:0/invoke",
]


def _botocore_signed(path: str, body: bytes = BODY, query: str = "") -> AWSRequest:
    url = f"http://127.0.0.1:8080{path}" + (f"?{query}" if query else "")
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": "t"},
    )
    SigV4Auth(BotoCredentials(KEY_ID, SECRET), "bedrock", "us-east-1").add_auth(request)
    return request


def _verify(request: AWSRequest, body: bytes, now: float | None = None) -> None:
    parts = urlsplit(request.url)
    headers: dict[str, list[str]] = {"host": [parts.netloc]}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    auth = sigv4.parse_authorization(request.headers["Authorization"])
    amz = sigv4.parse_amz_date(request.headers["X-Amz-Date"])
    sigv4.verify(
        auth,
        SECRET,
        method="POST",
        raw_path=parts.path,
        raw_query=parts.query,
        headers=headers,
        payload_hash=hashlib.sha256(body).hexdigest(),
        now=amz if now is None else now,
        max_skew_s=300,
        keys=sigv4.SigningKeys(),
    )


@pytest.mark.parametrize("path", PATHS)
def test_botocore_signatures_verify(path: str) -> None:
    _verify(_botocore_signed(path), BODY)


def test_query_strings_are_canonicalised_like_botocore() -> None:
    _verify(_botocore_signed(PATHS[0], query="b=2&a=1&a=0"), BODY)


def test_tampered_body_fails() -> None:
    with pytest.raises(sigv4.SigV4Error, match="does not match"):
        _verify(_botocore_signed(PATHS[0]), BODY + b" ")


def test_wrong_secret_fails() -> None:
    request = _botocore_signed(PATHS[0])
    request.headers.replace_header("Authorization", request.headers["Authorization"][:-4] + "0000")
    with pytest.raises(sigv4.SigV4Error, match="does not match"):
        _verify(request, BODY)


def test_stale_date_fails() -> None:
    request = _botocore_signed(PATHS[0])
    amz = sigv4.parse_amz_date(request.headers["X-Amz-Date"])
    _verify(request, BODY, now=amz + 299)
    with pytest.raises(sigv4.SigV4Error, match="expired"):
        _verify(request, BODY, now=amz + 301)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=a/b/c, Signature=x",
        "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/bedrock/x, SignedHeaders=h, Signature=1",
    ],
)
def test_malformed_authorization_is_rejected(header: str) -> None:
    with pytest.raises(sigv4.SigV4Error):
        sigv4.parse_authorization(header)


@pytest.mark.parametrize("path", PATHS[:3])
def test_our_upstream_signature_matches_botocore(path: str) -> None:
    """What we sign upstream is what botocore would have signed for the same request."""
    boto = _botocore_signed(path)
    now = sigv4.parse_amz_date(boto.headers["X-Amz-Date"])
    headers = {"host": "127.0.0.1:8080", "content-type": "application/json"}
    sigv4.sign(
        sigv4.Credentials(KEY_ID, SECRET),
        method="POST",
        raw_path=path,
        headers=headers,
        payload_hash=hashlib.sha256(BODY).hexdigest(),
        region="us-east-1",
        service="bedrock",
        now=now,
        keys=sigv4.SigningKeys(),
    )
    ours = sigv4.parse_authorization(headers["authorization"])
    theirs = sigv4.parse_authorization(boto.headers["Authorization"])
    assert ours.signed_headers == theirs.signed_headers == ("content-type", "host", "x-amz-date")
    assert ours.signature == theirs.signature
