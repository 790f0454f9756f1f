"""The Service Quotas stand-in under real uvicorn, driven by boto3's service-quotas client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import httpx
import pytest
from botocore.exceptions import ClientError

from gateway.simulator import SimulatorConfig, create_simulator_app
from gateway.simulator.servicequotas import quota_code
from tests.servers import ServerThread

ON_DEMAND = "On-demand InvokeModel tokens per minute for Anthropic Claude Sonnet 4.5 V1"
CROSS = "Cross-Region InvokeModel tokens per minute for Anthropic Claude Sonnet 4.5 V1"
DAILY = "Model invocation max tokens per day for Anthropic Claude Sonnet 4.5 V1"
NOVA = "On-demand model inference tokens per minute for Amazon Nova Lite"
QUOTAS: list[dict[str, Any]] = [
    {"quota_name": ON_DEMAND, "value": 400_000, "quota_code": "L-F4DDD3EB"},
    {"quota_name": CROSS, "value": 800_000},
    {"quota_name": DAILY, "value": 576_000_000, "adjustable": False},
    {"quota_name": NOVA, "value": 2_000_000, "region": "us-east-1"},
    {"quota_name": ON_DEMAND, "value": 100_000, "region": "eu-west-1"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    config = SimulatorConfig.model_validate({"latency": {"ttft_ms": 0}, "service_quotas": QUOTAS})
    with ServerThread(create_simulator_app(config)) as running:
        yield running


def quotas_client(server: ServerThread, region: str = "us-east-1") -> Any:
    return boto3.client(
        "service-quotas",
        region_name=region,
        endpoint_url=server.url,
        aws_access_key_id="AKIDSIMULATOR",
        aws_secret_access_key="secret",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def paginate(client: Any, operation: str = "list_service_quotas", **params: Any) -> list[Any]:
    return list(client.get_paginator(operation).paginate(ServiceCode="bedrock", **params))


def test_paginator_walks_every_page_one_row_at_a_time(server: ServerThread) -> None:
    pages = paginate(quotas_client(server), PaginationConfig={"PageSize": 1})
    assert [len(p["Quotas"]) for p in pages] == [1, 1, 1, 1]
    assert [p["Quotas"][0]["QuotaName"] for p in pages] == [ON_DEMAND, CROSS, DAILY, NOVA]
    assert "NextToken" not in pages[-1]
    assert all("NextToken" in p for p in pages[:-1])


def test_pages_of_two_and_a_single_page_by_default(server: ServerThread) -> None:
    client = quotas_client(server)
    assert [len(p["Quotas"]) for p in paginate(client, PaginationConfig={"PageSize": 2})] == [2, 2]
    reply = client.list_service_quotas(ServiceCode="bedrock")
    assert len(reply["Quotas"]) == 4
    assert "NextToken" not in reply


def test_row_shape(server: ServerThread) -> None:
    rows = quotas_client(server).list_service_quotas(ServiceCode="bedrock")["Quotas"]
    first, daily = rows[0], rows[2]
    assert first == {
        "ServiceCode": "bedrock",
        "ServiceName": "Amazon Bedrock",
        "QuotaArn": "arn:aws:servicequotas:us-east-1:123456789012:bedrock/L-F4DDD3EB",
        "QuotaCode": "L-F4DDD3EB",
        "QuotaName": ON_DEMAND,
        "Value": 400_000.0,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
        "QuotaAppliedAtLevel": "ACCOUNT",
    }
    assert daily["QuotaCode"] == quota_code(DAILY)
    assert daily["QuotaCode"].startswith("L-")
    assert len(daily["QuotaCode"]) == 10
    assert daily["Adjustable"] is False
    assert isinstance(daily["Value"], float)


def test_rows_follow_the_region_of_the_credential_scope(server: ServerThread) -> None:
    rows = quotas_client(server, "eu-west-1").list_service_quotas(ServiceCode="bedrock")["Quotas"]
    by_name = {r["QuotaName"]: r for r in rows}
    assert set(by_name) == {ON_DEMAND, CROSS, DAILY}  # Nova's row is us-east-1 only
    assert by_name[ON_DEMAND]["Value"] == 100_000.0  # eu-west-1's own row beats the default
    assert by_name[ON_DEMAND]["QuotaArn"].startswith("arn:aws:servicequotas:eu-west-1:")


def test_default_quotas_list_the_same_rows(server: ServerThread) -> None:
    client = quotas_client(server)
    pages = paginate(client, "list_aws_default_service_quotas", PaginationConfig={"PageSize": 3})
    assert [len(p["Quotas"]) for p in pages] == [3, 1]


def test_quota_code_filter(server: ServerThread) -> None:
    reply = quotas_client(server).list_service_quotas(ServiceCode="bedrock", QuotaCode="L-F4DDD3EB")
    assert [r["QuotaName"] for r in reply["Quotas"]] == [ON_DEMAND]


def test_other_service_codes_have_no_rows(server: ServerThread) -> None:
    reply = quotas_client(server).list_service_quotas(ServiceCode="ec2")
    assert reply["Quotas"] == []
    assert "NextToken" not in reply


def test_a_bad_next_token_is_refused(server: ServerThread) -> None:
    with pytest.raises(ClientError) as caught:
        quotas_client(server).list_service_quotas(ServiceCode="bedrock", NextToken="not-a-token")
    assert caught.value.response["Error"]["Code"] == "InvalidPaginationTokenException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def raw_call(server: ServerThread, target: str, body: bytes) -> httpx.Response:
    headers = {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"}
    return httpx.post(server.url + "/", headers=headers, content=body, timeout=10)


def test_unknown_operation_is_a_json_error(server: ServerThread) -> None:
    response = raw_call(server, "ServiceQuotasV20190624.GetServiceQuota", b"{}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-amz-json-1.1"
    assert response.json()["__type"] == "UnknownOperationException"
    assert "GetServiceQuota" in response.json()["message"]
    other = raw_call(server, "AmazonSSM.GetParameter", b"{}")
    assert other.status_code == 400
    assert other.json()["__type"] == "UnknownOperationException"


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (b"not json", "SerializationException"),
        (b"[]", "SerializationException"),
        (b"{}", "IllegalArgumentException"),
        (b'{"ServiceCode": "bedrock", "MaxResults": 0}', "IllegalArgumentException"),
        (b'{"ServiceCode": "bedrock", "MaxResults": 101}', "IllegalArgumentException"),
    ],
)
def test_malformed_requests(server: ServerThread, body: bytes, error_type: str) -> None:
    response = raw_call(server, "ServiceQuotasV20190624.ListServiceQuotas", body)
    assert response.status_code == 400
    assert response.json()["__type"] == error_type


def test_unsigned_requests_use_the_default_region(server: ServerThread) -> None:
    response = raw_call(
        server, "ServiceQuotasV20190624.ListServiceQuotas", b'{"ServiceCode": "bedrock"}'
    )
    assert response.status_code == 200
    assert len(response.json()["Quotas"]) == 4  # default_region us-east-1


def test_config_rejects_a_malformed_quota_code() -> None:
    with pytest.raises(ValueError, match="quota_code"):
        SimulatorConfig.model_validate(
            {"service_quotas": [{"quota_name": "x", "value": 1, "quota_code": "Q-1"}]}
        )
