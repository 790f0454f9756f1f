"""The price table: per-model and per-route prices applied to a usage, in micro-dollars."""

from __future__ import annotations

import pytest

from gateway.catalog import Catalog
from gateway.config import ModelConfig
from gateway.cost import Estimate, Usage
from gateway.pricing import FREE, PriceTable

MODELS = {
    "sonnet": {
        "model_id": "anthropic.claude-sonnet-4-20250514-v1:0",
        "price": {"input": 0.003, "output": 0.015, "cache_read": 0.0003, "cache_write": 0.00375},
        "routes": [
            {"account": "main", "region": "us-east-1"},
            {
                "account": "main",
                "region": "us-east-1",
                "profile": "us.anthropic.claude-sonnet-4-20250514-v1:0",
                "price": {"input": 0.0033, "output": 0.0165},
            },
        ],
    },
    "free": {
        "model_id": "amazon.titan-text-lite-v1",
        "routes": [{"account": "main", "region": "us-east-1"}],
    },
}


def table() -> tuple[PriceTable, Catalog]:
    models = {k: ModelConfig.model_validate(v) for k, v in MODELS.items()}
    return PriceTable(models), Catalog(models)


def test_model_price_applied_to_every_kind_of_token() -> None:
    prices, catalog = table()
    target = catalog.resolve("sonnet")
    assert target is not None
    usage = Usage(
        input_tokens=1000, output_tokens=2000, cache_read_tokens=10_000, cache_write_tokens=4000
    )
    # 1000 x 0.003/1k + 2000 x 0.015/1k + 10000 x 0.0003/1k + 4000 x 0.00375/1k
    # = 0.003 + 0.030 + 0.003 + 0.015 = 0.051 USD
    assert prices.cost_micros("sonnet", None, usage) == 51_000
    assert prices.cost_usd("sonnet", None, usage) == pytest.approx(0.051, abs=1e-9)
    assert prices.cost_micros("sonnet", target.routes[0], usage) == 51_000
    assert prices.cost_micros("sonnet", target.routes[1], usage) != 51_000  # its own price


def test_route_override_replaces_model_price_and_defaults_cache_to_input() -> None:
    prices, _ = table()
    label = "main/us-east-1/us.anthropic.claude-sonnet-4-20250514-v1:0"
    usage = Usage(
        input_tokens=1000, output_tokens=1000, cache_read_tokens=1000, cache_write_tokens=1000
    )
    # 3 x 0.0033 (input, read, write at the input price) + 0.0165 = 0.0264
    assert prices.cost_micros("sonnet", label, usage) == 26_400
    assert (
        prices.cost_micros(
            "sonnet", "main/us-east-1/anthropic.claude-sonnet-4-20250514-v1:0", usage
        )
        == 22_050
    )


def test_rounds_up_to_the_micro_dollar_and_unpriced_is_free() -> None:
    prices, _ = table()
    # one input token: 0.003 / 1000 USD = 3 micro-dollars exactly; one cache read 0.3 -> 1
    assert prices.cost_micros("sonnet", None, Usage(1, 0)) == 3
    assert prices.cost_micros("sonnet", None, Usage(0, 0, cache_read_tokens=1)) == 1
    assert prices.cost_micros("free", None, Usage(10**6, 10**6)) == 0
    assert prices.price("nope") == FREE
    assert not prices.priced("free")
    assert prices.priced("sonnet")


def test_max_cost_is_input_estimate_and_output_cap_at_the_dearest_route() -> None:
    prices, _ = table()
    est = Estimate(input_tokens=500, max_output_tokens=1000)
    assert prices.max_cost_micros("sonnet", None, est) == 1500 + 15_000
    assert prices.max_cost_micros_any("sonnet", est) == 1650 + 16_500


def test_negative_price_is_a_config_error() -> None:
    bad = dict(MODELS["sonnet"], price={"input": -1, "output": 0})
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ModelConfig.model_validate(bad)
