"""A stand-in for the Service Quotas API (AWS JSON 1.1, ``POST /`` + ``X-Amz-Target``), enough
for ``list_service_quotas(ServiceCode="bedrock")`` and its boto3 paginator (docs/bedrock.md §7).

Rows come from ``SimulatorConfig.service_quotas``; the region is the SigV4 credential scope's,
as for Bedrock calls. Errors use the JSON protocol's ``{"__type", "message"}`` shape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import orjson

from gateway.errors import Headers
from gateway.simulator.asgi import Scope, header
from gateway.simulator.config import ServiceQuotaEntry, SimulatorConfig
from gateway.simulator.wire import region_from_authorization

TARGET_PREFIX = b"ServiceQuotasV20190624."
# Both list the same rows here: the simulator has no notion of an increase over a default.
LIST_OPERATIONS = frozenset({"ListServiceQuotas", "ListAWSDefaultServiceQuotas"})
SERVICE_CODE = "bedrock"
SERVICE_NAME = "Amazon Bedrock"
ACCOUNT_ID = "123456789012"
DEFAULT_MAX_RESULTS = 100
CONTENT_TYPE = b"application/x-amz-json-1.1"


class QuotasError(Exception):
    """A Service Quotas error, rendered as ``{"__type": ..., "message": ...}``."""

    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status


def service_quotas_operation(
    config: SimulatorConfig, scope: Scope, target: bytes, body: bytes, request_id: str
) -> tuple[int, Headers, bytes]:
    """Answer one Service Quotas call; every failure comes back in the JSON error shape."""
    try:
        _check_operation(target)
        params = _params(body)
        region = region_from_authorization(header(scope, b"authorization"), config.default_region)
        result = list_quotas(config, region, params)
    except QuotasError as error:
        payload = orjson.dumps({"__type": error.error_type, "message": error.message})
        return error.status, _headers(request_id, payload, error.error_type), payload
    payload = orjson.dumps(result)
    return 200, _headers(request_id, payload), payload


def list_quotas(config: SimulatorConfig, region: str, params: dict[str, Any]) -> dict[str, Any]:
    """One page of ``ListServiceQuotas``: ``MaxResults`` rows from the offset in ``NextToken``."""
    service = params.get("ServiceCode")
    if not isinstance(service, str) or not service:
        raise QuotasError("IllegalArgumentException", "ServiceCode is required.")
    limit = _max_results(params.get("MaxResults"))
    rows = rows_for(config, region) if service == SERVICE_CODE else []
    code = params.get("QuotaCode")
    if isinstance(code, str):
        rows = [row for row in rows if row["QuotaCode"] == code]
    start = _offset(params.get("NextToken"), len(rows))
    result: dict[str, Any] = {"Quotas": rows[start : start + limit]}
    if start + limit < len(rows):
        result["NextToken"] = _token(start + limit)
    return result


def rows_for(config: SimulatorConfig, region: str) -> list[dict[str, Any]]:
    """The rows of ``region`` in config order; a region's own row beats a region-less one."""
    own = {e.quota_name for e in config.service_quotas if e.region == region}
    entries = [
        e
        for e in config.service_quotas
        if e.region == region or (e.region is None and e.quota_name not in own)
    ]
    return [_row(entry, region) for entry in entries]


def quota_code(name: str) -> str:
    """A stable ``L-XXXXXXXX`` code for a row configured without one."""
    return "L-" + hashlib.sha256(name.encode()).hexdigest()[:8].upper()


def _row(entry: ServiceQuotaEntry, region: str) -> dict[str, Any]:
    code = entry.quota_code or quota_code(entry.quota_name)
    return {
        "ServiceCode": SERVICE_CODE,
        "ServiceName": SERVICE_NAME,
        "QuotaArn": f"arn:aws:servicequotas:{region}:{ACCOUNT_ID}:{SERVICE_CODE}/{code}",
        "QuotaCode": code,
        "QuotaName": entry.quota_name,
        "Value": float(entry.value),
        "Unit": "None",
        "Adjustable": entry.adjustable,
        "GlobalQuota": False,
        "QuotaAppliedAtLevel": "ACCOUNT",
    }


def _check_operation(target: bytes) -> None:
    prefix, dot, name = target.partition(b".")
    if prefix + dot != TARGET_PREFIX or name.decode("latin-1") not in LIST_OPERATIONS:
        raise QuotasError(
            "UnknownOperationException",
            f"The simulator does not implement {target.decode('latin-1')}.",
        )


def _params(body: bytes) -> dict[str, Any]:
    try:
        params = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise QuotasError("SerializationException", "The request body is not JSON.") from None
    if not isinstance(params, dict):
        raise QuotasError("SerializationException", "The request body must be a JSON object.")
    return params


def _max_results(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_RESULTS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise QuotasError("IllegalArgumentException", "MaxResults must be between 1 and 100.")
    return value


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: Any, total: int) -> int:
    if token is None:
        return 0
    invalid = QuotasError("InvalidPaginationTokenException", "Invalid pagination token.")
    if not isinstance(token, str):
        raise invalid
    try:
        label, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if label != "offset" or not 0 < offset < total:
        raise invalid
    return offset


def _headers(request_id: str, payload: bytes, error_type: str | None = None) -> Headers:
    headers: Headers = [
        (b"content-type", CONTENT_TYPE),
        (b"content-length", str(len(payload)).encode()),
        (b"x-amzn-requestid", request_id.encode()),
    ]
    if error_type is not None:
        headers.append((b"x-amzn-errortype", error_type.encode()))
    return headers
