"""Simulator settings: YAML + flags, pool overrides, burndown lookup."""

from __future__ import annotations

import argparse
from pathlib import Path

import pydantic
import pytest

from gateway.simulator.cli import add_arguments, config_from_args, run
from gateway.simulator.config import (
    PoolOverride,
    SimulatorConfig,
    burndown_for,
    load_config,
    resolve,
)
from gateway.simulator.quota import Limits, Mode

SONNET_4 = "us.anthropic.claude-sonnet-4-20250514-v1:0"


def test_defaults() -> None:
    config = SimulatorConfig()
    assert config.mode is Mode.ROLLING
    assert config.default_quota.tpm == 1_000_000
    assert config.default_quota.rpm is None
    assert config.latency.ttft_ms == 20


@pytest.mark.parametrize(
    ("model", "factor"),
    [
        (SONNET_4, 5),
        ("anthropic.claude-3-7-sonnet-20250219-v1:0", 5),
        ("global.anthropic.claude-opus-4-1-20250805-v1:0", 5),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", 5),
        ("anthropic.claude-3-haiku-20240307-v1:0", 1),
        ("amazon.nova-lite-v1:0", 1),
    ],
)
def test_default_burndown(model: str, factor: int) -> None:
    assert burndown_for(SimulatorConfig(), model) == factor


def test_longest_burndown_key_wins() -> None:
    config = SimulatorConfig(burndown={"claude": 2, "claude-opus-4-8": 15})
    assert burndown_for(config, "anthropic.claude-opus-4-8-v1:0") == 15
    assert burndown_for(config, "anthropic.claude-3-haiku") == 2


def test_overrides_region_specific_beats_any_region_and_inherits_defaults() -> None:
    config = SimulatorConfig.model_validate(
        {
            "default_quota": {"tpm": 1000, "rpm": 50, "tokens_per_day": 10_000},
            "pools": [
                {"model": SONNET_4, "tpm": 2000},
                {
                    "model": SONNET_4,
                    "region": "us-west-2",
                    "tpm": 3000,
                    "rpm": None,
                    "mode": "bucket",
                },
            ],
        }
    )
    assert resolve(config, config.pools, "us-east-1", SONNET_4) == (
        Limits(2000, 50, 10_000),
        Mode.ROLLING,
    )
    # rpm: null written out means "no RPM limit" for that pool
    assert resolve(config, config.pools, "us-west-2", SONNET_4) == (
        Limits(3000, None, 10_000),
        Mode.BUCKET,
    )
    assert resolve(config, config.pools, "us-east-1", "other") == (
        Limits(1000, 50, 10_000),
        Mode.ROLLING,
    )


def test_config_is_frozen_and_strict() -> None:
    config = SimulatorConfig()
    with pytest.raises(pydantic.ValidationError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        SimulatorConfig.model_validate({"tmp": 5})
    with pytest.raises(pydantic.ValidationError):
        PoolOverride.model_validate({"model": "m", "tpm": 0})


def test_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "mode: bucket\n"
        "default_quota: {tpm: 5000, rpm: 10}\n"
        "latency: {ttft_ms: 5, per_output_token_ms: 1}\n"
        "pools:\n  - {model: m1, tpm: 100}\n"
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(path), "--tpm", "7000", "--ttft-ms", "0", "--port", "9999"]
    )
    config = config_from_args(args)
    assert config.mode is Mode.BUCKET
    assert config.default_quota.tpm == 7000
    assert config.default_quota.rpm == 10  # kept from the file: nested keys merge
    assert config.latency.ttft_ms == 0
    assert config.latency.per_output_token_ms == 1
    assert config.port == 9999
    assert config.pools == (PoolOverride(model="m1", tpm=100),)


def test_bad_yaml_top_level(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_run_refuses_a_bad_config_without_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--config", str(tmp_path / "missing.yaml")])) == 2
    assert run(parser.parse_args(["--tpm", "0"])) == 2
    assert "bad configuration" in capsys.readouterr().err
