"""What a call costs in US dollars: the config's price table applied to a usage.

Pure, no I/O. ``PriceTable`` is built once per config; every price is turned into integer
micro-dollars per million tokens up front, so costing a call is four integer multiplications
and no float rounding depends on the order calls come in. Spend budgets count micro-dollars
(``cost_micros``); ``cost_usd`` is the same figure in dollars for reports.

A route's own ``price`` replaces its model's (a region or a cross-region profile billed
differently); a model without a ``price`` costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.catalog import Route, route_of
from gateway.config import ModelConfig, PriceConfig
from gateway.cost import Estimate, Usage

MICROS_PER_USD = 1_000_000
_SCALE = 1_000_000
"""Rates are held per this many tokens: USD per 1,000 tokens x 10^9 = micro-USD per 10^6
tokens, exact for any price given to 9 decimal places."""


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million tokens, for each kind of token Bedrock reports."""

    input: int
    output: int
    cache_read: int
    cache_write: int

    @classmethod
    def of(cls, config: PriceConfig) -> Price:
        def rate(usd_per_1k: float) -> int:
            return round(usd_per_1k * 1_000_000_000)

        read = config.input if config.cache_read is None else config.cache_read
        write = config.input if config.cache_write is None else config.cache_write
        return cls(rate(config.input), rate(config.output), rate(read), rate(write))

    def cost_micros(self, usage: Usage) -> int:
        """What ``usage`` costs, in micro-dollars, rounded up to the next micro-dollar."""
        total = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        )
        return -(-total // _SCALE)

    def max_cost_micros(self, est: Estimate) -> int:
        """The most a request may cost: its input estimate at the input price plus its output
        cap at the output price (what a spend budget reserves at admission)."""
        total = est.input_tokens * self.input + est.max_output_tokens * self.output
        return -(-total // _SCALE)


FREE = Price(0, 0, 0, 0)


class PriceTable:
    """Prices by model name (the config's ``models`` key) and route."""

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self.load(models)

    def load(self, models: Mapping[str, ModelConfig]) -> None:
        """Take the prices of ``models`` (built first, swapped in at once: a config reload)."""
        by_model: dict[str, Price] = {}
        by_route: dict[tuple[str, str], Price] = {}
        any_of: dict[str, tuple[Price, ...]] = {}
        """Per model, every price one of its calls may be billed at (costing before routing)."""
        for name, config in models.items():
            base = FREE if config.price is None else Price.of(config.price)
            by_model[name] = base
            prices = {base}
            for rc in config.routes:
                price = base if rc.price is None else Price.of(rc.price)
                by_route[(name, route_of(config, rc).label)] = price
                prices.add(price)
            any_of[name] = tuple(p for p in prices if p != FREE)
        self._model, self._route, self._any = by_model, by_route, any_of

    def price(self, model: str, route: Route | str | None = None) -> Price:
        """The price of ``model`` on ``route`` (a ``Route`` or its ``label``); the model's own
        price when the route is None or has none of its own; ``FREE`` for an unknown model."""
        if route is not None:
            label = route if isinstance(route, str) else route.label
            found = self._route.get((model, label))
            if found is not None:
                return found
        return self._model.get(model, FREE)

    def priced(self, model: str) -> bool:
        """Whether any call of ``model`` can cost anything."""
        return bool(self._any.get(model))

    def cost_micros(self, model: str, route: Route | str | None, usage: Usage) -> int:
        return self.price(model, route).cost_micros(usage)

    def cost_usd(self, model: str, route: Route | str | None, usage: Usage) -> float:
        """What ``usage`` of ``model`` on ``route`` cost, in dollars (micro-dollar exact)."""
        return self.cost_micros(model, route, usage) / MICROS_PER_USD

    def max_cost_micros(self, model: str, route: Route | str | None, est: Estimate) -> int:
        """The most a request may cost on ``route``."""
        return self.price(model, route).max_cost_micros(est)

    def max_cost_micros_any(self, model: str, est: Estimate) -> int:
        """The most a request may cost on whichever route of ``model`` takes it: what a spend
        budget reserves at admission, before the route is chosen."""
        return max((p.max_cost_micros(est) for p in self._any.get(model, ())), default=0)
