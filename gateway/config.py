"""The gateway's configuration: one YAML file, validated once into frozen models.

Secrets never live in the file: SigV4 secrets and static AWS keys are named by environment
variable, bearer keys are stored as SHA-256 hashes. ``load_config`` raises ``ConfigError``
naming the file, the field and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.calibration import CalibrationPolicy
from gateway.limiter.topology import parse_topology

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.match(value):
        raise ValueError("a SHA-256 digest must be 64 lower-case hex characters")
    return value


Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]
"""A key's SHA-256 (``bedrock-gateway hash-key``): keys are stored only as digests."""
_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Tenant ids: the ``tenants`` mapping keys, also part of Redis key names."""


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsConfig(_Frozen):
    certfile: str
    """PEM certificate chain served to clients (needed for bearer keys from botocore >= 1.44)."""
    keyfile: str
    """PEM private key of ``certfile``."""


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    http: Literal["auto", "h1"] = "auto"
    """``auto``: HTTP/1.1 and HTTP/2 on the same port (granian), cleartext HTTP/2 with prior
    knowledge and ALPN ``h2`` over TLS, as the AWS SDK for JavaScript v3 needs. ``h1``:
    HTTP/1.1 only (uvicorn)."""
    tls: TlsConfig | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=25_000_000)] = 25_000_000
    """Largest request body accepted; Bedrock's own limit is 25,000,000 bytes."""
    sigv4_max_skew_s: Annotated[float, Field(gt=0, le=900)] = 300.0
    """How far a SigV4 request's X-Amz-Date may be from the gateway's clock."""
    request_read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    """How long a client may take to send a request's headers, and then its body: past it,
    408 RequestTimeoutException and the connection is closed (docs/operations.md)."""
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    """How long a stopping server lets in-flight requests finish."""
    keep_alive_s: Annotated[float, Field(gt=0, le=3600)] = 75.0
    """How long an idle HTTP/1.1 connection stays open under ``http: h1`` (granian keeps
    them until the client closes). Keep it above the idle timeout of whatever sits in front
    (an AWS load balancer's default is 60 s): then the balancer closes idle connections, and
    never sends a request down one the gateway is closing (a 502 for the caller)."""


class UpstreamConfig(_Frozen):
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    """Longest wait for the upstream's response (Bedrock calls can run minutes)."""
    max_connections_per_region: Annotated[int, Field(ge=1)] = 512
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    """Attempts per request on upstream throttling, 5xx answers and failed connections
    (capped exponential backoff with full jitter, another route when one has room, never past
    the request's queue deadline)."""
    retry_base_s: Annotated[float, Field(gt=0, le=10)] = 0.1
    retry_cap_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class LimiterConfig(_Frozen):
    """Where quota state lives and how the sliding windows are cut."""

    backend: Literal["memory", "redis"] = "memory"
    """``memory``: this process only (one replica). ``redis``: shared by every replica."""
    redis_url: str | None = None
    """One server: ``redis://[user:password@]host:6379/0``. A Sentinel set:
    ``redis+sentinel://host:26379[,host:26379…]/master-name[?db=N]`` (the sentinels; the
    credentials are the master's, ``&sentinel_password=…`` the sentinels'). A Cluster:
    ``redis+cluster://host:6379[,host:6379…]`` (any
    nodes, such as an ElastiCache configuration endpoint; database 0 only). ``rediss…`` for
    TLS. A failover is a short store outage (``on_store_failure``); docs/operations.md, "Redis:
    single, Sentinel, Cluster". Prefer ``redis_url_env`` when the URL carries a password."""
    redis_url_env: str | None = None
    """Environment variable holding the Redis URL (any of the forms above); wins over
    ``redis_url``."""
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "bgw"
    """Keys are ``{prefix}:…``: the braces put every key of the gateway (limiter and tenants) in
    one Redis Cluster hash slot, so every script's keys are on one node."""
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    """How long one Redis call may take before the store counts as unavailable."""
    on_store_failure: Literal["local", "deny"] = "local"
    """When Redis is unreachable: ``local`` admits against this replica's share of each quota
    (quota / replicas), counted over what this replica sent upstream in the last window through
    either store (gateway/limiter/failover.py); ``deny`` answers ServiceUnavailableException."""
    replicas: Annotated[int, Field(ge=1)] = 1
    """How many gateway processes share the quotas (for the ``local`` share)."""
    retry_store_after_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """After a failure, how long to stay on the local share before trying Redis again. Back on
    Redis, the share still gates admissions for a window plus this long."""
    window_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """Length of the per-minute windows (Bedrock evaluates quotas over a rolling minute)."""
    slot_ms: Annotated[int, Field(ge=10, le=10_000)] = 250
    """Granularity of the sliding windows. Smaller fills the quota more fully, costs more Redis
    work per window."""
    margin_ms: Annotated[int, Field(ge=0, le=10_000)] = 500
    """Extra window length covering clock and latency differences between us and Bedrock."""
    lease_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    """A concurrency lease lapses this long after admission if never released (a dead replica)."""
    learn_target: Annotated[float, Field(gt=0, le=1)] = 0.95
    """On a 429 from Bedrock, the pool's per-minute quota becomes this × what the pool admitted
    in the last minute (what Bedrock really carried), shared by every replica, at most once per
    ``learn_cooldown_s``."""
    learn_decrease: Annotated[float, Field(gt=0, lt=1)] = 0.7
    """...but one 429 never cuts the quota below this × its current value."""
    learn_hold_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    """After a decrease the quota holds this long (one window: until the window holds only
    admissions made under the new quota)..."""
    learn_recovery_per_s: Annotated[float, Field(ge=0, le=1)] = 0.002
    """...then climbs back by this fraction of the configured quota per second (0.002: 0.3 of
    it in 150 s) while no 429 comes."""
    learn_floor: Annotated[float, Field(gt=0, le=1)] = 0.05
    """The quota never falls below this fraction of the configured one."""
    learn_cooldown_s: Annotated[float, Field(ge=0, le=60)] = 2.0

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, url: str | None) -> str | None:
        if url is not None:
            parse_topology(url)  # a ValueError says what is wrong with it
        return url

    @model_validator(mode="after")
    def _redis_needs_url(self) -> LimiterConfig:
        if self.backend == "redis" and not (self.redis_url or self.redis_url_env):
            raise ValueError("backend redis needs redis_url or redis_url_env")
        return self


class QueueConfig(_Frozen):
    """Requests that find no capacity wait for their turn instead of failing."""

    max_wait_s: Annotated[float, Field(ge=0, le=300)] = 25.0
    """Default longest wait, well under the SDKs' 60 s read timeout; 0 turns queueing off.
    It must end before ``server.shutdown_grace_s``, so a stopping server answers its waiters.
    A request may ask for less with ``x-gateway-max-wait-ms`` (a tenant's ``max_wait_s`` caps
    what it may ask for)."""
    max_depth: Annotated[int, Field(ge=1)] = 2000
    """Most requests waiting per model in one replica; past it: an immediate
    ThrottlingException with a retry hint."""
    recheck_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    """How often a queue's head re-checks the shared store at the least (settlements in other
    replicas are not observed directly)."""
    refuse_when_hopeless: bool = False
    """On: refuse at once (ThrottlingException, its retry hint the forecast) a request the
    queue forecasts cannot be admitted before its deadline, from the routes' windows, what the
    calls queued ahead of it will be charged and what settlements give back; waiters are
    judged again as the forecast changes. Off: such a request waits until its deadline, then
    is refused. Off by default (README, "Honest refusals"): at a window's end its hint can be
    a window too long, and with several replicas each sees only its own queue."""


class CalibrationConfig(_Frozen):
    """Input estimates scaled to how Bedrock really counts (gateway/calibration.py): per model
    and body family, by a high quantile of true / estimated input over recent answers, shared
    by every replica through Redis."""

    enabled: bool = True
    """Off: estimates are used as computed (the factor stays 1)."""
    quantile: Annotated[float, Field(ge=0.5, le=1)] = 0.98
    """Scale by this quantile of true / estimate: under-estimates become this rare."""
    initial_factor: Annotated[float, Field(ge=0.5, le=3)] = 1.10
    """The factor until ``min_samples`` answers are seen."""
    min_samples: Annotated[int, Field(ge=1, le=100_000)] = 20
    window_s: Annotated[float, Field(ge=5, le=3600)] = 60.0
    """The quantile covers at least the newest this many seconds of answers, more when fewer
    than ``min_samples`` came in them (up to ``retain_s``)."""
    retain_s: Annotated[float, Field(ge=5, le=86_400)] = 600.0
    floor: Annotated[float, Field(gt=0, le=1)] = 0.5
    """The factor never goes below this, nor above ``ceiling``, whatever usage is reported."""
    ceiling: Annotated[float, Field(ge=1, le=10)] = 3.0

    def policy(self) -> CalibrationPolicy:
        if not self.enabled:
            return CalibrationPolicy(initial=1.0, floor=1.0, ceiling=1.0)
        return CalibrationPolicy(
            quantile=self.quantile, initial=self.initial_factor, min_samples=self.min_samples,
            window_s=self.window_s, retain_s=max(self.retain_s, self.window_s),
            floor=self.floor, ceiling=self.ceiling,
        )  # fmt: skip


class AccountConfig(_Frozen):
    """AWS credentials the gateway signs upstream calls with, and where those calls go.

    Credentials come from, in this order of precedence: static keys named by environment
    variable; a role assumed through STS (``role_arn``); a named ``profile``; otherwise the
    default AWS credential chain.
    """

    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str = "bedrock-gateway"
    external_id_env: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    endpoint_url: str | None = None
    """Send this account's calls here instead of ``https://bedrock-runtime.<region>.amazonaws.com``
    (for example the simulator)."""

    @model_validator(mode="after")
    def _static_keys_paired(self) -> AccountConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env go together")
        return self


class PriceConfig(_Frozen):
    """What Bedrock bills for a model, in USD per 1,000 tokens (gateway/pricing.py)."""

    input: Annotated[float, Field(ge=0, le=1000)]
    output: Annotated[float, Field(ge=0, le=1000)]
    cache_read: Annotated[float, Field(ge=0, le=1000)] | None = None
    """Cache-read input tokens; absent means the ``input`` price."""
    cache_write: Annotated[float, Field(ge=0, le=1000)] | None = None
    """Cache-write input tokens; absent means the ``input`` price."""


class RouteConfig(_Frozen):
    """One way to reach a model: an account, a source region and an on-demand id or profile."""

    account: str
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]
    profile: str | None = None
    """Inference profile id (``us.…``, ``global.…``) or ARN; absent means on-demand."""
    tpm: Annotated[int, Field(ge=1)] | None = None
    """Tokens per minute of this route's quota pool (input + cache writes + output x burndown)."""
    rpm: Annotated[int, Field(ge=1)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    """Requests in flight at once on this route."""
    price: PriceConfig | None = None
    """This route's own price (a region or cross-region profile billed differently), in place
    of the model's ``price``."""


class ModelConfig(_Frozen):
    model_id: str
    """The Bedrock foundation-model id (``anthropic.claude-…-v1:0``)."""
    output_burndown: Annotated[float, Field(ge=1)] = 1.0
    """Quota tokens charged per output token (5 for Claude 3.7 Sonnet and Claude 4.x)."""
    max_output_tokens: Annotated[int, Field(ge=1)] = 4096
    """What Bedrock reserves when a request sets no max tokens (the model's maximum)."""
    price: PriceConfig | None = None
    """USD per 1,000 tokens; absent: calls of this model cost nothing against spend budgets."""
    routes: Annotated[list[RouteConfig], Field(min_length=1)]
    fallback: list[str] = []


class AccessKeyConfig(_Frozen):
    id: str
    secret_env: str
    """Environment variable holding the SigV4 secret for ``id``."""

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ACCESS_KEY_ID.match(v):
            raise ValueError("access key ids are 16-128 upper-case letters and digits")
        return v


class TenantConfig(_Frozen):
    key_sha256: list[Sha256Hex] = []
    """SHA-256 (hex) of each bearer API key this tenant may use."""
    access_keys: list[AccessKeyConfig] = []
    models: list[str] | None = None
    """Model names this tenant may call; absent means every configured model."""
    tpm: Annotated[int, Field(ge=1)] | None = None
    """Budget: quota tokens per rolling minute, across every model and route."""
    rpm: Annotated[int, Field(ge=1)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    """Budget: quota tokens per UTC calendar day."""
    tokens_per_month: Annotated[int, Field(ge=1)] | None = None
    """Budget: quota tokens per UTC calendar month."""
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """Share of contended capacity relative to other tenants (fair queueing by quota tokens)."""
    priority: Literal["interactive", "batch"] = "interactive"
    """Queue class: batch requests wait until no interactive request is waiting.
    ``x-gateway-priority: batch`` may lower a request, never raise it."""
    max_wait_s: Annotated[float, Field(ge=0, le=300)] | None = None
    """Longest queue wait this tenant's requests may ask for (default: ``queue.max_wait_s``)."""
    allow_fallback: bool = False
    """May its requests be answered by a model's configured ``fallback`` models when the
    requested one has no capacity in time? (The answer's x-gateway-model says which did.)"""
    display_name: Annotated[str, Field(max_length=200)] | None = None
    """A readable name for people (the mapping key is the tenant's id)."""
    monthly_spend_usd: Annotated[float, Field(gt=0, le=1e9)] | None = None
    """Budget: US dollars per UTC calendar month, priced by the models' ``price`` tables."""
    labels: dict[str, Annotated[str, Field(max_length=256)]] = {}
    """Free-form labels (team, cost centre), at most 32."""

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError("at most 32 labels")
        for name in v:
            if not _LABEL.match(name):
                raise ValueError(f"label name {name[:64]!r}: 1-63 letters, digits, '_', '-', '.'")
        return v

    @field_validator("key_sha256", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class AdminKeyConfig(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    """Who uses this key: the audit log records changes under this name."""
    key_sha256: Sha256Hex


class MetricsConfig(_Frozen):
    """Prometheus metrics at ``/metrics`` (docs/operations.md)."""

    token_sha256: list[Sha256Hex] = []
    """SHA-256 (hex) of each scrape token; when set, ``/metrics`` needs ``Authorization:
    Bearer <token>`` (Prometheus ``authorization.credentials_file``). None: open."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Serve ``/metrics`` on this port of ``server.host`` instead of the data-plane port (which
    then answers 404 there); keep it off the clients' network. One worker per container."""
    tenant_labels: bool = True
    """Off: every ``tenant`` label is empty, so no tenant name reaches the metrics."""
    refresh_s: Annotated[float, Field(ge=1, le=300)] = 5.0
    """How often pool and tenant-budget usage gauges are read from the store (in the
    background, never on a request)."""

    @field_validator("token_sha256", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class UsageConfig(_Frozen):
    """How long usage per tenant and model is kept in the store (the admin API's usage, the
    CLI), per kind of period. Each tenant keeps one small hash per period retained."""

    retain_minutes_h: Annotated[float, Field(gt=0, le=24 * 40)] = 48.0
    """Per-minute counts, this many hours."""
    retain_days_d: Annotated[float, Field(gt=0, le=3660)] = 400.0
    """Per-day counts, this many days."""
    retain_months_d: Annotated[float, Field(gt=0, le=3660)] = 800.0
    """Per-month counts, this many days."""
    retain_report_d: Annotated[float, Field(gt=0, le=400)] = 35.0
    """The quota report's per-minute counts by model and route (one hash per minute for the
    whole gateway), this many days."""


class LoggingConfig(_Frozen):
    """The gateway's logs on stderr (docs/operations.md)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    """``json``: one object per line, for a log pipeline; ``text``: for a terminal."""
    access_log: bool = False
    """One ``gateway.access`` line per request (at INFO). Off: a healthy request logs nothing."""


class AdminConfig(_Frozen):
    """The admin API's own credential (``Authorization: Bearer <admin key>``) and where the
    runtime-managed tenants live."""

    key_sha256: list[Sha256Hex] = []
    """SHA-256 (hex) of each admin key, audited as ``admin-1``, ``admin-2``, …; with ``keys``
    empty too, the admin API answers 403 to everyone."""
    keys: list[AdminKeyConfig] = []
    """Named admin keys: ``{name, key_sha256}``; the audit log says which name made a change."""
    secrets_key_env: str = "GATEWAY_SECRETS_KEY"
    """Environment variable holding the Fernet key(s) that encrypt SigV4 secrets created through
    the admin API, comma-separated: the first encrypts, every one decrypts (rotation)."""
    seed: Literal["missing", "file"] = "missing"
    """How the file's ``tenants`` meet the store at start. ``missing``: a tenant the store lacks
    is created from the file; one it has is left as the store holds it (the admin API is the
    source of truth; a difference is logged); one deleted through the API is not re-created.
    ``file``: the file's settings and credentials of the tenants it names overwrite the store's
    at every start (credentials created through the API are kept)."""
    state_file: str | None = None
    """With ``limiter.backend: memory``: a JSON file that keeps the tenants and the audit log
    across restarts (absent: they live in memory only). Unused with Redis."""
    sync_interval_s: Annotated[float, Field(gt=0, le=1)] = 0.25
    """How often each replica checks the store's tenant version (one Redis GET) and reloads
    the tenants that changed: a change reaches every replica within this plus a reload."""
    audit_retain: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    """Newest audit entries kept."""

    @field_validator("key_sha256", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def named_keys(self) -> list[tuple[str, str]]:
        """(name, digest) of every admin key."""
        unnamed = [(f"admin-{i}", d) for i, d in enumerate(self.key_sha256, 1)]
        return unnamed + [(k.name, k.key_sha256) for k in self.keys]


class GatewayConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    limiter: LimiterConfig = LimiterConfig()
    queue: QueueConfig = QueueConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    usage: UsageConfig = UsageConfig()
    logging: LoggingConfig = LoggingConfig()
    accounts: dict[str, AccountConfig]
    models: dict[str, ModelConfig]
    tenants: dict[str, TenantConfig] = {}

    @model_validator(mode="after")
    def _references_resolve(self) -> GatewayConfig:
        for name, model in self.models.items():
            for i, route in enumerate(model.routes):
                if route.account not in self.accounts:
                    raise ValueError(
                        f"models.{name}.routes.{i}.account: unknown account {route.account!r}"
                    )
            for other in model.fallback:
                if other not in self.models:
                    raise ValueError(f"models.{name}.fallback: unknown model {other!r}")
        for name, tenant in self.tenants.items():
            if not TENANT_ID.match(name):
                raise ValueError(f"tenants.{name[:64]}: tenant ids are 1-64 letters, digits, "
                                 f"'_', '-' or '.', starting with a letter or digit")  # fmt: skip
            for model_name in tenant.models or []:
                if model_name not in self.models:
                    raise ValueError(f"tenants.{name}.models: unknown model {model_name!r}")
        grace = self.server.shutdown_grace_s
        waits = {"queue.max_wait_s": self.queue.max_wait_s} | {
            f"tenants.{name}.max_wait_s": t.max_wait_s
            for name, t in self.tenants.items()
            if t.max_wait_s is not None
        }
        for where, wait in waits.items():
            if wait >= grace:
                raise ValueError(f"{where} ({wait:g} s) must be shorter than "
                                 f"server.shutdown_grace_s ({grace:g} s), so that a stopping "
                                 f"server still answers its waiting requests")  # fmt: skip
        if self.server.workers > 1 and self.limiter.backend == "memory":
            raise ValueError(f"server.workers is {self.server.workers} but limiter.backend is "
                             f"memory: each worker would enforce every quota by itself; use "
                             f"backend: redis to share them")  # fmt: skip
        admin_digests = {digest for _, digest in self.admin.named_keys()}
        for name, tenant in self.tenants.items():
            if admin_digests & set(tenant.key_sha256):
                raise ValueError(f"tenants.{name}.key_sha256: an admin key cannot also be a "
                                 f"tenant's key")  # fmt: skip
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.access_keys:
                if key.id in seen:
                    raise ValueError(f"access key {key.id} belongs to {seen[key.id]} and {name}")
                seen[key.id] = name
        return self


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate the YAML file at ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return parse_config(data, source)
