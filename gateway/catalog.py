"""The model catalog: which configured model and routes a client's ``modelId`` means.

A client may name a model by its alias in the config, its Bedrock model id, an inference
profile id (``us.…``, ``global.…``) or an ARN. Aliases and model ids mean every route of the
model, in order; a profile id or ARN means only the routes that call exactly that resource,
so the request draws on the quota pool that id belongs to (docs/bedrock.md §5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from gateway.config import ModelConfig, RouteConfig

Scope = Literal["on-demand", "geo", "global", "application"]

_GEO_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "jp.", "au.", "ca.")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    model_id: str
    output_burndown: float
    max_output_tokens: int
    fallback: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """One way to call a model, drawing on one quota pool."""

    account: str
    region: str
    upstream_id: str
    scope: Scope
    base_model: str
    tpm: int | None
    rpm: int | None
    tokens_per_day: int | None
    max_concurrency: int | None

    @property
    def label(self) -> str:
        """What ``x-gateway-route`` shows: account/region/upstream id."""
        return f"{self.account}/{self.region}/{self.upstream_id}"

    @property
    def path_id(self) -> str:
        """The id as it goes in the upstream URL path (botocore's encoding)."""
        return quote(self.upstream_id, safe="-._~")


@dataclass(frozen=True, slots=True)
class Target:
    model: ModelSpec
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Arn:
    region: str
    account_id: str
    resource_type: str
    resource_id: str


def parse_arn(value: str) -> Arn | None:
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "bedrock":
        return None
    resource_type, sep, resource_id = parts[5].partition("/")
    if not sep or not resource_id:
        return None
    return Arn(parts[3], parts[4], resource_type, resource_id)


def scope_of(upstream_id: str) -> Scope:
    arn = parse_arn(upstream_id)
    if arn is not None:
        if arn.resource_type == "application-inference-profile":
            return "application"
        upstream_id = arn.resource_id
    if upstream_id.startswith("global."):
        return "global"
    if upstream_id.startswith(_GEO_PREFIXES):
        return "geo"
    return "on-demand"


def route_of(model: ModelConfig, config: RouteConfig) -> Route:
    upstream_id = config.profile or model.model_id
    return Route(
        account=config.account,
        region=config.region,
        upstream_id=upstream_id,
        scope=scope_of(upstream_id),
        base_model=model.model_id,
        tpm=config.tpm,
        rpm=config.rpm,
        tokens_per_day=config.tokens_per_day,
        max_concurrency=config.max_concurrency,
    )


class Catalog:
    """Resolves a client's model identifier to a ``Target``; built per config (``load`` swaps
    in a reloaded one at once: a request resolved before keeps the target it got)."""

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self.load(models)

    def load(self, models: Mapping[str, ModelConfig]) -> None:
        built = _Built()
        built.fill(models)
        self._by_id, self._by_region_id, self.models = built.by_id, built.by_region_id, built.models

    def targets(self) -> list[Target]:
        """Every configured model with all its routes."""
        return [self._by_id[name] for name in self.models]

    def resolve(self, model_id: str) -> Target | None:
        target = self._by_id.get(model_id)
        if target is not None:
            return target
        arn = parse_arn(model_id)
        if arn is None:
            return None
        if arn.resource_type in ("foundation-model", "inference-profile"):
            return self._by_region_id.get((arn.region, arn.resource_id))
        return None


class _Built:
    """A catalog's indexes while they are built."""

    def __init__(self) -> None:
        self.by_id: dict[str, Target] = {}
        self.by_region_id: dict[tuple[str, str], Target] = {}
        self.models: dict[str, ModelSpec] = {}

    def fill(self, models: Mapping[str, ModelConfig]) -> None:
        for name, config in models.items():
            spec = ModelSpec(
                name, config.model_id, config.output_burndown, config.max_output_tokens,
                tuple(config.fallback),
            )  # fmt: skip
            self.models[name] = spec
            routes = tuple(route_of(config, r) for r in config.routes)
            self.by_id[name] = Target(spec, routes)
            self.by_id.setdefault(config.model_id, Target(spec, routes))
            self._index_routes(spec, routes)

    def _index_routes(self, spec: ModelSpec, routes: tuple[Route, ...]) -> None:
        for route in routes:
            same_id = tuple(r for r in routes if r.upstream_id == route.upstream_id)
            if route.scope != "on-demand":
                self.by_id.setdefault(route.upstream_id, Target(spec, same_id))
            arn = parse_arn(route.upstream_id)
            bare_id = arn.resource_id if arn and route.scope != "application" else route.upstream_id
            in_region = tuple(r for r in same_id if r.region == route.region)
            self.by_region_id.setdefault((route.region, bare_id), Target(spec, in_region))
