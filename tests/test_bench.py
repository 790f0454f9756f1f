"""``python -m bench --quick`` end to end: the entry point docs/benchmarks.md quotes still runs,
and what it reports holds for every gateway variant (two Redis round trips a call, no errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_quick_bench_runs_every_variant() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--no-pin"],
        cwd=ROOT, capture_output=True, text=True, timeout=200, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    (rows,) = report["bodies"].values()
    names = [row["variant"] for row in rows]
    assert names[:2] == ["direct (simulator)", "passthrough (raw ASGI + aiohttp)"]
    gateways = [row for row in rows if row["variant"].startswith("gateway")]
    assert {row["variant"].split(",")[0] for row in gateways} == {
        "gateway h1 (uvicorn)", "gateway auto (granian)"
    }  # fmt: skip
    for row in rows:
        assert row["errors"] == 0, row
        assert row["rps"] > 0, row
    for row in gateways:
        assert row["evalsha"] == pytest.approx(2.0, abs=0.02), row  # admit + settle
        assert row["cpu_ms"] > 0
        low, high = row["cpu_vs_passthrough_range"]
        assert low <= row["cpu_vs_passthrough"] <= high
