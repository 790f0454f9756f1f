"""``quotas sync``: quota names, display-name matching, the diff, the YAML edit, and the
command end to end against the simulator's Service Quotas stand-in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import load_config, parse_config
from gateway.quotas.client import regions_by_account
from gateway.quotas.names import ParsedQuota, display_matches, parse_quota_name
from gateway.quotas.sync import QuotaRow, SyncRoute, apply_diff, compute, render, routes_of
from gateway.quotas.yamledit import FieldEdit, YamlEditError, set_route_fields
from gateway.simulator import SimulatorConfig, create_simulator_app
from tests.servers import ServerThread, free_port

S45 = "Anthropic Claude Sonnet 4.5 V1"
S45_ID = "anthropic.claude-sonnet-4-5-20250929-v1:0"
S45_GEO = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
S45_GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
NOVA_ID = "amazon.nova-lite-v1:0"

# --- names ------------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, ParsedQuota | None]] = [
    (f"On-demand InvokeModel tokens per minute for {S45}", ParsedQuota("tpm", "on-demand", S45)),
    ("On-demand model inference tokens per minute for Amazon Nova Lite",
     ParsedQuota("tpm", "on-demand", "Amazon Nova Lite")),
    ("Cross-Region InvokeModel tokens per minute for Anthropic Claude 3.5 Sonnet V2",
     ParsedQuota("tpm", "geo", "Anthropic Claude 3.5 Sonnet V2")),
    (f"Cross-region model inference tokens per minute for {S45}", ParsedQuota("tpm", "geo", S45)),
    (f"Cross-Region model inference tokens per minute for {S45}", ParsedQuota("tpm", "geo", S45)),
    (f"Global cross-Region model inference tokens per minute for {S45}",
     ParsedQuota("tpm", "global", S45)),
    (f"Global cross-region model inference tokens per minute for {S45}",
     ParsedQuota("tpm", "global", S45)),
    (f"Model invocation max tokens per day for {S45}", ParsedQuota("tpd", None, S45)),
    (f"Model invocation max tokens per day for {S45} (doubled for cross-region calls)",
     ParsedQuota("tpd", None, S45, doubled_cross_region=True)),
    (f"Global cross-region model inference tokens per day for {S45}",
     ParsedQuota("tpd", "global", S45)),
    (f"On-demand InvokeModel requests per minute for {S45}", ParsedQuota("rpm", "on-demand", S45)),
    ("On-demand model inference requests per minute for Meta Llama 3.1 70B Instruct",
     ParsedQuota("rpm", "on-demand", "Meta Llama 3.1 70B Instruct")),
    (f"Cross-region model inference requests per minute for {S45}",
     ParsedQuota("rpm", "geo", S45)),
    (f"Global cross-Region model inference requests per minute for {S45}",
     ParsedQuota("rpm", "global", S45)),
    (f"ON-DEMAND   invokemodel TOKENS per minute for {S45}", ParsedQuota("tpm", "on-demand", S45)),
    (f"Cross-region model inference tokens per minute for {S45} 1M Context Length",
     ParsedQuota("tpm", "geo", f"{S45} 1M Context Length")),
    ("Cross-Model Max Tokens Per Day", None),
    ("On-demand model inference input tokens per minute for OpenAI GPT OSS 120B", None),
    ("On-demand model inference output tokens per minute for OpenAI GPT OSS 120B", None),
    ("Model invocation max requests per day for Amazon Nova Lite", None),
    ("Batch inference job size (in GB) for Anthropic Claude 3 Haiku", None),
    ("Number of custom models", None),
    ("On-demand InvokeModel tokens per minute for", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), PARSE_CASES)
def test_parse_quota_name(name: str, expected: ParsedQuota | None) -> None:
    assert parse_quota_name(name) == expected


MATCHES = [
    (S45, S45_ID),
    ("Anthropic Claude 3.5 Sonnet V2", "anthropic.claude-3-5-sonnet-20241022-v2:0"),
    ("Anthropic Claude 3.5 Sonnet", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("Anthropic Claude 3.5 Sonnet V1", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("Amazon Nova Lite", NOVA_ID),
    ("amazon nova lite", NOVA_ID),
    ("Amazon Nova 2 Lite", "amazon.nova-2-lite-v1:0"),
    ("Anthropic Claude Opus 4", "anthropic.claude-opus-4-20250514-v1:0"),
    ("Anthropic Claude Opus 4.1", "anthropic.claude-opus-4-1-20250805-v1:0"),
    ("Anthropic Claude 3 Haiku", "anthropic.claude-3-haiku-20240307-v1:0"),
    ("Anthropic Claude 3.7 Sonnet V1", "anthropic.claude-3-7-sonnet-20250219-v1:0"),
    ("Anthropic Claude Haiku 4.5", "anthropic.claude-haiku-4-5-20251001-v1:0"),
    ("Meta Llama 3.1 70B Instruct", "meta.llama3-1-70b-instruct-v1:0"),
    ("Meta Llama 3 8B Instruct", "meta.llama3-8b-instruct-v1:0"),
    ("Cohere Command R+", "cohere.command-r-plus-v1:0"),
    ("DeepSeek-R1", "deepseek.r1-v1:0"),
    ("DeepSeek V3", "deepseek.v3-v1:0"),
    ("AI21 Labs Jamba 1.5 Large", "ai21.jamba-1-5-large-v1:0"),
    (S45, S45_GEO),  # a profile id means its base model
]
NON_MATCHES = [
    (f"{S45} 1M Context Length", S45_ID),
    ("Anthropic Claude Opus 4", "anthropic.claude-opus-4-1-20250805-v1:0"),
    ("Anthropic Claude Opus 4.1", "anthropic.claude-opus-4-20250514-v1:0"),
    ("Anthropic Claude 3.5 Sonnet V2", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("Anthropic Claude 3.5 Sonnet", "anthropic.claude-3-5-sonnet-20241022-v2:0"),
    ("Anthropic Claude Sonnet 4", S45_ID),
    ("Anthropic Claude 3 Sonnet", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("Anthropic Claude 3.5 Haiku", "anthropic.claude-3-haiku-20240307-v1:0"),
    ("Amazon Nova Lite", "amazon.nova-2-lite-v1:0"),
    ("Amazon Nova Pro", NOVA_ID),
    ("Amazon Nova Micro", NOVA_ID),
    ("Meta Llama 3.1 8B Instruct", "meta.llama3-1-70b-instruct-v1:0"),
    ("Meta Llama 3 70B Instruct", "meta.llama3-1-70b-instruct-v1:0"),
    ("Cohere Command R", "cohere.command-r-plus-v1:0"),
    ("Anthropic Claude Sonnet 4.5 V2", S45_ID),
]


@pytest.mark.parametrize(("display", "model_id"), MATCHES)
def test_display_name_matches_model_id(display: str, model_id: str) -> None:
    assert display_matches(display, model_id)


@pytest.mark.parametrize(("display", "model_id"), NON_MATCHES)
def test_display_name_does_not_match(display: str, model_id: str) -> None:
    assert not display_matches(display, model_id)


# --- compute -----------------------------------------------------------------------------------


def route(upstream_id: str = S45_ID, scope: Any = "on-demand", **kw: Any) -> SyncRoute:
    fields: dict[str, Any] = {
        "model": "sonnet", "index": 0, "account": "a", "region": "us-east-1",
        "upstream_id": upstream_id, "scope": scope, "base_model": S45_ID,
        "tpm": None, "rpm": None, "tokens_per_day": None, "max_concurrency": None,
    }  # fmt: skip
    return SyncRoute(**(fields | kw))


def row(name: str, value: float, account: str = "a", region: str = "us-east-1") -> QuotaRow:
    return QuotaRow(account, region, name, "L-00000000", value)


ON_DEMAND_TPM = f"On-demand InvokeModel tokens per minute for {S45}"
GEO_TPM = f"Cross-Region InvokeModel tokens per minute for {S45}"
GLOBAL_TPM = f"Global cross-Region model inference tokens per minute for {S45}"
DAILY = f"Model invocation max tokens per day for {S45}"
DAILY_DOUBLED = f"{DAILY} (doubled for cross-region calls)"
GLOBAL_DAILY = f"Global cross-region model inference tokens per day for {S45}"


def applied_values(report: Any) -> dict[tuple[str, str], int]:
    return {(a.route.upstream_id, a.field): a.applied for a in report.applied}


def test_each_scope_draws_on_its_own_row() -> None:
    routes = [
        route(tpm=200_000),
        route(S45_GEO, "geo", index=1, tpm=400_000),
        route(S45_GLOBAL, "global", index=2),
    ]
    rows = [row(ON_DEMAND_TPM, 400_000), row(GEO_TPM, 800_000), row(GLOBAL_TPM, 1_000_000)]
    report = compute(routes, rows)
    assert applied_values(report) == {
        (S45_ID, "tpm"): 400_000,
        (S45_GEO, "tpm"): 800_000,
        (S45_GLOBAL, "tpm"): 1_000_000,
    }
    assert [(c.configured, c.applied) for c in report.changes] == [
        (200_000, 400_000), (400_000, 800_000), (None, 1_000_000),
    ]  # fmt: skip
    assert report.unmatched == ()


def test_rows_of_other_regions_and_accounts_do_not_apply() -> None:
    rows = [row(ON_DEMAND_TPM, 1, region="us-west-2"), row(ON_DEMAND_TPM, 2, account="b")]
    report = compute([route(tpm=5)], rows)
    assert report.applied == ()
    assert [(r.label, f) for r, f in report.missing] == [(f"a/us-east-1/{S45_ID}", "tpm")]
    assert report.unmatched == ()  # no route in that account and region: only counted
    assert report.other_rows == 2


def test_daily_row_applies_to_every_scope_doubled_only_when_the_name_says_so() -> None:
    routes = [route(), route(S45_GEO, "geo", index=1), route(S45_GLOBAL, "global", index=2)]
    plain = compute(routes, [row(DAILY, 1_000)])
    assert {v for (_, f), v in applied_values(plain).items() if f == "tokens_per_day"} == {1_000}
    doubled = compute(routes, [row(DAILY_DOUBLED, 1_000)])
    assert applied_values(doubled) == {
        (S45_ID, "tokens_per_day"): 1_000,
        (S45_GEO, "tokens_per_day"): 2_000,
        (S45_GLOBAL, "tokens_per_day"): 2_000,
    }


def test_a_global_daily_row_beats_the_generic_one_for_global_routes() -> None:
    routes = [route(), route(S45_GLOBAL, "global", index=1)]
    report = compute(routes, [row(DAILY_DOUBLED, 1_000), row(GLOBAL_DAILY, 5_000)])
    assert applied_values(report) == {
        (S45_ID, "tokens_per_day"): 1_000,
        (S45_GLOBAL, "tokens_per_day"): 5_000,
    }


def test_rpm_rows_set_rpm() -> None:
    report = compute(
        [route(rpm=10)], [row(f"On-demand InvokeModel requests per minute for {S45}", 50)]
    )
    assert [(c.field, c.configured, c.applied) for c in report.changes] == [("rpm", 10, 50)]


def test_conflicting_rows_take_the_lowest_and_say_so() -> None:
    newer = f"On-demand model inference tokens per minute for {S45}"
    report = compute([route(tpm=1)], [row(ON_DEMAND_TPM, 300_000), row(newer, 250_000)])
    assert report.changes[0].applied == 250_000
    assert len(report.changes[0].rows) == 2
    assert any("disagree" in note for note in report.notes)


def test_a_zero_quota_is_reported_not_written() -> None:
    report = compute([route(tokens_per_day=100)], [row(DAILY, 0)])
    assert report.changes == ()
    assert any("applied quota is 0" in note for note in report.notes)


def test_application_profiles_are_skipped_with_a_note() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"
    report = compute([route(arn, "application", tpm=5)], [row(ON_DEMAND_TPM, 9)])
    assert report.applied == ()
    assert "application inference profile" in report.notes[0]


def test_variants_are_listed_and_other_models_only_counted() -> None:
    one_m = f"Cross-region model inference tokens per minute for {S45} 1M Context Length"
    rows = [
        row(ON_DEMAND_TPM, 1_000),
        row(one_m, 7),
        row("On-demand model inference tokens per minute for Amazon Nova Pro", 9),
        row("Cross-Model Max Tokens Per Day", 9),
    ]
    report = compute([route(tpm=1_000)], rows)
    assert report.changes == ()
    assert [r.name for r in report.unmatched] == [one_m]
    assert report.other_rows == 2


def test_render_aligns_columns_and_summarises() -> None:
    routes = [route(tpm=200_000), route(S45_GEO, "geo", index=1, tpm=400_000)]
    report = compute(routes, [row(ON_DEMAND_TPM, 400_000), row(GEO_TPM, 800_000), row(DAILY, 9)])
    lines = render(report).splitlines()
    assert lines[0].split()[:6] == ["model", "route", "field", "configured", "applied", "change"]
    table = lines[:5]
    ends = {line.index("  ", line.index(" tpm") + 4) for line in table[1:] if " tpm" in line}
    assert len(ends) == 1  # the field column has one width
    assert re.search(rf"{re.escape(S45_ID)}\s+tpm\s+200000\s+400000\s+\+200000\s", lines[1])
    assert lines[-1] == "4 of 4 quota values differ from the applied quotas"
    in_sync = render(compute([route(tpm=400_000)], [row(ON_DEMAND_TPM, 400_000)]))
    assert in_sync == "in sync: 1 quota values match the applied quotas\n"


# --- apply_diff / the YAML edit -------------------------------------------------------------

CONFIG_TEXT = """\
# The gateway config (comments must survive).
accounts:
  main: {access_key_id_env: K, secret_access_key_env: S}
models:
  sonnet:
    model_id: anthropic.claude-sonnet-4-5-20250929-v1:0
    routes:   # tried in order
      # on-demand
      - {account: main, region: us-east-1, tpm: 200000, rpm: 200}   # keep me
      - account: main
        region: us-east-1
        profile: us.anthropic.claude-sonnet-4-5-20250929-v1:0
        tpm: 400000  # geo
      # trailing comment
  nova:
    model_id: amazon.nova-lite-v1:0
    routes:
      - account: main
        region: us-east-1
        tpm:
"""


def test_set_route_fields_replaces_and_inserts_keeping_everything_else() -> None:
    edits = [
        FieldEdit("sonnet", 0, "tpm", 400_000),
        FieldEdit("sonnet", 0, "tokens_per_day", 576_000_000),
        FieldEdit("sonnet", 1, "tpm", 800_000),
        FieldEdit("sonnet", 1, "rpm", 100),
        FieldEdit("sonnet", 1, "tokens_per_day", 1_152_000_000),
        FieldEdit("nova", 0, "tpm", 2_000_000),
    ]
    result = set_route_fields(CONFIG_TEXT, edits)
    assert result == CONFIG_TEXT.replace(
        "tpm: 200000, rpm: 200}", "tpm: 400000, rpm: 200, tokens_per_day: 576000000}"
    ).replace(
        "        tpm: 400000  # geo\n",
        "        tpm: 800000  # geo\n        rpm: 100\n        tokens_per_day: 1152000000\n",
    ).replace("        tpm:\n", "        tpm: 2000000\n")
    data = yaml.safe_load(result)
    assert data["models"]["sonnet"]["routes"][1]["rpm"] == 100


def test_set_route_fields_at_end_of_file_without_newline_and_with_crlf() -> None:
    text = "models:\r\n  m:\r\n    routes:\r\n      - account: a\r\n        region: r"
    result = set_route_fields(text, [FieldEdit("m", 0, "tpm", 5)])
    assert result == text + "\n        tpm: 5"
    assert yaml.safe_load(result)["models"]["m"]["routes"][0]["tpm"] == 5


def test_set_route_fields_refuses_aliases_merge_keys_and_missing_routes() -> None:
    aliased = "models:\n  a:\n    routes: [&r {account: x, tpm: 1}]\n  b:\n    routes: [*r]\n"
    with pytest.raises(YamlEditError, match="alias"):
        set_route_fields(aliased, [FieldEdit("a", 0, "tpm", 2), FieldEdit("b", 0, "tpm", 3)])
    merged = "base: &b {tpm: 1}\nmodels:\n  a:\n    routes:\n      - {<<: *b, account: x}\n"
    with pytest.raises(YamlEditError, match="merge key"):
        set_route_fields(merged, [FieldEdit("a", 0, "tpm", 2)])
    with pytest.raises(YamlEditError, match="no such route"):
        set_route_fields(CONFIG_TEXT, [FieldEdit("sonnet", 5, "tpm", 2)])
    assert set_route_fields(CONFIG_TEXT, []) == CONFIG_TEXT


def test_apply_diff_uses_the_report_changes() -> None:
    text = CONFIG_TEXT.replace("tpm:\n", "tpm: 1\n")
    config = parse_config(yaml.safe_load(text))
    report = compute(routes_of(config), [row(ON_DEMAND_TPM, 300_000, account="main")])
    assert [c.route.index for c in report.changes] == [0]
    result = apply_diff(text, report.changes)
    assert result == text.replace("tpm: 200000, rpm", "tpm: 300000, rpm")


def test_regions_by_account() -> None:
    config = parse_config(yaml.safe_load(CONFIG_TEXT.replace("tpm:\n", "tpm: 1\n")))
    assert regions_by_account(config) == {"main": ["us-east-1"]}


# --- the command against the simulator ---------------------------------------------------------

SIM_QUOTAS: list[dict[str, Any]] = [
    {"quota_name": ON_DEMAND_TPM, "value": 400_000},
    {"quota_name": GEO_TPM, "value": 800_000},
    {"quota_name": DAILY_DOUBLED, "value": 576_000_000, "adjustable": False},
    {"quota_name": f"{GEO_TPM} 1M Context Length", "value": 200_000},
    {"quota_name": "On-demand model inference tokens per minute for Amazon Nova Lite",
     "value": 2_000_000},
    {"quota_name": "On-demand model inference tokens per minute for Amazon Nova Lite",
     "value": 1_000_000, "region": "us-west-2"},
    {"quota_name": "Cross-Model Max Tokens Per Day", "value": 1e9},
] + [
    {"quota_name": f"On-demand model inference tokens per minute for Other Model {i}", "value": 1}
    for i in range(120)  # more than one page of 100
]  # fmt: skip


@pytest.fixture(scope="module")
def quotas_endpoint() -> Iterator[ServerThread]:
    config = SimulatorConfig.model_validate({"port": 0, "service_quotas": SIM_QUOTAS})
    with ServerThread(create_simulator_app(config)) as server:
        yield server


@pytest.fixture
def config_file(
    tmp_path: Path, quotas_endpoint: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("QS_KEY", "AKIDQUOTASTEST")
    monkeypatch.setenv("QS_SECRET", "quotas-secret")
    text = (
        CONFIG_TEXT.replace(
            "main: {access_key_id_env: K, secret_access_key_env: S}",
            "main:\n    access_key_id_env: QS_KEY\n    secret_access_key_env: QS_SECRET\n"
            f"    endpoint_url: {quotas_endpoint.url}  # the simulator",
        )
        .replace("tpm:\n", "tpm: 2000000\n")
        .replace("      - account: main\n        region: us-east-1\n        tpm: 2000000\n",
                 "      - {account: main, region: us-east-1, tpm: 2000000}\n"
                 "      - {account: main, region: us-west-2, tpm: 2000000}\n")
    )  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    load_config(path)  # the starting point is valid
    return path


def sync(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["quotas", "sync", "--config", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sync_reports_the_differences_and_exits_1(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = config_file.read_text(encoding="utf-8")
    code, out, _ = sync(config_file, capsys)
    assert code == 1
    on_demand, geo = f"main/us-east-1/{S45_ID}", f"main/us-east-1/{S45_GEO}"
    assert re.search(rf"sonnet\s+{re.escape(on_demand)}\s+tpm\s+200000\s+400000\s+\+200000", out)
    assert re.search(rf"sonnet\s+{re.escape(geo)}\s+tpm\s+400000\s+800000\s+\+400000", out)
    assert re.search(rf"{re.escape(on_demand)}\s+tokens_per_day\s+-\s+576000000\s+set", out)
    assert re.search(rf"{re.escape(geo)}\s+tokens_per_day\s+-\s+1152000000\s+set", out)
    assert re.search(r"nova\s+main/us-west-2/amazon.nova-lite-v1:0\s+tpm\s+2000000\s+1000000", out)
    assert "main/us-east-1/amazon.nova-lite-v1:0" not in out  # us-east-1 is in sync
    assert "1M Context Length = 200000" in out  # listed, not applied
    assert f"{on_demand}  rpm 200" in out  # configured, no row
    assert "main/us-west-2  " not in out  # sonnet has no route there: counted, not listed
    # 120 other models + Cross-Model Max Tokens Per Day in each region, 4 sonnet rows in us-west-2
    assert "(246 more rows" in out
    assert "5 of 6 quota values differ from the applied quotas" in out
    assert config_file.read_text(encoding="utf-8") == before  # nothing written


def test_sync_write_updates_the_file_then_is_in_sync(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sync(config_file, capsys, "--write")
    assert code == 0
    assert f"wrote 5 changes to {config_file}" in out
    text = config_file.read_text(encoding="utf-8")
    assert "# The gateway config (comments must survive)." in text
    assert "tpm: 400000, rpm: 200, tokens_per_day: 576000000}   # keep me" in text
    assert "        tpm: 800000  # geo\n        tokens_per_day: 1152000000\n" in text
    config = load_config(config_file)
    routes = config.models["sonnet"].routes
    assert (routes[0].tpm, routes[0].tokens_per_day) == (400_000, 576_000_000)
    assert (routes[1].tpm, routes[1].tokens_per_day) == (800_000, 1_152_000_000)
    assert config.models["nova"].routes[1].tpm == 1_000_000
    code, out, _ = sync(config_file, capsys)
    assert code == 0
    assert out.rstrip().endswith("in sync: 6 quota values match the applied quotas")


def test_sync_fails_with_2_when_the_endpoint_is_down(
    config_file: Path, quotas_endpoint: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config_file.read_text(encoding="utf-8")
    config_file.write_text(text.replace(quotas_endpoint.url, f"http://127.0.0.1:{free_port()}"))
    code, out, err = sync(config_file, capsys)
    assert code == 2
    assert "cannot read the applied quotas: account main, region us-east-1" in err
    assert out == ""


def test_sync_fails_with_2_without_credentials(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QS_SECRET")
    code, _, err = sync(config_file, capsys)
    assert code == 2
    assert "QS_SECRET is not set" in err


def test_sync_fails_with_2_on_an_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("accounts: {}\nmodels: {}\nnonsense: 1\n", encoding="utf-8")
    code, _, err = sync(path, capsys)
    assert code == 2
    assert "invalid configuration" in err
