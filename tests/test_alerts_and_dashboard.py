"""The alert rules pass promtool, each alert is tested firing and not firing, and every metric
the alerts and the Grafana dashboard name is one the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bedrock-gateway.json"
_NAME = re.compile(r"\b(gateway_[a-z0-9_]+)")


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        pytest.skip("promtool is not installed (scripts/install-promtool installs it from "
                    "Debian's prometheus package; it needs apt-get)")  # fmt: skip
    return found


def exported() -> set[str]:
    """Every sample name the gateway's registry can expose."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def alert_rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_runs_the_rule_tests() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {rule["alert"]: {True, False} for rule in alert_rules()} == cases


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_expressions_name_only_exported_metrics(source: str) -> None:
    if source == "alerts":
        expressions = [rule["expr"] for rule in alert_rules()]
    else:
        expressions = dashboard_expressions()
    named = {name for expr in expressions for name in _NAME.findall(expr)}
    assert named, "no gateway metric named at all"
    assert named - exported() == set()


def test_the_dashboard_covers_what_operators_ask_for() -> None:
    named = {name for expr in dashboard_expressions() for name in _NAME.findall(expr)}
    for needed in ("gateway_pool_utilization_ratio", "gateway_pool_quota_tokens_per_minute",
                   "gateway_pool_used_tokens", "gateway_throttles_total",
                   "gateway_upstream_throttles_total", "gateway_queue_depth",
                   "gateway_queue_wait_seconds_bucket", "gateway_upstream_ttfb_seconds_bucket",
                   "gateway_overhead_seconds_bucket", "gateway_tokens_total"):  # fmt: skip
        assert needed in named
