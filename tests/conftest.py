"""Shared fixtures: the simulator and the gateway as real uvicorn servers, boto3 clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gateway.api.app import create_app
from gateway.auth import hash_key
from gateway.config import GatewayConfig, parse_config
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig
from tests.servers import RedisServer, ServerThread

# Never let botocore's credential chain reach for the EC2 metadata service (no network here).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

SONNET = "anthropic.claude-sonnet-4-20250514-v1:0"
SONNET_PROFILE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
KEY_ID = "GWTESTTENANTKEY0001"
SECRET = "tenant-secret-for-tests-0123456789"
BEARER = "gwk-test-bearer-key-0123456789"
OTHER_KEY_ID = "GWTESTOTHERKEY00001"
ENVIRON = {
    "TEST_TENANT_SECRET": SECRET,
    "TEST_OTHER_SECRET": "other-secret-0123456789",
    "TEST_UPSTREAM_KEY": "AKIAUPSTREAMTEST0001",
    "TEST_UPSTREAM_SECRET": "upstream-secret",
}


def gateway_settings(upstream_url: str, **server: Any) -> dict[str, Any]:
    """A gateway config (as data) whose one account calls ``upstream_url``."""
    return {
        "server": {"port": 0, **server},
        "upstream": {"connect_timeout_s": 2, "read_timeout_s": 10},
        "accounts": {
            "test": {
                "access_key_id_env": "TEST_UPSTREAM_KEY",
                "secret_access_key_env": "TEST_UPSTREAM_SECRET",
                "endpoint_url": upstream_url,
            }
        },
        "models": {
            "claude-sonnet": {
                "model_id": SONNET,
                "output_burndown": 5,
                "routes": [
                    {"account": "test", "region": "us-east-1"},
                    {"account": "test", "region": "us-east-1", "profile": SONNET_PROFILE},
                ],
            },
            "claude-haiku": {
                "model_id": HAIKU,
                "routes": [{"account": "test", "region": "us-west-2"}],
            },
        },
        "tenants": {
            "team-a": {
                "key_sha256": hash_key(BEARER),
                "access_keys": [{"id": KEY_ID, "secret_env": "TEST_TENANT_SECRET"}],
            },
            "team-b": {
                "access_keys": [{"id": OTHER_KEY_ID, "secret_env": "TEST_OTHER_SECRET"}],
                "models": ["claude-haiku"],
            },
        },
    }


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole run; tests flush what they use."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def simulator() -> Iterator[ServerThread]:
    app = create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0}))
    with ServerThread(app) as server:
        yield server


def start_gateway(config: GatewayConfig, **kwargs: Any) -> ServerThread:
    return ServerThread(create_app(config, environ=ENVIRON, **kwargs)).start()


@pytest.fixture(scope="session")
def gateway(simulator: ServerThread) -> Iterator[ServerThread]:
    server = start_gateway(parse_config(gateway_settings(simulator.url)))
    yield server
    server.stop()


ClientFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def make_client() -> ClientFactory:
    def make(endpoint: str, key_id: str = KEY_ID, secret: str = SECRET, **kwargs: Any) -> Any:
        return boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
            **kwargs,
        )

    return make


@pytest.fixture
def client(gateway: ServerThread, make_client: ClientFactory) -> Any:
    return make_client(gateway.url)


def messages_body(text: str = "Hello there", max_tokens: int = 50) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
