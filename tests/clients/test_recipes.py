"""Every recipe of docs/clients.md, taken out of the file as it stands and run unchanged against
``bedrock-gateway serve`` (the simulator as Bedrock; https with a certificate from a throwaway
CA): boto3 on botocore 1.40 (this venv) and 1.44 (the venv of tests/clients/requirements.txt),
aioboto3, AnthropicBedrock, langchain-aws 1.1.0 (this venv) and the newest (a venv of its own,
tests/clients/requirements-langchain.txt), and the AWS SDK for JavaScript v3.

A recipe is the fenced block after a ``<!-- recipe: NAME -->`` line. Python recipes run in a
child interpreter under run_recipe.py, which records each ``print`` (a stream's chunks one by
one); JavaScript ones with node beside tests/js/node_modules. Each run is judged by what the
client printed or raised and by what the gateway's ``/metrics`` counted: the operation, the
tenant (one per credential kind, so the count tells SigV4 from bearer) and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import hash_key
from tests.conftest import BEARER, ENVIRON, KEY_ID, SECRET, gateway_settings
from tests.servers import GatewayProcess, ServerThread
from tests.test_js_sdk import JS, sdk_installed  # noqa: F401  (a fixture: npm ci when needed)
from tests.test_newest_boto3 import python  # noqa: F401  (a fixture: the botocore 1.44 venv)
from tests.test_server import issue_cert

from .venvs import client_venv

ROOT = Path(__file__).parent.parent.parent
DOC = ROOT / "docs" / "clients.md"
RUNNER = Path(__file__).parent / "run_recipe.py"
RECIPE = re.compile(r"^<!-- recipe: (\S+) -->\n```(\w+)\n(.*?)^```$", re.M | re.S)
FENCE = re.compile(r"^```(\w+)$", re.M)
SIGV4_TENANT, BEARER_TENANT = "svc-sigv4", "svc-bearer"
HAS_NODE = shutil.which("node") is not None and shutil.which("npm") is not None
LANGCHAIN_REQUIREMENTS = Path(__file__).parent / "requirements-langchain.txt"


def recipes() -> dict[str, tuple[str, str]]:
    """NAME -> (language, code) for every recipe in the doc."""
    found: dict[str, tuple[str, str]] = {}
    for name, language, code in RECIPE.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"two recipes named {name}"
        found[name] = (language, code)
    return found


@dataclass(frozen=True)
class Gateways:
    http: GatewayProcess
    https: GatewayProcess
    cafile: str

    def url(self, scheme: str) -> str:
        return self.http.url if scheme == "http" else self.https.url

    def served(self, scheme: str) -> Counter[tuple[str, str, str]]:
        """gateway_requests_total by (tenant, operation, outcome)."""
        trust = ssl.create_default_context(cafile=self.cafile)
        text = httpx.get(f"{self.url(scheme)}/metrics", verify=trust, timeout=10).text
        counts: Counter[tuple[str, str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gateway_requests_total":
                    labels = sample.labels
                    key = (labels["tenant"], labels["operation"], labels["outcome"])
                    counts[key] += int(sample.value)
        return counts


@pytest.fixture(scope="module")
def gateways(
    simulator: ServerThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    """The real server twice, on http:// (cleartext HTTP/1.1 and HTTP/2) and on https:// (ALPN),
    with one tenant per credential kind."""
    certfile, keyfile, cafile = issue_cert(tmp_path_factory.mktemp("recipes"))
    settings = gateway_settings(simulator.url)
    settings["tenants"] = {
        SIGV4_TENANT: {"access_keys": [{"id": KEY_ID, "secret_env": "TEST_TENANT_SECRET"}]},
        BEARER_TENANT: {"key_sha256": [hash_key(BEARER)]},
    }
    tls = {**settings, "server": {"tls": {"certfile": certfile, "keyfile": keyfile}}}
    with GatewayProcess(settings, ENVIRON) as http, GatewayProcess(tls, ENVIRON, cafile) as https:
        yield Gateways(http, https, cafile)


@pytest.fixture(scope="module")
def langchain_python() -> Path:
    """The newest langchain-aws, on botocore 1.44, in a venv of its own."""
    return client_venv(LANGCHAIN_REQUIREMENTS, "clients-langchain")


@dataclass(frozen=True)
class Run:
    """One recipe, with one client generation, over one scheme, with its credentials and trust."""

    recipe: str
    client: str  # "botocore-1.40" or "langchain-aws-1.1" (this venv), "botocore-1.44" or
    # "langchain-aws-1.9" (venvs of their own: tests/clients/requirements*.txt), or "node"
    scheme: str
    credentials: str  # "sigv4", "bearer" or "environment" (boto3's own variables)
    ca: str | None = None  # the variable that names the CA file, over https
    operation: str | None = None  # what the gateway counts; None: nothing reaches it
    chunks: bool = False  # a stream whose text must reach print() in more than one piece
    error: tuple[str, str] | None = None  # (type, part of the message) the recipe must end with
    prints: tuple[str, ...] | None = None  # what it must print, one print call each

    @property
    def id(self) -> str:
        return f"{self.recipe}-{self.client}-{self.scheme}" + (f"-{self.ca}" if self.ca else "")

    @property
    def tenant(self) -> str:
        return BEARER_TENANT if self.credentials == "bearer" else SIGV4_TENANT


OLD, NEW, NODE = "botocore-1.40", "botocore-1.44", "node"
LANGCHAIN = ("langchain-aws-1.1", "langchain-aws-1.9")  # this venv's, and the newest in its own
GW_CA = "GATEWAY_CA_BUNDLE"
RUNS = [
    *(Run("boto3-sigv4", c, "http", "sigv4", operation="Converse") for c in (OLD, NEW)),
    *(Run("boto3-sigv4", c, "https", "sigv4", "AWS_CA_BUNDLE", "Converse") for c in (OLD, NEW)),
    *(
        Run("boto3-bearer", c, "https", "bearer", GW_CA, "ConverseStream", chunks=True)
        for c in (OLD, NEW)
    ),
    Run("boto3-bearer", OLD, "http", "bearer", GW_CA, "ConverseStream", chunks=True),
    Run(
        "boto3-bearer",
        NEW,
        "http",
        "bearer",
        GW_CA,
        error=(
            "InvalidEndpointConfigurationError",
            "Bearer authorization requires an HTTPS endpoint",
        ),
    ),
    *(
        Run("boto3-environment", c, "https", "environment", "AWS_CA_BUNDLE", "Converse")
        for c in (OLD, NEW)
    ),
    Run("aioboto3", OLD, "https", "sigv4", GW_CA, "ConverseStream", chunks=True),
    Run("anthropic-sigv4", OLD, "http", "sigv4", operation="InvokeModel"),
    Run("anthropic-sigv4", OLD, "https", "sigv4", "SSL_CERT_FILE", "InvokeModel"),
    *(
        Run(
            "anthropic-bearer",
            OLD,
            s,
            "bearer",
            GW_CA,
            "InvokeModelWithResponseStream",
            chunks=True,
        )
        for s in ("https", "http")
    ),
    *(
        Run(
            "langchain-pitfalls",
            c,
            "http",
            "sigv4",
            operation="Converse",
            error=("NotImplementedError", "Provider claude-sonnet model does not support chat."),
            prints=("True", "True", "1"),
        )
        for c in LANGCHAIN
    ),
    *(
        Run("langchain-converse", c, "http", "sigv4", operation="ConverseStream", chunks=True)
        for c in LANGCHAIN
    ),
    *(
        Run(
            "langchain-converse",
            c,
            "https",
            "sigv4",
            "AWS_CA_BUNDLE",
            "ConverseStream",
            chunks=True,
        )
        for c in LANGCHAIN
    ),
    *(
        Run("langchain-converse-alias", c, "http", "sigv4", operation="ConverseStream", chunks=True)
        for c in LANGCHAIN
    ),
    *(
        Run(
            "langchain-chatbedrock",
            c,
            "http",
            "sigv4",
            operation="InvokeModelWithResponseStream",
            chunks=True,
        )
        for c in LANGCHAIN
    ),
    Run("js-sigv4", NODE, "http", "sigv4", operation="Converse"),
    Run("js-sigv4", NODE, "https", "sigv4", "NODE_EXTRA_CA_CERTS", "Converse"),
    *(
        Run("js-bearer", NODE, s, "bearer", "NODE_EXTRA_CA_CERTS", "ConverseStream")
        for s in ("https", "http")
    ),
]
ENVIRONMENT_ONLY = ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_CA_BUNDLE")  # fmt: skip


def environment(run: Run, gateways: Gateways) -> dict[str, str]:
    """The process environment a service would have: no AWS settings but those it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    url = gateways.url(run.scheme)
    if run.credentials == "environment":
        values = (url, KEY_ID, SECRET, gateways.cafile)
        env.update(zip(ENVIRONMENT_ONLY, values, strict=True))
        return env
    env["GATEWAY_URL"] = url
    if run.credentials == "sigv4":
        env.update(GATEWAY_ACCESS_KEY_ID=KEY_ID, GATEWAY_SECRET_ACCESS_KEY=SECRET)
    else:
        env["AWS_BEARER_TOKEN_BEDROCK"] = BEARER
    if run.ca is not None:
        env[run.ca] = gateways.cafile
    return env


def run_python(interpreter: Path, code: str, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    source, result = tmp / "recipe.py", tmp / "result.json"
    source.write_text(code, encoding="utf-8")
    done = subprocess.run([str(interpreter), str(RUNNER), str(source), str(result)], env=env,
                          cwd=tmp, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return outcome


def run_node(code: str, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """The recipe as a module beside the SDK that tests/js installed (a node_modules link)."""
    (tmp / "node_modules").symlink_to(JS / "node_modules", target_is_directory=True)
    (tmp / "recipe.mjs").write_text(code, encoding="utf-8")
    done = subprocess.run(["node", "recipe.mjs"], env=env, cwd=tmp, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    error = None if done.returncode == 0 else {"type": "exit", "message": done.stderr}
    return {"prints": [[line] for line in done.stdout.splitlines()], "error": error}


def counted_since(
    gateways: Gateways, scheme: str, before: Counter[tuple[str, str, str]], want: Counter[Any]
) -> Counter[tuple[str, str, str]]:
    """What the gateway counted since ``before``, once it is ``want`` (a stream is counted as it
    settles, a moment after its last byte) or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        delta = gateways.served(scheme)
        delta.subtract(before)
        delta = +delta
        if delta == want or time.monotonic() > deadline:
            return delta
        time.sleep(0.02)


@pytest.mark.parametrize("run", RUNS, ids=[run.id for run in RUNS])
def test_recipe(
    run: Run, gateways: Gateways, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    language, code = recipes()[run.recipe]
    env = environment(run, gateways)
    before = gateways.served(run.scheme)
    if run.client == NODE:
        if not HAS_NODE:
            pytest.skip("node/npm not installed")
        request.getfixturevalue("sdk_installed")
        assert language == "javascript"
        outcome = run_node(code, env, tmp_path)
    else:
        assert language == "python"
        venvs = {NEW: "python", LANGCHAIN[1]: "langchain_python"}
        fixture = venvs.get(run.client)
        interpreter = request.getfixturevalue(fixture) if fixture else Path(sys.executable)
        outcome = run_python(interpreter, code, env, tmp_path)

    want = Counter({(run.tenant, run.operation, "success"): 1} if run.operation else {})
    assert counted_since(gateways, run.scheme, before, want) == want
    if run.error is None:
        assert outcome["error"] is None, outcome["error"]
    else:
        kind, message = run.error
        assert outcome["error"]["type"] == kind, outcome["error"]
        assert message in outcome["error"]["message"]
    prints = [args for args in outcome["prints"] if any(args)]  # print() ends a streamed line
    if run.prints is not None:
        assert prints == [[line] for line in run.prints]
    elif run.error is None:
        assert "".join(arg for args in prints for arg in args).strip(), outcome
    if run.chunks:
        assert len(prints) > 1, f"one piece: the answer was not streamed: {prints}"
        print(f"{run.id}: {len(prints)} chunks")


def test_the_doc_quotes_the_errors_the_runs_see() -> None:
    text = DOC.read_text(encoding="utf-8")
    for run in RUNS:
        if run.error is not None:
            kind, message = run.error
            assert f"`{kind}`" in text or f"{kind}: {message}" in text
            assert message in text


def test_every_recipe_is_run_and_every_block_is_a_recipe() -> None:
    found = recipes()
    shell = {name for name, (language, _) in found.items() if language == "sh"}
    assert {run.recipe for run in RUNS} | shell == set(found)
    fences = [m for m in FENCE.findall(DOC.read_text(encoding="utf-8")) if m]
    assert len(fences) == len(found), "a code block without a <!-- recipe: NAME --> line"


def test_the_environment_recipe_sets_what_the_run_sets() -> None:
    """The shell block of boto3-environment exports exactly the variables its run is given."""
    _, code = recipes()["boto3-environment.sh"]
    exported = re.findall(r"^export (\w+)=", code, re.M)
    assert tuple(exported) == ENVIRONMENT_ONLY


def test_the_versions_the_doc_names() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert version("botocore").startswith("1.40.")
    assert "| 1.40 (" in text
    pinned = (Path(__file__).parent / "requirements.txt").read_text(encoding="utf-8")
    assert "boto3==1.44.8" in pinned.splitlines()
    assert "| 1.44.8 (" in text
    assert f"| {version('langchain-aws')} (pinned" in text
    newest = LANGCHAIN_REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    assert "boto3==1.44.8" in newest
    assert "langchain-aws==1.9.1" in newest
    assert "and 1.9.1 on botocore 1.44.8 (`tests/clients/requirements-langchain.txt`" in text
    lock = json.loads((JS / "package-lock.json").read_text(encoding="utf-8"))
    js = lock["packages"]["node_modules/@aws-sdk/client-bedrock-runtime"]["version"]
    assert f"`@aws-sdk/client-bedrock-runtime` {js} " in text


def test_the_environment_reaches_every_botocore_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the doc warns of: of boto3-environment's variables only the endpoint is Bedrock's
    own; an S3 client in the same process signs with the pair and trusts only the bundle."""
    import boto3

    values = ("https://bedrock-gateway.internal:8443", KEY_ID, SECRET, "/etc/ssl/private-ca.pem")
    for name, value in zip(ENVIRONMENT_ONLY, values, strict=True):
        monkeypatch.setenv(name, value)
    bedrock = boto3.client("bedrock-runtime", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    assert bedrock.meta.endpoint_url == values[0]
    assert s3.meta.endpoint_url == "https://s3.amazonaws.com"
    assert s3._request_signer._credentials.access_key == KEY_ID
    assert s3._endpoint.http_session._verify == values[3]
