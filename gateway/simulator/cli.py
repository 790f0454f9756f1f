"""``bedrock-gateway simulator``: flags, config loading, and serving the app with uvicorn."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pydantic
import uvicorn
import yaml

from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="YAML file of SimulatorConfig fields")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 9100)")
    parser.add_argument("--mode", choices=["rolling", "bucket"], help="quota enforcement")
    parser.add_argument("--tpm", type=int, help="default tokens per minute of every pool")
    parser.add_argument("--rpm", type=int, help="default requests per minute (default: none)")
    parser.add_argument("--tokens-per-day", type=int, help="default tokens per day (default: none)")
    parser.add_argument("--ttft-ms", type=float, help="time to first token, ms")
    parser.add_argument("--token-ms", type=float, help="time per output token, ms")
    parser.add_argument("--default-output-tokens", type=int, help="output when none is asked for")
    parser.add_argument("--region", help="region of requests without a SigV4 credential scope")
    parser.add_argument(
        "--count-scale",
        type=float,
        help="count this x the built-in tokenizer's input tokens (1.05: 5%% more)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The YAML file (if any) with every flag that was given laid over it."""
    quota = _given(tpm=args.tpm, rpm=args.rpm, tokens_per_day=args.tokens_per_day)
    latency = _given(ttft_ms=args.ttft_ms, per_output_token_ms=args.token_ms)
    overrides = _given(
        host=args.host,
        port=args.port,
        mode=args.mode,
        default_region=args.region,
        default_output_tokens=args.default_output_tokens,
    )
    if quota:
        overrides["default_quota"] = quota
    if latency:
        overrides["latency"] = latency
    if args.count_scale is not None:
        overrides["counting"] = {"scale": args.count_scale}
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (OSError, ValueError, yaml.YAMLError, pydantic.ValidationError) as error:
        print(f"simulator: bad configuration: {error}", file=sys.stderr)
        return 2
    app = create_simulator_app(config)
    print(
        f"Bedrock simulator on http://{config.host}:{config.port} "
        f"(mode {config.mode}, default TPM {config.default_quota.tpm})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # An AWS endpoint keeps an idle connection far longer than the gateway's client does
        # (aiohttp drops its own after 15 s); uvicorn's 5 s would race the gateway's reuse.
        timeout_keep_alive=75,
    )
    return 0


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
