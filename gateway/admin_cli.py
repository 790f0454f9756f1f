"""``bedrock-gateway tenants …``, ``usage``, ``pools`` and ``quota-report``: the admin API from
a shell.

Every command is one or a few HTTP calls to the gateway's ``/admin`` API (httpx), printed as a
table (the quota report as Markdown), or with ``--json`` as the API's own JSON. The gateway's
URL and an admin key come from ``--url`` / ``--admin-key`` or ``BEDROCK_GATEWAY_URL`` /
``BEDROCK_GATEWAY_ADMIN_KEY``. The admin key is sent only in the ``Authorization`` header
and never printed, not even in an error.

Exit codes, for scripts: 0 done; 1 the API refused (a 4xx: its message, type and field on
stderr); 2 a usage or configuration error (a bad flag, no URL, no admin key); 3 the gateway
could not be reached, or answered with a 5xx (or not with JSON). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from gateway import quota_report

URL_ENV = "BEDROCK_GATEWAY_URL"
KEY_ENV = "BEDROCK_GATEWAY_ADMIN_KEY"
CA_ENV = "BEDROCK_GATEWAY_CA_BUNDLE"

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
PERIODS = ("minute", "day", "month")


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Clear:
    """What ``none`` means on ``tenants set``: send null, clearing the setting."""

    def __repr__(self) -> str:
        return "none"


CLEAR = _Clear()


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line on stderr (exit 2), naming the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:
            self.error("unrecognized arguments: " + " ".join(extras))
        return parsed, extras


# ---------------------------------------------------------------- talking to the admin API


class AdminClient:
    def __init__(self, url: str, key: str, verify: ssl.SSLContext | bool, timeout: float):
        self._url = url
        self._key = key
        self._http = httpx.Client(
            base_url=url, verify=verify, timeout=timeout,
            headers={"authorization": f"Bearer {key}", "accept": "application/json",
                     "user-agent": "bedrock-gateway-cli"},
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        self._http.close()

    def _scrub(self, text: str) -> str:
        """``text`` on one line, without the admin key (a belt to the braces of checking the key
        before it is sent: no library then has reason to repeat it). A key too short to be
        anything but a test's would match ordinary words."""
        if len(self._key) >= 8:
            text = text.replace(self._key, "<admin key>")
        return " ".join(text.split())

    def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The answer's JSON (None for 204); raises CliError with the exit code it means."""
        try:
            reply = self._http.request(method, path, json=body, params=params)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise CliError(USAGE, f"the gateway URL {self._url} is not usable: {exc}") from None
        except httpx.TimeoutException as exc:
            raise CliError(UNREACHABLE, f"the gateway at {self._url} did not answer in time "
                                        f"({type(exc).__name__})") from None  # fmt: skip
        except httpx.TransportError as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise CliError(UNREACHABLE, f"cannot reach the gateway at {self._url}: {reason}") \
                from None  # fmt: skip
        if reply.status_code == 204:
            return None
        try:
            data = reply.json()
        except ValueError:
            data = None
        if reply.status_code >= 400:
            what, message, field = _error_parts(reply, data)
            detail = f"{reply.status_code} {what}" + (f", field {field}" if field else "")
            if reply.status_code >= 500:
                raise CliError(UNREACHABLE, self._scrub(f"the gateway failed ({detail}): "
                                                        f"{message}"))  # fmt: skip
            raise CliError(REFUSED, self._scrub(f"refused ({detail}): {message}"))
        if data is None:
            raise CliError(UNREACHABLE, f"the answer from {self._url}{path} is not JSON "
                                        f"(HTTP {reply.status_code})")  # fmt: skip
        return data


def _error_parts(reply: httpx.Response, data: Any) -> tuple[str, str, str | None]:
    if isinstance(data, dict) and "message" in data:
        what = str(data.get("type") or reply.headers.get("x-amzn-errortype") or reply.reason_phrase)
        field = data.get("field")
        return what, str(data["message"]), None if field is None else str(field)
    text = reply.text.strip()[:200] or reply.reason_phrase
    return reply.headers.get("x-amzn-errortype") or reply.reason_phrase, text, None


def _client(args: argparse.Namespace) -> AdminClient:
    url = args.url or os.environ.get(URL_ENV, "")
    if not url:
        raise CliError(USAGE, f"no gateway URL: give --url or set {URL_ENV}")
    if not url.startswith(("http://", "https://")):
        raise CliError(USAGE, f"the gateway URL must start with http:// or https://: {url}")
    try:
        if not httpx.URL(url).host:
            raise httpx.InvalidURL("no host")
    except httpx.InvalidURL as exc:
        raise CliError(USAGE, f"the gateway URL {url} is not usable: {exc}") from None
    key = args.admin_key if args.admin_key is not None else os.environ.get(KEY_ENV, "")
    if key == "-":
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        raise CliError(USAGE, f"no admin key: give --admin-key (- reads it from stdin) or set "
                              f"{KEY_ENV}")  # fmt: skip
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise CliError(USAGE, "the admin key has characters an HTTP header cannot carry")
    cafile = args.cacert or os.environ.get(CA_ENV)
    verify: ssl.SSLContext | bool = True
    if cafile:
        try:
            verify = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(USAGE, f"cannot use the CA bundle {cafile}: {exc}") from None
    if args.timeout <= 0:
        raise CliError(USAGE, "--timeout must be more than 0 seconds")
    return AdminClient(url.rstrip("/"), key, verify, args.timeout)


def _p(*parts: str) -> str:
    return "/admin/" + "/".join(quote(p, safe="") for p in parts)


# ---------------------------------------------------------------- printing


def _when(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usd(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    whole, _, cents = f"{value:.6f}".rstrip("0").partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"  # 5.00, 12.50, 0.0186, 0.000972


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):  # JSON numbers may come as floats: 100000.0 is 100000
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _number(text: str) -> bool:
    try:
        float(text.lstrip("$").rstrip("%"))
    except ValueError:
        return False
    return True


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numeric columns right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [bool(cells) and all(_number(r[i]) or r[i] == "-" for r in cells)
             for i in range(len(headers))]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        triples = zip(values, widths, right, strict=True)
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in triples)
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(headers))] + [line(r) for r in cells])


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(human(data))


# ---------------------------------------------------------------- tenants

TENANT_FIELDS = (
    ("display_name", None), ("models", None), ("tpm", None), ("rpm", None),
    ("tokens_per_day", None), ("tokens_per_month", None), ("max_concurrency", None),
    ("monthly_spend_usd", _usd), ("priority", None), ("weight", None), ("max_wait_s", None),
    ("allow_fallback", None), ("labels", None),
)  # fmt: skip


def _tenant_text(t: dict[str, Any], credentials: bool = True) -> str:
    rows: list[tuple[str, str]] = [("id", str(t.get("id"))), ("source", _cell(t.get("source"))),
                                   ("revision", _cell(t.get("revision")))]  # fmt: skip
    for name, fmt in TENANT_FIELDS:
        value = t.get(name)
        rows.append((name, (fmt or _cell)(value)))
    rows += [("created_at", _when(t.get("created_at"))), ("updated_at", _when(t.get("updated_at")))]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    if credentials:  # create and set answer without last-used times: show has them
        found = t.get("credentials") or []
        text += "\n\ncredentials:\n" + (_credentials_text(found) if found else "(none)")
    return text


def _credentials_text(credentials: list[dict[str, Any]]) -> str:
    return table(
        ("ID", "KIND", "NAME", "STATE", "CREATED", "EXPIRES", "LAST USED", "SOURCE"),
        [(c.get("id"), c.get("kind"), c.get("name"), c.get("state"), _when(c.get("created_at")),
          _when(c.get("expires_at")), _when(c.get("last_used_at")), c.get("source"))
         for c in credentials],
    )  # fmt: skip


def _tenants_text(tenants: list[dict[str, Any]]) -> str:
    if not tenants:
        return "(no tenants)"
    return table(
        ("ID", "DISPLAY NAME", "MODELS", "TPM", "RPM", "TOKENS/DAY", "TOKENS/MONTH", "CONCURRENCY",
         "SPEND/MONTH USD", "PRIORITY", "WEIGHT", "ACTIVE KEYS", "SOURCE"),
        [(t.get("id"), t.get("display_name"), "(all)" if t.get("models") is None else t["models"],
          t.get("tpm"), t.get("rpm"), t.get("tokens_per_day"), t.get("tokens_per_month"),
          t.get("max_concurrency"), _usd(t.get("monthly_spend_usd")), t.get("priority"),
          t.get("weight"),
          sum(1 for c in t.get("credentials") or () if c.get("state") == "active"),
          t.get("source"))
         for t in tenants],
    )  # fmt: skip


def _tenant_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, _ in TENANT_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value is CLEAR else value
    if args.labels is not None:
        labels: dict[str, str] = {}
        for item in args.labels:
            if item is CLEAR:
                labels = {}
            else:
                labels[item[0]] = item[1]
        body["labels"] = labels
    return body


def _create(client: AdminClient, args: argparse.Namespace) -> None:
    tenant = client.call("POST", _p("tenants"), body={"id": args.id, **_tenant_body(args)})
    _emit(args, tenant, lambda t: f"created tenant {t.get('id')}\n\n{_tenant_text(t, False)}")


def _list(client: AdminClient, args: argparse.Namespace) -> None:
    tenants: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": args.page_size}
        if after is not None:
            params["after"] = after
        page = client.call("GET", _p("tenants"), params=params)
        tenants += page.get("tenants", [])
        following = page.get("next")
        if not following or following == after:
            break
        after = following
    _emit(args, {"tenants": tenants}, lambda d: _tenants_text(d["tenants"]))


def _show(client: AdminClient, args: argparse.Namespace) -> None:
    _emit(args, client.call("GET", _p("tenants", args.id)), _tenant_text)


def _set(client: AdminClient, args: argparse.Namespace) -> None:
    body = _tenant_body(args)
    if not body:
        raise CliError(USAGE, "nothing to change: give at least one setting "
                              "(see bedrock-gateway tenants set --help)")  # fmt: skip
    tenant = client.call("PATCH", _p("tenants", args.id), body=body)
    _emit(args, tenant, lambda t: f"updated tenant {t.get('id')}: {', '.join(body)}\n\n"
                                  f"{_tenant_text(t, False)}")  # fmt: skip


def _delete(client: AdminClient, args: argparse.Namespace) -> None:
    client.call("DELETE", _p("tenants", args.id))
    if args.json:
        print(json.dumps({"deleted": args.id}))
    else:
        print(f"deleted tenant {args.id}: its credentials no longer work")


# ---------------------------------------------------------------- keys


def _keys_create(client: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"kind": args.kind, "name": args.name}
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    made = client.call("POST", _p("tenants", args.id, "credentials"), body=body)
    if args.json:
        print(json.dumps(made, indent=2))
        return
    c = made.get("credential", {})
    expires = _when(c.get("expires_at")) if c.get("expires_at") is not None else "never"
    if args.kind == "sigv4":
        secret = [("aws_access_key_id", made.get("access_key_id")),
                  ("aws_secret_access_key", made.get("secret_access_key"))]  # fmt: skip
    else:
        secret = [("key", made.get("key"))]
    width = max(len(k) for k, _ in secret)
    print(f"created {c.get('kind')} credential {c.get('name')!r} ({c.get('id')}) for tenant "
          f"{args.id}, expires {expires}\n\n"
          + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in secret)
          + "\n\nThis is the only time the secret is shown: store it now (the gateway keeps no "
          "readable copy).")  # fmt: skip


def _keys_list(client: AdminClient, args: argparse.Namespace) -> None:
    data = client.call("GET", _p("tenants", args.id, "credentials"))
    _emit(args, data, lambda d: _credentials_text(d["credentials"]) if d.get("credentials")
          else f"(tenant {args.id} has no credentials)")  # fmt: skip


def _keys_revoke(client: AdminClient, args: argparse.Namespace) -> None:
    c = client.call("DELETE", _p("tenants", args.id, "credentials", args.credential_id))
    _emit(args, c, lambda c: f"revoked {c.get('kind')} credential {c.get('id')} "
                             f"({c.get('name')!r}) of tenant {args.id}: using it is now "
                             "AccessDeniedException")  # fmt: skip


# ---------------------------------------------------------------- usage and pools

USAGE_COLUMNS = (
    ("REQUESTS", "requests"), ("THROTTLED", "throttled"), ("INPUT", "input_tokens"),
    ("OUTPUT", "output_tokens"), ("CACHE READ", "cache_read_tokens"),
    ("CACHE WRITE", "cache_write_tokens"), ("QUOTA TOKENS", "quota_tokens"),
)  # fmt: skip


def _period_cells(period: dict[str, Any] | None) -> list[Any]:
    period = period or {}
    counts = [period.get(k) for _, k in USAGE_COLUMNS]
    return [_when(period.get("start")), *counts, _usd(period.get("spend_usd"))]


def _usage_headers(*first: str) -> tuple[str, ...]:
    return (*first, "START", *(h for h, _ in USAGE_COLUMNS), "SPEND USD")


def _budget_rows(budgets: list[dict[str, Any]], *first: Any) -> list[list[Any]]:
    rows = []
    for b in budgets:
        limit, used, left = b.get("limit"), b.get("used"), b.get("remaining")
        share = None
        if isinstance(limit, (int, float)) and isinstance(used, (int, float)):
            left = max(0, limit - used) if left is None else left
            share = f"{100 * used / limit:.1f}%" if limit else None
        money = _usd if "usd" in str(b.get("name", "")) else (lambda v: v)
        rows.append([*first, b.get("name"), money(limit), money(used), money(left), share,
                     _when(b.get("resets_at"))])  # fmt: skip
    return rows


BUDGET_HEADERS = ("BUDGET", "LIMIT", "USED", "REMAINING", "USED %", "RESETS AT")


def _tenant_usage_text(u: dict[str, Any]) -> str:
    periods = u.get("periods") or {}
    parts = [f"tenant {u.get('tenant')}, at {_when(u.get('at'))}",
             table(_usage_headers("PERIOD"),
                   [[p, *_period_cells(periods.get(p))] for p in PERIODS])]  # fmt: skip
    models = u.get("models") or {}
    if models:
        parts.append(table(_usage_headers("MODEL", "PERIOD"),
                           [[m, p, *_period_cells(by[p])]
                            for m, by in models.items() for p in PERIODS if p in by]))  # fmt: skip
    budgets = u.get("budgets") or []
    parts.append(table(BUDGET_HEADERS, _budget_rows(budgets)) if budgets else "(no budgets)")
    return "\n\n".join(parts)


def _all_usage_text(data: dict[str, Any]) -> str:
    tenants = data.get("tenants") or []
    if not tenants:
        return "(no tenants)"
    parts = [table(_usage_headers("TENANT", "PERIOD"),
                   [[u.get("tenant"), p, *_period_cells((u.get("periods") or {}).get(p))]
                    for u in tenants for p in PERIODS])]  # fmt: skip
    budgets = [r for u in tenants for r in _budget_rows(u.get("budgets") or [], u.get("tenant"))]
    if budgets:
        parts.append(table(("TENANT", *BUDGET_HEADERS), budgets))
    return "\n\n".join(parts)


def _usage(client: AdminClient, args: argparse.Namespace) -> None:
    if args.tenant:
        _emit(args, client.call("GET", _p("tenants", args.tenant, "usage")), _tenant_usage_text)
        return
    tenants: list[dict[str, Any]] = []
    after: str | None = None
    while True:  # pages in tenant id order: the next starts after the last one seen
        params: dict[str, Any] = {"limit": args.page_size}
        if after is not None:
            params["after"] = after
        got = client.call("GET", _p("usage"), params=params).get("tenants") or []
        tenants += got
        if len(got) < args.page_size or not got or got[-1].get("tenant") in (None, after):
            break
        after = got[-1]["tenant"]
    _emit(args, {"tenants": tenants}, _all_usage_text)


def _pools_text(data: dict[str, Any]) -> str:
    pools = data.get("pools") or []
    text = table(
        ("POOL", "ACCOUNT", "REGION", "SCOPE", "TPM", "EFFECTIVE TPM", "RPM", "TOKENS/DAY",
         "CONCURRENCY", "QUOTA FACTOR", "THROTTLED AT", "HOLDS UNTIL", "ROUTES"),
        [(p.get("pool"), p.get("account"), p.get("region"), p.get("scope"), p.get("tpm"),
          p.get("effective_tpm"), p.get("rpm"), p.get("tokens_per_day"), p.get("max_concurrency"),
          p.get("quota_factor"), _when(p.get("throttled_at")), _when(p.get("holds_until")),
          p.get("routes"))
         for p in pools],
    ) if pools else "(no pools)"  # fmt: skip
    calibration = data.get("calibration") or []
    if calibration:
        text += "\n\ninput estimate calibration:\n" + table(
            ("MODEL", "FAMILY", "FACTOR", "SAMPLES"),
            [(c.get("model"), c.get("family"), c.get("factor"), c.get("samples"))
             for c in calibration],
        )  # fmt: skip
    return text


def _pools(client: AdminClient, args: argparse.Namespace) -> None:
    _emit(args, client.call("GET", _p("pools")), _pools_text)


def _quota_report(client: AdminClient, args: argparse.Namespace) -> None:
    data = client.call("GET", _p("quota-report"), params={"days": args.days})
    if args.svg:
        try:
            with open(args.svg, "w", encoding="utf-8") as out:
                out.write(quota_report.svg(data))
        except OSError as exc:
            raise CliError(USAGE, f"cannot write the chart to {args.svg}: {exc.strerror}") from None
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(quota_report.markdown(data), end="")


# ---------------------------------------------------------------- the parser


def run(args: argparse.Namespace) -> int:
    """Run one admin command; the exit code (errors are printed on stderr)."""
    try:
        client = _client(args)
        try:
            args.action(client, args)
        except (AttributeError, KeyError, TypeError) as exc:  # JSON, but not the admin API's
            what = f"the answer from {client.url} is not shaped like the admin API's"
            raise CliError(UNREACHABLE, f"{what} ({type(exc).__name__})") from None
        finally:
            client.close()
    except CliError as exc:
        print(f"bedrock-gateway: {exc.message}", file=sys.stderr)
        return exc.code
    return OK


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", help=f"the gateway, e.g. http://gateway:8080 (default: ${URL_ENV})")
    group.add_argument(
        "--admin-key", metavar="KEY",
        help=f"an admin key; - reads it from stdin (default: ${KEY_ENV}, which other users "
             "cannot see in the process list)",
    )  # fmt: skip
    group.add_argument("--cacert", metavar="PATH",
                       help=f"CA bundle to verify the gateway's TLS certificate "
                            f"(default: ${CA_ENV})")  # fmt: skip
    group.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for each answer (default 10)")  # fmt: skip
    group.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    return common


def _optional(kind: Callable[[str], Any], clearing: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if clearing and text.strip().lower() == "none":
            return CLEAR
        return kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names it in its errors
    return parse


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE, not {text!r}")
    return name.strip(), value


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 35:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, 1-35: {text!r}")
    return int(text)


def _display_name(text: str) -> Any:
    return text


def _timestamp(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO 8601 time (2027-01-31T00:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _tenant_flags(parser: argparse.ArgumentParser, clearing: bool) -> None:
    none = " (none: clear it)" if clearing else ""
    g = parser.add_argument_group("tenant settings" + (" (only those given change)"
                                                       if clearing else ""))  # fmt: skip
    display = _display_name if not clearing else (lambda t: CLEAR if t == "" else t)
    g.add_argument("--display-name", dest="display_name", type=display, metavar="TEXT",
                   help="a readable name" + (" ('': clear it)" if clearing else ""))  # fmt: skip
    g.add_argument("--models", type=_optional(_models, clearing), metavar="A,B",
                   help="models the tenant may call, comma-separated "
                   + ("(none: every model)" if clearing else "(default: every model)"))  # fmt: skip
    for flag, what in (("tpm", "tokens per minute"), ("rpm", "requests per minute"),
                       ("tokens-per-day", "tokens per day (UTC)"),
                       ("tokens-per-month", "tokens per calendar month (UTC)"),
                       ("max-concurrency", "calls in flight at once")):  # fmt: skip
        g.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=_optional(int, clearing),
                       metavar="N", help=what + none)  # fmt: skip
    g.add_argument("--monthly-spend-usd", dest="monthly_spend_usd",
                   type=_optional(float, clearing), metavar="USD",
                   help="spend budget per calendar month, in dollars" + none)  # fmt: skip
    g.add_argument("--priority", choices=("interactive", "batch"))
    g.add_argument("--weight", type=float, metavar="W", help="fair-queue weight (default 1)")
    g.add_argument("--max-wait-s", dest="max_wait_s", type=_optional(float, clearing),
                   metavar="S",
                   help="longest a call of this tenant waits in the queue" + none)  # fmt: skip
    g.add_argument("--allow-fallback", dest="allow_fallback",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="whether the models' fallback models may answer")  # fmt: skip
    g.add_argument("--label", dest="labels", action="append", metavar="KEY=VALUE",
                   type=_optional(_label, clearing),
                   help="a free-form label (team, cost centre); repeat for several"
                   + ("; on set the labels given replace the tenant's, none removes all"
                      if clearing else ""))  # fmt: skip


def add_commands(sub: Any) -> None:
    """Register ``tenants``, ``usage``, ``pools`` and ``quota-report`` on
    ``bedrock-gateway``'s subparsers."""
    common = _common()
    epilog = ("exit codes: 0 ok; 1 the API refused (4xx); 2 usage or configuration error; "
              "3 gateway unreachable or 5xx")  # fmt: skip

    def leaf(parent: Any, name: str, action: Callable[..., None], help_: str) -> Any:
        parser = parent.add_parser(name, parents=[common], help=help_, description=help_,
                                   epilog=epilog)  # fmt: skip
        parser.__class__ = OneLineParser  # bedrock-gateway's own subparsers make plain ones
        parser.set_defaults(func=run, action=action)
        return parser

    tenants = sub.add_parser(
        "tenants", help="manage tenants and their keys through the admin API",
        description="Manage tenants and their keys through the admin API.", epilog=epilog,
    )  # fmt: skip
    tenants.__class__ = OneLineParser
    tsub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND",
                                  parser_class=OneLineParser)  # fmt: skip

    create = leaf(tsub, "create", _create, "create a tenant")
    create.add_argument("id", help="1-64 letters, digits, '_', '-' or '.'")
    _tenant_flags(create, clearing=False)
    listing = leaf(tsub, "list", _list, "list every tenant (following the pages)")
    listing.add_argument("--page-size", type=int, default=500, metavar="N",
                         help="tenants per admin API call (1-500, default 500)")  # fmt: skip
    leaf(tsub, "show", _show, "one tenant, with its credentials").add_argument("id")
    update = leaf(tsub, "set", _set, "change a tenant's settings (only the flags given)")
    update.add_argument("id")
    _tenant_flags(update, clearing=True)
    leaf(tsub, "delete", _delete, "delete a tenant (its keys stop working)").add_argument("id")

    keys = tsub.add_parser("keys", help="a tenant's credentials: create, list, revoke",
                           description="A tenant's credentials: create, list, revoke.",
                           epilog=epilog)  # fmt: skip
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND",
                               parser_class=OneLineParser)  # fmt: skip
    kcreate = leaf(ksub, "create", _keys_create,
                   "issue a bearer key or a SigV4 key pair (its secret printed once)")  # fmt: skip
    kcreate.add_argument("id", help="the tenant")
    kcreate.add_argument("--kind", required=True, choices=("bearer", "sigv4"))
    kcreate.add_argument("--name", required=True, help="what it is for (1-64 characters)")
    kcreate.add_argument("--expires-at", type=_timestamp, metavar="WHEN",
                         help="Unix seconds or ISO 8601 (2027-01-31T00:00:00Z); "
                              "default never")  # fmt: skip
    leaf(ksub, "list", _keys_list, "a tenant's credentials (no secrets)").add_argument("id")
    revoke = leaf(ksub, "revoke", _keys_revoke, "revoke a credential (it stays listed)")
    revoke.add_argument("id", help="the tenant")
    revoke.add_argument("credential_id", help="as keys list shows it")

    usage = leaf(sub, "usage", _usage,
                 "tokens, requests, throttling and spend this minute, day and month")  # fmt: skip
    usage.add_argument("tenant", nargs="?", help="one tenant, by model too (default: every tenant)")
    usage.add_argument("--page-size", type=int, default=500, metavar="N",
                       help="tenants per admin API call, without TENANT (1-500)")  # fmt: skip
    leaf(sub, "pools", _pools, "every quota pool: limits and learned quota factor")
    report = leaf(sub, "quota-report", _quota_report,
                  "per model and route, the figures an AWS quota-increase request asks for, "
                  "as Markdown (or --json), and a chart of calls served and throttled per hour "
                  "(--svg)")  # fmt: skip
    report.add_argument("--days", type=_days, default=7, metavar="N",
                        help="the last N days (1-35, default 7)")  # fmt: skip
    report.add_argument("--svg", metavar="FILE", help="also write the hourly chart to FILE")
