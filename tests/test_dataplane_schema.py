"""schemathesis against the data plane's OpenAPI description (gateway/api/dataplane_openapi.json),
on the real server.

A ``bedrock-gateway serve`` process (granian, the default server) in front of its own
simulator is driven by the schemathesis CLI (``COMMAND`` below, as it is run; ``pytest -s``
prints its report), over the five operations the file lists, with a tenant's bearer key:

- phases: examples (each operation's example body, on a configured model: a 200 whose headers
  and body must conform too), coverage (boundary and invalid values of each parameter and
  body) and fuzzing;
- data: positive and negative (``--mode all``): a body that is not a JSON object, or a model id
  out of the schema's bounds, must be refused with a 4xx;
- checks: no 5xx; status codes, content types, headers (``x-amzn-ErrorType`` on every error,
  ``x-gateway-route`` on every answer) and bodies (``{"message": ...}`` and nothing else) as
  the file declares; invalid data refused; calls without the key refused. Not the 405 checks:
  like Bedrock, the gateway answers a method it does not serve with UnknownOperationException
  (404); nor that schema-valid data is accepted: bodies are the models' own, which Bedrock
  validates, not the gateway;
- bounded and reproducible: at most ``MAX_EXAMPLES`` cases per operation and phase, generated
  deterministically (no seed, no example database, no replayed failures), one worker; 80 % of
  the cases name a model the gateway serves (``dataplane_schemathesis.toml``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig
from tests.conftest import BEARER, ENVIRON, gateway_settings
from tests.servers import GatewayProcess, ServerThread

MAX_EXAMPLES = 25
HERE = Path(__file__).parent
SCHEMA = HERE.parent / "gateway" / "api" / "dataplane_openapi.json"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "ignored_auth")  # fmt: skip
COMMAND = [
    "schemathesis", "--config-file", str(HERE / "dataplane_schemathesis.toml"),
    "run", str(SCHEMA), "--url", "{url}",
    "--header", "Authorization: Bearer {key}",
    "--checks", CHECKS, "--mode", "all", "--phases", "examples,coverage,fuzzing",
    "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
    "--workers", "1", "--request-timeout", "10", "--no-color",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataplane_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    simulator = ServerThread(create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0})))
    with simulator:
        settings = gateway_settings(simulator.url, request_read_timeout_s=5)
        log = tmp_path_factory.mktemp("dataplane-schema") / "gateway.log"
        with GatewayProcess(settings, ENVIRON, log_path=str(log)) as process:
            yield process
        assert "Traceback" not in log.read_text(errors="replace")


def test_dataplane_conforms_to_its_openapi_description(
    dataplane_gateway: GatewayProcess, tmp_path: Path
) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    command = [exe, *(a.format(url=dataplane_gateway.url, key=BEARER) for a in COMMAND[1:])]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
    report = run.stdout + run.stderr
    print(report)  # the summary, for `pytest -s`
    assert run.returncode == 0, report
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected, report
    assert selected[1] == selected[2] == selected[3] == "5", report
    for phase in ("Examples", "Coverage", "Fuzzing"):
        assert re.search(rf"✅ {phase}\b", report), f"{phase} did not pass:\n{report}"
