"""Calls the gateway with the boto3 of tests/clients/requirements.txt (run by its own venv).

Reads one JSON object on stdin: {"endpoint", "calls", and "key_id" + "secret" (SigV4) or
"ca" (https; the bearer key comes from AWS_BEARER_TOKEN_BEDROCK)}; makes ``calls`` Converse
calls one after the other and prints what the client saw of each. No imports from the
gateway: this is a service's code, unchanged but for the endpoint and the credentials.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

MESSAGES = [{"role": "user", "content": [{"text": "hello [sim:output_tokens=20]"}]}]


def converse(client: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        reply = client.converse(
            modelId="claude-haiku", messages=MESSAGES, inferenceConfig={"maxTokens": 20}
        )
    except ClientError as exc:
        meta = exc.response["ResponseMetadata"]
        return {
            "error": exc.response["Error"]["Code"],
            "modeled": type(exc).__name__,
            "retries": meta.get("RetryAttempts"),
            "elapsed": time.monotonic() - started,
        }
    return {
        "outputTokens": reply["usage"]["outputTokens"],
        "retries": reply["ResponseMetadata"]["RetryAttempts"],
        "elapsed": time.monotonic() - started,
    }


def main() -> None:
    args = json.load(sys.stdin)
    kwargs: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": args["endpoint"]}
    if args.get("ca"):
        kwargs["verify"] = args["ca"]
    if args.get("key_id"):
        kwargs.update(aws_access_key_id=args["key_id"], aws_secret_access_key=args["secret"])
    # the SDK's defaults (standard retries, 3 attempts), as an unmodified service has them
    client = boto3.client("bedrock-runtime", config=Config(read_timeout=30), **kwargs)
    calls = [converse(client) for _ in range(args["calls"])]
    print(json.dumps({"botocore": botocore.__version__, "calls": calls}))


if __name__ == "__main__":
    main()
