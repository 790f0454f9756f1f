"""Wire details: model ids from raw paths, regions from SigV4 scopes, directives."""

from __future__ import annotations

import pytest

from gateway.errors import ValidationError
from gateway.simulator.directives import Directives, parse_directives
from gateway.simulator.wire import region_from_authorization, split_model_path

PROFILE = "us.anthropic.claude-3-haiku-20240307-v1:0"
ARN = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
            ("anthropic.claude-3-haiku-20240307-v1:0", "invoke"),
        ),
        (
            b"/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
            ("anthropic.claude-3-haiku-20240307-v1:0", "converse"),
        ),
        (
            b"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
            (ARN, "invoke"),
        ),
        (  # Anthropic SDK style: literal ':' and an encoded '/'
            b"/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1:0/invoke-with-response-stream",
            (ARN, "invoke-with-response-stream"),
        ),
        (b"/model/m/", ("m", "")),
        (b"/model//invoke", None),
        (b"/model/invoke", None),
        (b"/other/m/invoke", None),
    ],
)
def test_split_model_path(raw: bytes, expected: tuple[str, str] | None) -> None:
    assert split_model_path(raw) == expected


@pytest.mark.parametrize(
    ("value", "region"),
    [
        (
            b"AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-3/bedrock/aws4_request, "
            b"SignedHeaders=host;x-amz-date, Signature=abc",
            "eu-west-3",
        ),
        (b"Bearer bedrock-api-key-xyz", "default-1"),
        (None, "default-1"),
        (b"AWS4-HMAC-SHA256 Credential=broken", "default-1"),
        (b"AWS4-HMAC-SHA256 SignedHeaders=host", "default-1"),
    ],
)
def test_region_from_authorization(value: bytes | None, region: str) -> None:
    assert region_from_authorization(value, "default-1") == region


def test_directives_from_body_and_headers() -> None:
    body = b'{"content":"a [sim:output_tokens=12] b [sim:ttft_ms=2.5] [sim:stream_bad_crc=1]"}'
    headers = [(b"x-sim-output-tokens", b"99"), (b"x-sim-status", b"503"), (b"host", b"x")]
    assert parse_directives(body, headers) == Directives(
        output_tokens=12, status=503, ttft_ms=2.5, stream_bad_crc=True
    )


def test_last_directive_in_the_body_wins() -> None:
    body = b"[sim:output_tokens=1] later [sim:output_tokens=2]"
    assert parse_directives(body, []).output_tokens == 2


def test_no_directives_is_cheap_and_empty() -> None:
    assert parse_directives(b'{"max_tokens": 5}', [(b"host", b"x")]) == Directives()


@pytest.mark.parametrize(
    "body",
    [
        b"[sim:status=302]",
        b"[sim:output_tokens=many]",
        b"[sim:bogus=1]",
        b"[sim:stream_error=ThrottlingException]",
    ],
)
def test_bad_directives_are_validation_errors(body: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_directives(body, [])
