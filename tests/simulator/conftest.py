"""Shared helpers: a manual clock and an in-process client for the simulator app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import boto3
import botocore.config
import httpx
import orjson
import pytest

from gateway.simulator import SimulatorApp, SimulatorConfig, create_simulator_app
from tests.servers import ServerThread


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def messages_body(text: str = "Hello there", max_tokens: int = 100, **extra: Any) -> bytes:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    return orjson.dumps(body)


def converse_body(text: str = "Hello there", max_tokens: int | None = 100) -> bytes:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": text}]}]}
    if max_tokens is not None:
        body["inferenceConfig"] = {"maxTokens": max_tokens}
    return orjson.dumps(body)


SimFactory = Callable[..., tuple[SimulatorApp, httpx.AsyncClient]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """``make_sim(**config)`` → (app, client) on a manual clock at 1000 s, wall 1.8e9."""
    clients: list[httpx.AsyncClient] = []

    def make(
        clock: ManualClock | None = None, wall: ManualClock | None = None, **config: Any
    ) -> tuple[SimulatorApp, httpx.AsyncClient]:
        settings = SimulatorConfig.model_validate({"latency": {"ttft_ms": 0}, **config})
        app = create_simulator_app(
            settings, clock=clock or ManualClock(), wall=wall or ManualClock(1.8e9)
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
        clients.append(client)
        return app, client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def sim(server: ServerThread) -> Iterator[httpx.Client]:
    """A control client on a freshly reset simulator (``server`` comes from the test module)."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/_simulator/reset", params={"config": "1"}).status_code == 200
        yield client


@pytest.fixture
def bedrock(server: ServerThread) -> Any:
    """A boto3 client on the module's simulator that never retries."""
    # total_max_attempts, not max_attempts: in botocore's legacy mode the latter counts retries.
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=botocore.config.Config(retries={"total_max_attempts": 1}, max_pool_connections=16),
    )
