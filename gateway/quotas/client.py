"""The one module here that calls AWS: ``service-quotas`` ``ListServiceQuotas`` for
``bedrock``, per account and per region its routes use, with the account's own credentials.

Credentials are opened by ``gateway.upstream.credentials`` exactly as for Bedrock calls; the
account's ``endpoint_url`` (the simulator, in tests) receives these calls too. Every botocore
failure leaves this module as a ``QuotaFetchError`` naming the account and region.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import AccountConfig, ConfigError, GatewayConfig
from gateway.quotas.sync import QuotaRow
from gateway.upstream.credentials import open_source

SERVICE_CODE = "bedrock"
_CLIENT_CONFIG = Config(
    connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
)


class QuotaFetchError(Exception):
    """The applied quotas could not be read; the message says where and why."""


def regions_by_account(config: GatewayConfig) -> dict[str, list[str]]:
    """The source regions each account's routes use, sorted; accounts without routes left out."""
    regions: dict[str, set[str]] = {}
    for model in config.models.values():
        for route in model.routes:
            regions.setdefault(route.account, set()).add(route.region)
    return {account: sorted(found) for account, found in sorted(regions.items())}


async def fetch_rows(
    config: GatewayConfig, environ: Mapping[str, str], timeout_s: float = 120.0
) -> list[QuotaRow]:
    """Every ``bedrock`` quota row of every (account, region) the routes use."""
    rows: list[QuotaRow] = []
    for name, regions in regions_by_account(config).items():
        account = config.accounts[name]
        for region in regions:
            rows += await _fetch(name, account, region, environ, timeout_s)
    return rows


async def _fetch(
    name: str, account: AccountConfig, region: str, environ: Mapping[str, str], timeout_s: float
) -> list[QuotaRow]:
    where = f"account {name}, region {region}"
    try:
        async with asyncio.timeout(timeout_s):
            return await _list(name, account, region, environ)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
        hint = " (the credentials need servicequotas:ListServiceQuotas)" if (
            code in ("AccessDeniedException", "AccessDenied")) else ""  # fmt: skip
        raise QuotaFetchError(f"{where}: {code}: {message}{hint}") from None
    except BotoCoreError as exc:
        raise QuotaFetchError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise QuotaFetchError(f"{where}: {exc}") from None
    except KeyError as exc:  # external_id_env named but not set
        raise QuotaFetchError(f"{where}: environment variable {exc} is not set") from None
    except TimeoutError:
        raise QuotaFetchError(f"{where}: no answer within {timeout_s:g} s") from None


async def _list(
    name: str, account: AccountConfig, region: str, environ: Mapping[str, str]
) -> list[QuotaRow]:
    credentials = await (await open_source(name, account, environ)).get()
    session = aioboto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        region_name=region,
    )
    rows: list[QuotaRow] = []
    async with session.client(
        "service-quotas", endpoint_url=account.endpoint_url, config=_CLIENT_CONFIG
    ) as client:
        paginator = client.get_paginator("list_service_quotas")
        async for page in paginator.paginate(ServiceCode=SERVICE_CODE):
            rows += [
                QuotaRow(name, region, q["QuotaName"], q.get("QuotaCode", ""), float(q["Value"]))
                for q in page.get("Quotas", [])
                if "Value" in q and "QuotaName" in q
            ]
    return rows
