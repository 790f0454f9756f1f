"""``bedrock-gateway tenants …``, ``usage`` and ``pools`` as a shell runs them: the installed
command in a subprocess, against a real ``bedrock-gateway serve`` on a real Redis, checked by
its output and exit codes; and the issue's walkthrough, with real boto3 using a key the CLI
issued."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import trustme

from gateway.api.app import create_app
from gateway.auth import hash_key
from gateway.config import parse_config
from gateway.tenancy.secrets import new_sealing_key
from tests.conftest import ENVIRON, ClientFactory, gateway_settings, start_gateway
from tests.servers import GatewayProcess, RedisServer, ServerThread, free_port

ADMIN_KEY = "gwk-admin-cli-tests-0123456789"
EXE = os.path.join(os.path.dirname(sys.executable), "bedrock-gateway")
PRICE = {"input": 0.003, "output": 0.015}  # USD per 1,000 tokens


def _settings(simulator: ServerThread) -> dict[str, Any]:
    settings = gateway_settings(simulator.url)
    settings["models"]["claude-sonnet"]["price"] = PRICE
    settings["admin"] = {"key_sha256": [hash_key(ADMIN_KEY)]}
    return settings


@pytest.fixture(scope="module")
def gw(simulator: ServerThread, redis_server: RedisServer) -> Iterator[GatewayProcess]:
    settings = _settings(simulator)
    settings["server"] = {"http": "h1"}
    settings["limiter"] = {"backend": "redis", "redis_url": redis_server.url,
                           "key_prefix": "cli" + os.urandom(3).hex()}  # fmt: skip
    with GatewayProcess(settings, {**ENVIRON, "GATEWAY_SECRETS_KEY": new_sealing_key()}) as p:
        yield p


def cli(*args: str, url: str | None, key: str | None = ADMIN_KEY, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``bedrock-gateway ARGS`` with the URL and admin key in its environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BEDROCK_GATEWAY_")}
    if url is not None:
        environ["BEDROCK_GATEWAY_URL"] = url
    if key is not None:
        environ["BEDROCK_GATEWAY_ADMIN_KEY"] = key
    ran = subprocess.run([EXE, *args], env=environ, input=stdin, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert ADMIN_KEY not in ran.stdout + ran.stderr  # never printed, whatever happens
    if ran.returncode != 0:
        assert ran.stdout == ""
        assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr  # one line on stderr
    return ran


def ok(*args: str, url: str) -> str:
    ran = cli(*args, url=url)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def ok_json(*args: str, url: str) -> Any:
    return json.loads(ok(*args, "--json", url=url))


def _row(text: str, first: str) -> list[str]:
    """The cells of the table row (or key/value line) starting with ``first``."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_tenant_create_show_set_list_delete(gw: GatewayProcess) -> None:
    url = gw.url
    made = ok_json("tenants", "create", "cli-one", "--display-name", "CLI one", "--tpm", "50000",
                   "--models", "claude-sonnet,claude-haiku", "--label", "team=search",
                   "--label", "cost-centre=cc-42", "--monthly-spend-usd", "12.5",
                   "--priority", "batch", "--weight", "2", "--max-wait-s", "5",
                   "--allow-fallback", url=url)  # fmt: skip
    assert made["id"] == "cli-one"
    assert (made["tpm"], made["models"], made["monthly_spend_usd"]) == (
        50000, ["claude-sonnet", "claude-haiku"], 12.5)  # fmt: skip
    assert made["labels"] == {"team": "search", "cost-centre": "cc-42"}
    assert (made["priority"], made["weight"], made["max_wait_s"], made["allow_fallback"]) == (
        "batch", 2.0, 5.0, True)  # fmt: skip

    shown = ok("tenants", "show", "cli-one", url=url)
    assert _row(shown, "tpm") == ["tpm", "50000"]
    assert _row(shown, "rpm") == ["rpm", "-"]
    assert _row(shown, "models") == ["models", "claude-sonnet,claude-haiku"]
    assert _row(shown, "labels") == ["labels", "team=search,cost-centre=cc-42"]
    assert _row(shown, "monthly_spend_usd") == ["monthly_spend_usd", "12.50"]
    assert "credentials:\n(none)" in shown

    changed = ok_json("tenants", "set", "cli-one", "--tpm", "none", "--rpm", "30",
                      "--no-allow-fallback", "--label", "team=ads", "--display-name", "",
                      url=url)  # fmt: skip
    assert (changed["tpm"], changed["rpm"], changed["allow_fallback"]) == (None, 30, False)
    assert (changed["labels"], changed["display_name"]) == ({"team": "ads"}, None)
    assert changed["models"] == ["claude-sonnet", "claude-haiku"]  # not given: unchanged
    assert changed["revision"] == 2
    text = ok("tenants", "set", "cli-one", "--label", "none", "--models", "none", url=url)
    assert text.startswith("updated tenant cli-one: models, labels")
    assert _row(text, "models") == ["models", "-"]
    assert _row(text, "labels") == ["labels", "-"]

    nothing = cli("tenants", "set", "cli-one", url=url)
    assert nothing.returncode == 2
    assert "nothing to change" in nothing.stderr

    for n in range(3):
        assert ok("tenants", "create", f"cli-page-{n}", url=url).startswith(
            f"created tenant cli-page-{n}\n")  # fmt: skip
    listed = ok_json("tenants", "list", "--page-size", "2", url=url)["tenants"]
    ids = [t["id"] for t in listed]
    assert ids == sorted(ids)
    assert {"cli-one", "cli-page-0", "cli-page-1", "cli-page-2", "team-a", "team-b"} <= set(ids)
    table = ok("tenants", "list", "--page-size", "2", url=url)
    assert table.splitlines()[0].split()[:3] == ["ID", "DISPLAY", "NAME"]
    assert _row(table, "team-b")[1:3] == ["-", "claude-haiku"]
    assert _row(table, "cli-one")[:4] == ["cli-one", "-", "(all)", "-"]
    assert len(table.splitlines()) == len(ids) + 1

    assert ok("tenants", "delete", "cli-page-0", url=url).startswith("deleted tenant cli-page-0")
    assert ok_json("tenants", "delete", "cli-page-1", url=url) == {"deleted": "cli-page-1"}
    gone = cli("tenants", "show", "cli-page-0", url=url)
    assert gone.returncode == 1
    assert gone.stderr == ("bedrock-gateway: refused (404 ResourceNotFoundException, field "
                           "tenant_id): No tenant 'cli-page-0'.\n")  # fmt: skip


def test_bearer_key_printed_once_works_and_revoked(gw: GatewayProcess) -> None:
    url = gw.url
    ok("tenants", "create", "cli-keys", url=url)
    when = dt.datetime(2031, 1, 31, tzinfo=dt.UTC)
    made = ok("tenants", "keys", "create", "cli-keys", "--kind", "bearer", "--name", "ci",
              "--expires-at", "2031-01-31T00:00:00Z", url=url)  # fmt: skip
    assert "only time the secret is shown" in made
    key = _row(made, "key")[1]
    assert key.startswith("gwk-")
    credential_id = re.search(r"\((bk-[0-9a-f]{16})\)", made).group(1)  # type: ignore[union-attr]

    def converse() -> httpx.Response:
        return httpx.post(f"{url}/model/claude-sonnet/converse",
                          headers={"authorization": f"Bearer {key}"},
                          json={"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                                "inferenceConfig": {"maxTokens": 20}})  # fmt: skip

    assert converse().status_code == 200
    listed = ok_json("tenants", "keys", "list", "cli-keys", url=url)["credentials"]
    assert [(c["id"], c["state"], c["expires_at"]) for c in listed] == [
        (credential_id, "active", when.timestamp())]  # fmt: skip
    assert key not in json.dumps(listed)
    table = ok("tenants", "keys", "list", "cli-keys", url=url)
    row = _row(table, credential_id)
    assert row[1:5] == ["bearer", "ci", "active", row[4]]
    assert row[5] == "2031-01-31T00:00:00Z"
    assert row[6] != "-"  # last used: the call above
    assert key not in table + ok("tenants", "show", "cli-keys", url=url)

    revoked = ok("tenants", "keys", "revoke", "cli-keys", credential_id, url=url)
    assert revoked.startswith(f"revoked bearer credential {credential_id}")
    assert _row(ok("tenants", "keys", "list", "cli-keys", url=url), credential_id)[3] == "revoked"
    refused = converse()
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"].startswith("AccessDeniedException")


def test_errors_and_exit_codes(gw: GatewayProcess, simulator: ServerThread) -> None:
    url = gw.url
    nowhere = cli("tenants", "list", url=f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == 3
    assert nowhere.stderr.startswith("bedrock-gateway: cannot reach the gateway at http://")

    wrong = cli("tenants", "list", url=url, key="gwk-not-an-admin-key")
    assert wrong.returncode == 1
    assert wrong.stderr == ("bedrock-gateway: refused (403 AccessDeniedException): "
                            "The admin key is not valid.\n")  # fmt: skip
    assert cli("pools", url=url, key=None).returncode == 2
    assert "no admin key" in cli("pools", url=url, key=None).stderr
    assert "no gateway URL" in cli("pools", url=None).stderr
    assert cli("pools", url="127.0.0.1:8080").returncode == 2
    assert cli("pools", url="http://[::1").returncode == 2
    piped = cli("pools", "--admin-key", "-", url=url, key=None, stdin=ADMIN_KEY + "\n")
    assert piped.returncode == 0, piped.stderr

    for args in (["tenants", "create", "x", "--tpm", "abc"], ["tenants", "create", "x", "--bogus"],
                 ["tenants", "keys", "create", "x", "--kind", "oauth", "--name", "n"],
                 ["tenants", "keys", "create", "x", "--kind", "bearer"],
                 ["tenants", "set", "x", "--label", "no-equals-sign"], ["tenants"],
                 ["usage", "--bogus"], ["pools", "--timeout", "soon"],
                 ["tenants", "keys", "create", "x", "--kind", "bearer", "--name", "n",
                  "--expires-at", "next tuesday"]):  # fmt: skip
        bad = cli(*args, url=url)
        assert bad.returncode == 2, (args, bad.stderr)
        assert " error: " in bad.stderr
        assert "--help" in bad.stderr

    invalid = cli("tenants", "create", "cli-bad", "--tpm", "0", url=url)
    assert invalid.returncode == 1
    assert invalid.stderr.startswith(
        "bedrock-gateway: refused (400 ValidationException, field tpm): tpm: "
    )
    bad_id = cli("tenants", "create", "bad id!", url=url)
    assert (bad_id.returncode, "field id" in bad_id.stderr) == (1, True), bad_id.stderr
    past = cli("tenants", "keys", "create", "team-a", "--kind", "bearer", "--name", "old",
               "--expires-at", "2001-01-01", url=url)  # fmt: skip
    assert past.returncode == 1
    assert "field expires_at" in past.stderr
    ok("tenants", "create", "cli-twice", url=url)
    twice = cli("tenants", "create", "cli-twice", url=url)
    assert (twice.returncode, "409 ConflictException" in twice.stderr) == (1, True)

    # A 5xx is exit 3: SigV4 keys asked of a gateway with no sealing key are a 503.
    unsealed = start_gateway(parse_config(_settings(simulator)))
    try:
        failed = cli("tenants", "keys", "create", "team-a", "--kind", "sigv4", "--name", "p",
                     url=unsealed.url)  # fmt: skip
    finally:
        unsealed.stop()
    assert failed.returncode == 3
    assert failed.stderr.startswith(
        "bedrock-gateway: the gateway failed (503 ServiceUnavailableException, field kind): "
        "SigV4 credentials need a sealing key")  # fmt: skip


def test_tls_with_a_private_ca(
    simulator: ServerThread, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ca, folder = trustme.CA(), tmp_path_factory.mktemp("cli-tls")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    app = create_app(parse_config(_settings(simulator)), environ=ENVIRON)
    with ServerThread(app, ssl_certfile=str(folder / "cert.pem"),
                      ssl_keyfile=str(folder / "key.pem")) as server:  # fmt: skip
        assert server.url.startswith("https://")
        untrusted = cli("tenants", "list", url=server.url)
        assert untrusted.returncode == 3
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        listed = ok_json("tenants", "list", "--cacert", str(folder / "ca.pem"), url=server.url)
        assert {"team-a", "team-b"} <= {t["id"] for t in listed["tenants"]}
        assert cli("pools", "--cacert", str(folder / "nope.pem"), url=server.url).returncode == 2


def test_pools(gw: GatewayProcess) -> None:
    data = ok_json("pools", url=gw.url)
    regions = {p["region"] for p in data["pools"]}
    assert regions == {"us-east-1", "us-west-2"}
    text = ok("pools", url=gw.url)
    assert text.splitlines()[0].startswith("POOL")
    for pool in data["pools"]:
        row = _row(text, pool["pool"])
        assert row[1:3] == [pool["account"], pool["region"]]
    assert "input estimate calibration:" in text


def test_walkthrough_create_key_boto3_budget_usage_revoke(
    gw: GatewayProcess, make_client: ClientFactory
) -> None:
    """The README's walkthrough, command for command."""
    url = gw.url
    created = ok("tenants", "create", "search", "--display-name", "Search team",
                 "--models", "claude-sonnet", "--tpm", "100000", "--label", "team=search",
                 url=url)  # fmt: skip
    assert created.startswith("created tenant search\n")
    issued = ok("tenants", "keys", "create", "search", "--kind", "sigv4", "--name", "prod", url=url)
    key_id = _row(issued, "aws_access_key_id")[1]
    secret = _row(issued, "aws_secret_access_key")[1]
    assert key_id.startswith("GW")
    assert "only time the secret is shown" in issued

    client = make_client(url, key_id, secret)

    def converse() -> Any:
        return client.converse(
            modelId="claude-sonnet",
            messages=[{"role": "user", "content": [{"text": "hi [sim:output_tokens=3]"}]}],
        )

    assert converse()["usage"]["outputTokens"] == 3
    budget = ok("tenants", "set", "search", "--tokens-per-day", "100000",
                "--monthly-spend-usd", "5", url=url)  # fmt: skip
    assert budget.startswith("updated tenant search: tokens_per_day, monthly_spend_usd")
    answers = [converse() for _ in range(3)]
    assert all(a["usage"]["outputTokens"] == 3 for a in answers)
    shown = ok("tenants", "show", "search", url=url)
    assert _row(shown, "tokens_per_day") == ["tokens_per_day", "100000"]
    assert _row(shown, key_id)[3] == "active"
    assert secret not in shown

    usage = ok_json("usage", "search", url=url)
    day = usage["periods"]["day"]
    assert (day["requests"], day["output_tokens"]) == (4, 12)
    cost = (day["input_tokens"] * PRICE["input"] + day["output_tokens"] * PRICE["output"]) / 1000
    assert day["spend_usd"] == pytest.approx(cost, abs=4e-6)  # each call rounded up to 1e-6
    assert usage["models"]["claude-sonnet"]["day"] == day
    budgets = {b["name"]: b for b in usage["budgets"]}
    assert budgets["tokens_per_day"]["used"] > 0  # the 3 calls since the budget was set
    assert 0 < budgets["monthly_spend_usd"]["used"] <= day["spend_usd"]
    table = ok("usage", "search", url=url)
    assert _row(table, "day")[2] == "4"  # REQUESTS
    assert _row(table, "day")[-1] == f"{day['spend_usd']:.6f}".rstrip("0")  # SPEND USD
    assert _row(table, "tokens_per_day")[1] == "100000"
    assert _row(table, "monthly_spend_usd")[1] == "5.00"
    assert "search" in {u["tenant"] for u in ok_json("usage", url=url)["tenants"]}

    # A spend budget already used up: the next call is refused, naming it.
    ok("tenants", "set", "search", "--monthly-spend-usd", "0.000001", url=url)
    with pytest.raises(client.exceptions.ServiceQuotaExceededException, match="spend budget"):
        converse()
    ok("tenants", "set", "search", "--monthly-spend-usd", "none", url=url)
    converse()

    revoked = ok("tenants", "keys", "revoke", "search", key_id, url=url)
    assert revoked.startswith(f"revoked sigv4 credential {key_id}")
    with pytest.raises(client.exceptions.AccessDeniedException, match="revoked"):
        converse()


USAGE_PERIOD = {"start": 1796256000, "requests": 12, "throttled": 1, "input_tokens": 3400,
                "output_tokens": 560, "cache_read_tokens": 0, "cache_write_tokens": 0,
                "quota_tokens": 6200, "spend_usd": 0.0186}  # fmt: skip
USAGE = {
    "tenant": "search", "at": 1796299200,
    "periods": {"minute": {**USAGE_PERIOD, "start": 1796299140, "requests": 2},
                "day": USAGE_PERIOD, "month": {**USAGE_PERIOD, "requests": 40}},
    "models": {"claude-sonnet": {"minute": USAGE_PERIOD, "day": USAGE_PERIOD,
                                 "month": USAGE_PERIOD}},
    "budgets": [{"name": "tokens_per_day", "limit": 100000, "used": 6200,
                 "resets_at": 1796342400},
                {"name": "monthly_spend_usd", "limit": 5.0, "used": 0.0186, "remaining": 4.9814,
                 "resets_at": 1798761600},
                {"name": "tpm", "limit": 100000, "used": 1200, "resets_at": None}],
}  # fmt: skip


async def _usage_stub(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The usage endpoints' shape, with what a gateway does not send (a budget without
    ``remaining``, a tenant without periods) and answers no gateway gives."""
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    status, body = 200, b""
    if headers.get(b"authorization") != f"Bearer {ADMIN_KEY}".encode():
        status, body = 403, b'{"message": "The admin key is not valid.", "type": "x"}'
    elif scope["path"] == "/admin/tenants/search/usage":
        body = json.dumps(USAGE).encode()
    elif scope["path"] == "/admin/usage":  # paged like the gateway's: limit, after
        query = dict(parse_qsl(scope["query_string"].decode()))
        every = [{"tenant": "ads", "at": 1796299200, "periods": {}, "budgets": []},
                 {k: v for k, v in USAGE.items() if k != "models"}]  # fmt: skip
        after = query.get("after", "")
        page = [u for u in every if str(u["tenant"]) > after][: int(query.get("limit", 100))]
        body = json.dumps({"tenants": page}).encode()
    elif scope["path"] == "/admin/pools":  # JSON, not the admin API's
        body = b"[1, 2]"
    elif scope["path"] == "/admin/tenants":  # not JSON at all
        body = b"<html>a login page</html>"
    else:
        status, body = 404, b'{"message": "No such admin operation.", "type": "x"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def test_usage_tables_from_the_documented_shape() -> None:
    with ServerThread(_usage_stub, lifespan="off") as stub:
        assert ok_json("usage", "search", url=stub.url) == USAGE
        text = ok("usage", "search", url=stub.url)
        assert text.startswith("tenant search, at 2026-12-03T12:00:00Z\n")
        assert _row(text, "minute") == ["minute", "2026-12-03T11:59:00Z", "2", "1", "3400",
                                        "560", "0", "0", "6200", "0.0186"]  # fmt: skip
        assert _row(text, "month")[2] == "40"
        assert _row(text, "claude-sonnet")[:4] == ["claude-sonnet", "minute",
                                                   "2026-12-03T00:00:00Z", "12"]  # fmt: skip
        assert _row(text, "tokens_per_day") == ["tokens_per_day", "100000", "6200", "93800",
                                                "6.2%", "2026-12-04T00:00:00Z"]  # fmt: skip
        assert _row(text, "monthly_spend_usd") == ["monthly_spend_usd", "5.00", "0.0186",
                                                   "4.9814", "0.4%",
                                                   "2027-01-01T00:00:00Z"]  # fmt: skip
        assert _row(text, "tpm")[-1] == "-"

        paged = ok_json("usage", "--page-size", "1", url=stub.url)["tenants"]
        assert [u["tenant"] for u in paged] == ["ads", "search"]
        every = ok("usage", url=stub.url)
        assert _row(every, "search")[:4] == ["search", "minute", "2026-12-03T11:59:00Z", "2"]
        assert _row(every, "ads")[1:4] == ["minute", "-", "-"]
        assert "monthly_spend_usd" in every
        assert cli("usage", "nobody", url=stub.url).returncode == 1
        # Something that is not a bedrock-gateway: exit 3, one line, no traceback.
        for args in (["pools"], ["tenants", "list"]):
            odd = cli(*args, url=stub.url)
            assert odd.returncode == 3
            assert odd.stderr.startswith(f"bedrock-gateway: the answer from {stub.url}")
