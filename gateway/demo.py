"""``bedrock-gateway demo``: the simulator and the gateway on free ports, a few real boto3 calls.

Everything runs in this one process on loopback with the embedded setup; it prints what a user
needs to point their own boto3 at the gateway, then serves until Ctrl-C or ``--duration``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
import yaml

from gateway.api.app import create_app
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.server import configure_logging
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig

_DEMO_ENV = (
    "DEMO_UPSTREAM_ACCESS_KEY_ID",
    "DEMO_UPSTREAM_SECRET_ACCESS_KEY",
    "GATEWAY_DEMO_SECRET",
)


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def port(self) -> int:
        return int(self.servers[0].sockets[0].getsockname()[1])


async def start(app: Any, host: str = "127.0.0.1") -> tuple[EmbeddedServer, asyncio.Task[None]]:
    server = EmbeddedServer(uvicorn.Config(app, host=host, port=0, log_level="warning",
                                           access_log=False, lifespan="on"))  # fmt: skip
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.01)
    return server, task


def _gateway_config(path: str, simulator_url: str) -> GatewayConfig:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for account in data.get("accounts", {}).values():
        account["endpoint_url"] = simulator_url
    return parse_config(data, path)


def _calls(endpoint: str, key_id: str, secret: str) -> list[str]:
    """A few real boto3 calls through the gateway; returns the lines to print."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=endpoint,
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip
    lines = []
    messages = [{"role": "user", "content": [{"text": "Hello through the gateway!"}]}]
    reply = client.converse(
        modelId="claude-sonnet", messages=messages, inferenceConfig={"maxTokens": 64}
    )
    route = reply["ResponseMetadata"]["HTTPHeaders"].get("x-gateway-route")
    lines.append(f"converse(claude-sonnet) -> usage {reply['usage']}  route {route}")
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Summarise the gateway in one line."}],
    }
    for model in ("anthropic.claude-3-5-haiku-20241022-v1:0",
                  "us.anthropic.claude-sonnet-4-20250514-v1:0"):  # fmt: skip
        answer = client.invoke_model(modelId=model, body=json.dumps(body))
        headers = answer["ResponseMetadata"]["HTTPHeaders"]
        usage = json.loads(answer["body"].read())["usage"]
        lines.append(f"invoke_model({model}) -> usage {usage}  route {headers['x-gateway-route']}")
    impostor = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=endpoint,
        aws_access_key_id=key_id, aws_secret_access_key="not-the-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip
    try:
        impostor.converse(modelId="claude-sonnet", messages=messages)
    except impostor.exceptions.AccessDeniedException as exc:
        lines.append(f"a wrong secret -> AccessDeniedException: {exc.response['Error']['Message']}")
    return lines


def _banner(endpoint: str, key_id: str, secret: str, simulator: str) -> str:
    return f"""
bedrock-gateway demo
  gateway    {endpoint}
  simulator  {simulator}   (stats: {simulator}/_simulator/stats)
  metrics    {endpoint}/metrics

Point your own boto3 at the gateway (only the endpoint and the credentials change):

  import boto3
  client = boto3.client(
      "bedrock-runtime", region_name="us-east-1", endpoint_url="{endpoint}",
      aws_access_key_id="{key_id}", aws_secret_access_key="{secret}")
  client.converse(modelId="claude-sonnet",
                  messages=[{{"role": "user", "content": [{{"text": "Hi"}}]}}])
"""


async def _demo(config_path: str, duration: float | None) -> int:
    for name in _DEMO_ENV:
        os.environ.setdefault(name, "GWDEMO" + secrets.token_hex(8).upper())
    simulator, sim_task = await start(create_simulator_app(SimulatorConfig(port=0)))
    sim_url = f"http://127.0.0.1:{simulator.port}"
    config = _gateway_config(config_path, sim_url)
    gateway, gw_task = await start(create_app(config), config.server.host)
    endpoint = f"http://{config.server.host}:{gateway.port}"
    key = config.tenants["demo"].access_keys[0]
    secret = os.environ[key.secret_env]
    try:
        for line in await asyncio.to_thread(_calls, endpoint, key.id, secret):
            print(line)
        print(_banner(endpoint, key.id, secret, sim_url), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"Serving for {duration:g} s." if duration else "Serving until Ctrl-C.", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
    finally:
        for server in (gateway, simulator):
            server.should_exit = True
        await asyncio.gather(gw_task, sim_task)
    print("demo stopped")
    return 0


def run_demo(config_path: str, duration: float | None) -> int:
    configure_logging("WARNING")
    try:
        return asyncio.run(_demo(config_path, duration))
    except ConfigError as exc:
        print(f"bedrock-gateway demo: {exc}", file=sys.stderr)
        return 2
