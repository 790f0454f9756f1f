"""schemathesis against the admin API's own ``/admin/openapi.json``, on the real server.

A ``bedrock-gateway serve`` process (tests/servers.py's ``GatewayProcess``) on a private
redis-server, with an admin key and a sealing key, is driven by the schemathesis CLI
(``COMMAND`` below, as it is run; ``pytest -s`` prints its report, a failure shows it), over
every operation the schema lists (so new admin routes are covered as soon as they are in it):

- phases: coverage (boundary and invalid values of each field), fuzzing, and stateful
  (the schema has no examples for the examples phase): sequences that follow the schema's
  OpenAPI links (create a tenant, then show, patch, delete it or issue a credential for it;
  issue a credential, then revoke it) and the links schemathesis infers itself;
- data: positive and negative (``--mode all``): invalid input must be refused with a 4xx;
- checks: all of them, among them no 5xx, status codes, content types, headers and bodies as
  the schema declares, schema-valid data accepted and invalid data refused, the 405 and
  ``Allow`` of an undeclared method, and that calls without the admin key are refused;
- bounded and reproducible: at most ``MAX_EXAMPLES`` cases per operation in the coverage and
  fuzzing phases, up to 80 stateful scenarios of up to 8 calls (``schemathesis.toml`` beside
  this file), generated deterministically (no seed, no example database, no replayed
  failures), one worker; about 20 s here, the same cases every run.

``schemathesis_hooks.py`` beside this file holds the one rule JSON Schema cannot state (a
credential's ``expires_at`` is in the future).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.auth import hash_key
from gateway.tenancy.secrets import new_sealing_key
from tests.conftest import ENVIRON, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

ADMIN_KEY = "gwk-admin-schemathesis-0123456789"
MAX_EXAMPLES = 30
HERE = Path(__file__).parent
COMMAND = [
    "schemathesis", "--config-file", str(HERE / "schemathesis.toml"),
    "run", "{url}/admin/openapi.json",
    "--header", "Authorization: Bearer {admin_key}",
    "--checks", "all", "--mode", "all",
    "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
    "--workers", "1", "--request-timeout", "10", "--no-color",
]  # fmt: skip


@pytest.fixture(scope="module")
def admin_gateway(simulator: ServerThread, redis_server: RedisServer) -> Iterator[GatewayProcess]:
    settings = gateway_settings(simulator.url)
    settings["server"] = {"http": "h1"}
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url,
                           "key_prefix": "schema" + os.urandom(3).hex()}  # fmt: skip
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)]}
    process = GatewayProcess(settings, {**ENVIRON, "GATEWAY_SECRETS_KEY": new_sealing_key()})
    with process:
        yield process


def test_admin_api_conforms_to_its_openapi_schema(
    admin_gateway: GatewayProcess, tmp_path: Path
) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    command = [exe, *(a.format(url=admin_gateway.url, admin_key=ADMIN_KEY) for a in COMMAND[1:])]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=100,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py"),
             "NO_COLOR": "1"},
    )  # fmt: skip
    report = run.stdout + run.stderr
    print(report)  # the summary, for `pytest -s` and for the closing note of issue 10
    assert run.returncode == 0, report
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected, report
    assert selected[1] == selected[2] == selected[3], "every operation tested"
    assert int(selected[3]) >= 10, report  # pools, tenants (5), credentials (3), audit
    scenarios = re.search(r"Stateful \(in [^)]*\)\s+Scenarios:\s+(\d+)", report)
    assert scenarios, report  # the stateful phase ran
    assert int(scenarios[1]) > 0, report
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}\b", report), f"{phase} did not pass:\n{report}"


def test_what_schemathesis_found_stays_fixed(admin_gateway: GatewayProcess) -> None:
    """The first run's findings, each pinned down: 400 (not FastAPI's 422) declared for invalid
    input and 404 for a path naming nothing; a 405 whose ``Allow`` lists every method of the
    path; bodies read as strictly as the schema types them; whole-string id patterns."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=admin_gateway.url, headers=headers) as admin:
        schema = admin.get("/admin/openapi.json").json()
        show = schema["paths"]["/admin/tenants/{tenant_id}"]["get"]["responses"]
        assert {"200", "400", "401", "403", "404"} <= set(show)
        assert "422" not in show
        assert "HTTPValidationError" not in schema["components"]["schemas"]
        assert schema["security"] == [{"adminKey": []}]

        traced = admin.request("TRACE", "/admin/tenants/team-a")
        assert traced.status_code == 405, traced.text
        assert traced.headers["allow"] == "GET, PATCH, DELETE"
        assert traced.json()["type"] == "MethodNotAllowedException"

        for body, field in [({"id": "strict-1", "allow_fallback": 0}, "allow_fallback"),
                            ({"id": "strict-1", "tpm": "5"}, "tpm"),
                            ({"id": "strict-1\n"}, "id"),
                            ({"id": "strict-1", "labels": {"team\n": "x"}}, "labels")]:  # fmt: skip
            refused = admin.post("/admin/tenants", json=body)
            assert refused.status_code == 400, (body, refused.text)
            assert refused.json()["field"] == field, refused.json()
        created = admin.post("/admin/tenants", json={"id": "strict-1", "tpm": 5.0})
        assert created.status_code == 201, created.text  # 5.0 is an integer to JSON Schema
        assert created.json()["tpm"] == 5
        key = admin.post("/admin/tenants/strict-1/credentials",
                         json={"kind": "bearer", "name": "ci\n"})  # fmt: skip
        assert (key.status_code, key.json()["field"]) == (400, "name")
