"""The ``bedrock-gateway`` command: serve, simulator, demo, check-config, hash-key, quotas, and
the admin API's tenants, usage and pools (``gateway/admin_cli.py``)."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, GatewayConfig, load_config


def _load(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"bedrock-gateway: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    from gateway.preflight import StartupError
    from gateway.server import serve

    config = _load(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers), ("http", args.http))
                 if v is not None}  # fmt: skip
    if overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    try:
        serve(config, args.config)
    except StartupError as exc:
        print(f"bedrock-gateway: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"bedrock-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.path)
    if args.env:
        from gateway.preflight import environment_problems

        problems = environment_problems(config, os.environ)
        for problem in problems:
            print(f"bedrock-gateway: {args.path}: {problem}", file=sys.stderr)
        if problems:
            return 2
    print(f"{args.path}: OK ({len(config.models)} models, {len(config.accounts)} accounts, "
          f"{len(config.tenants)} tenants)")  # fmt: skip
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from gateway.auth import hash_key

    key = args.key
    if key == "-":
        key = getpass.getpass("API key: ")
    elif key is None:
        key = "gwk-" + secrets.token_urlsafe(32)
        print(f"key:        {key}")
    print(f"key_sha256: {hash_key(key)}")
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from gateway.simulator.cli import run

    return run(args)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.config, args.duration)


def _quotas_sync(args: argparse.Namespace) -> int:
    from gateway.quotas.command import run_sync

    return run_sync(args.config, write=args.write, environ=os.environ, out=sys.stdout,
                    err=sys.stderr)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bedrock-gateway", description="Rate-limiting gateway for Amazon Bedrock Runtime."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument(
        "--http", choices=("auto", "h1"),
        help="auto: HTTP/1.1 + HTTP/2 (granian); h1: HTTP/1.1 only (uvicorn)",
    )  # fmt: skip
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate a configuration file offline")
    check.add_argument("path")
    check.add_argument("--env", action="store_true",
                       help="also check that every environment variable the file names for "
                            "secrets, keys and the Redis URL is set, as serve needs")  # fmt: skip
    check.set_defaults(func=_check_config)

    hash_key = sub.add_parser(
        "hash-key", help="print the key_sha256 of an API key (a new key if none given)"
    )
    hash_key.add_argument("key", nargs="?", help="the key, or - to read it without echo")
    hash_key.set_defaults(func=_hash_key)

    simulator = sub.add_parser("simulator", help="run the local Bedrock Runtime simulator")
    from gateway.simulator.cli import add_arguments

    add_arguments(simulator)
    simulator.set_defaults(func=_simulator)

    demo = sub.add_parser("demo", help="simulator + gateway + a few real boto3 calls")
    demo.add_argument("--config", default="config/demo.yaml")
    demo.add_argument(
        "--duration", type=float, default=None,
        help="exit after this many seconds (default: serve until Ctrl-C)",
    )  # fmt: skip
    demo.set_defaults(func=_demo)

    quotas = sub.add_parser("quotas", help="compare route quotas with AWS Service Quotas")
    quotas_sub = quotas.add_subparsers(dest="quotas_command", required=True)
    sync = quotas_sub.add_parser(
        "sync",
        help="show where route tpm/rpm/tokens_per_day differ from the applied quotas",
        description="Exit 0: in sync (or written); 1: differences and no --write; 2: error.",
    )
    sync.add_argument("--config", required=True, help="YAML configuration file")
    sync.add_argument(
        "--write", action="store_true", help="update the file (comments and layout kept)"
    )
    sync.set_defaults(func=_quotas_sync)

    from gateway.admin_cli import add_commands

    add_commands(sub)  # tenants, usage, pools: clients of a running gateway's admin API
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
