"""Metrics count what their help text says: a known load through a real gateway and simulator,
and the exact values scraped from /metrics afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import SimulatorConfig
from tests.conftest import HAIKU, SONNET, SONNET_PROFILE, ClientFactory, start_gateway
from tests.servers import ServerThread

OPUS = "anthropic.claude-opus-4-20250514-v1:0"
ON_DEMAND = f"test/us-east-1/{SONNET}"
PROFILE = f"test/us-east-1/{SONNET_PROFILE}"
HAIKU_ROUTE = f"test/us-west-2/{HAIKU}"
HAIKU_POOL = f"test/us-west-2/on-demand/{HAIKU}"
OPUS_ROUTE = f"test/us-east-2/{OPUS}"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **headers: str) -> Samples:
    reply = httpx.get(f"{url}/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when it does not exist (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> int:
    return sum(1 for sample_name, _ in samples if sample_name == name)


def settings(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "upstream": {"connect_timeout_s": 2, "read_timeout_s": 10, "retry_base_s": 0.05},
        "queue": {"recheck_s": 0.2, "max_wait_s": 10},
        "accounts": {"test": {"access_key_id_env": "TEST_UPSTREAM_KEY",
                              "secret_access_key_env": "TEST_UPSTREAM_SECRET",
                              "endpoint_url": upstream}},
        "models": {
            "claude-sonnet": {"model_id": SONNET, "output_burndown": 5, "routes": [
                {"account": "test", "region": "us-east-1"},
                {"account": "test", "region": "us-east-1", "profile": SONNET_PROFILE}]},
            "claude-haiku": {"model_id": HAIKU,
                             "routes": [{"account": "test", "region": "us-west-2", "rpm": 2}]},
            "claude-opus": {"model_id": OPUS, "routes": [
                {"account": "test", "region": "us-east-2", "max_concurrency": 1}]},
        },
        "tenants": {"team-a": {"access_keys": [{"id": "GWTESTTENANTKEY0001",
                                                "secret_env": "TEST_TENANT_SECRET"}]}},
        **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    """A simulator of its own: nothing another test sent counts in its quotas."""
    app = create_simulator_app(SimulatorConfig(port=0, latency={"ttft_ms": 0}))
    with ServerThread(app) as server:
        yield server


def converse(client: Any, model: str, text: str = "Hello", wait_ms: int | None = None) -> Any:
    if wait_ms is not None:

        def header(request: Any, **_: Any) -> None:
            request.headers["x-gateway-max-wait-ms"] = str(wait_ms)

        client.meta.events.register_first("before-sign.bedrock-runtime.Converse", header)
    try:
        return client.converse(
            modelId=model, messages=[{"role": "user", "content": [{"text": text}]}],
            inferenceConfig={"maxTokens": 50},
        )  # fmt: skip
    finally:
        if wait_ms is not None:
            client.meta.events.unregister("before-sign.bedrock-runtime.Converse", header)


def test_a_known_load_gives_exact_counts(
    upstream: ServerThread, make_client: ClientFactory
) -> None:
    gateway = start_gateway(parse_config(settings(upstream.url)))
    try:
        drive(gateway, make_client(gateway.url))
        check(scrape(gateway.url))
    finally:
        gateway.stop()


def drive(gateway: ServerThread, client: Any) -> None:
    for _ in range(2):  # two plain successes
        converse(client, "claude-sonnet", "Hi [sim:output_tokens=10]")
    stream = client.converse_stream(
        modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": "Go"}]}],
        inferenceConfig={"maxTokens": 50},
    )  # fmt: skip
    assert sum(1 for _ in stream["stream"]) > 2  # one stream, read to its end
    for _ in range(2):  # haiku's pool takes 2 requests a minute...
        converse(client, "claude-haiku")
    for _ in range(2):  # ...so these are refused at once (they may not wait)...
        with pytest.raises(client.exceptions.ThrottlingException):
            converse(client, "claude-haiku", wait_ms=0)
    started = time.monotonic()  # ...and this one waits 1.5 s, re-checked every 0.2 s, then 429
    with pytest.raises(client.exceptions.ThrottlingException):
        converse(client, "claude-haiku", wait_ms=1500)
    assert time.monotonic() - started >= 1.4
    queued_behind_a_slow_call(gateway, client)
    # Bedrock throttles the first attempt; the retry goes to the profile route and succeeds
    reply = converse(client, "claude-sonnet", "Once [sim:status=429][sim:fail_times=1]")
    assert reply["ResponseMetadata"]["HTTPHeaders"]["x-gateway-attempts"] == "2"


def queued_behind_a_slow_call(gateway: ServerThread, client: Any) -> None:
    """Opus takes one call at a time: a second call waits until the slow first one ends."""
    slow = threading.Thread(target=converse, args=(client, "claude-opus", "[sim:ttft_ms=800]"))
    slow.start()
    deadline = time.monotonic() + 5
    while not value(scrape(gateway.url), "gateway_admissions_total", route=OPUS_ROUTE,
                    tenant="team-a"):  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reply = converse(client, "claude-opus")
    slow.join()
    assert int(reply["ResponseMetadata"]["HTTPHeaders"]["x-gateway-queue-ms"]) >= 200


def check(m: Samples) -> None:
    assert value(m, "gateway_asyncio_tasks") >= 1  # the scrape's own at least
    requests = "gateway_requests_total"
    ok = {"tenant": "team-a", "outcome": "success"}
    assert (
        value(m, requests, model="claude-sonnet", route=ON_DEMAND, operation="Converse", **ok) == 2
    )
    assert value(m, requests, model="claude-sonnet", route=ON_DEMAND, operation="ConverseStream",
                 **ok) == 1  # fmt: skip
    assert value(m, requests, model="claude-sonnet", route=PROFILE, operation="Converse", **ok) == 1
    assert value(m, requests, model="claude-haiku", route=HAIKU_ROUTE, operation="Converse",
                 **ok) == 2  # fmt: skip
    assert value(m, requests, model="claude-haiku", route="none", operation="Converse",
                 tenant="team-a", outcome="throttled") == 3  # fmt: skip
    assert value(m, requests, model="claude-opus", route=OPUS_ROUTE, operation="Converse",
                 **ok) == 2  # fmt: skip
    assert series(m, requests) == 6
    assert value(m, "gateway_request_duration_seconds_count", operation="Converse") == 10
    assert value(m, "gateway_request_duration_seconds_count", operation="ConverseStream") == 1
    assert value(m, "gateway_overhead_seconds_count", operation="Converse") == 10

    # local throttles: once per refused request, however often the queue re-checked it
    assert value(m, "gateway_throttles_total", tenant="team-a", model="claude-haiku",
                 limit="rpm", pool=HAIKU_POOL) == 3  # fmt: skip
    assert series(m, "gateway_throttles_total") == 1
    refusals = {"model": "claude-haiku", "pool": HAIKU_POOL, "priority": "interactive"}
    assert value(m, "gateway_queue_refusals_total", reason="no_capacity", **refusals) == 2
    assert value(m, "gateway_queue_refusals_total", reason="queue_timeout", **refusals) == 1
    assert value(m, "gateway_limiter_denials_total", limit="rpm") >= 2 + 5  # the re-checks
    assert value(m, "gateway_limiter_denials_total", limit="max_concurrency") >= 1

    # upstream: one 429 from Bedrock, one retry elsewhere, no failure
    assert value(m, "gateway_upstream_throttles_total", route=ON_DEMAND) == 1
    assert series(m, "gateway_upstream_throttles_total") == 1
    assert value(m, "gateway_retries_total", model="claude-sonnet", route=ON_DEMAND,
                 reason="throttled") == 1  # fmt: skip
    assert series(m, "gateway_retries_total") == 1
    assert series(m, "gateway_upstream_errors_total") == 0
    assert series(m, "gateway_fallbacks_total") == 0
    latency = "gateway_upstream_latency_seconds_count"
    assert value(m, latency, route=ON_DEMAND) == 4  # 2 plain, the stream, the throttled one
    assert value(m, latency, route=PROFILE) == 1
    assert value(m, latency, route=HAIKU_ROUTE) == 2
    assert value(m, latency, route=OPUS_ROUTE) == 2
    assert value(m, "gateway_upstream_ttfb_seconds_count", route=ON_DEMAND) == 4

    # the queue: every admission's wait; one opus call waited
    wait = "gateway_queue_wait_seconds"
    assert value(m, f"{wait}_count", model="claude-sonnet", priority="interactive") == 5
    assert value(m, f"{wait}_count", model="claude-haiku", priority="interactive") == 2
    assert value(m, f"{wait}_count", model="claude-opus", priority="interactive") == 2
    assert value(m, f"{wait}_bucket", model="claude-opus", priority="interactive", le="0.1") == 1
    assert value(m, "gateway_admissions_total", route=ON_DEMAND, tenant="team-a") == 4

    # tokens as Bedrock reported them; quota tokens after the 5x output burndown
    tokens = {"tenant": "team-a", "model": "claude-sonnet"}
    assert value(m, "gateway_tokens_total", kind="input", **tokens) > 0
    assert value(m, "gateway_tokens_total", kind="quota", **tokens) == value(
        m, "gateway_tokens_total", kind="input", **tokens
    ) + 5 * value(m, "gateway_tokens_total", kind="output", **tokens)

    assert value(m, "gateway_pool_quota_tokens_per_minute", pool=HAIKU_POOL) == 0  # rpm only
    assert value(m, "gateway_build_info", version="0.1.0", python=_python()) == 1


def _python() -> str:
    import platform

    return platform.python_version()


def test_unknown_model_ids_add_no_series(
    upstream: ServerThread, make_client: ClientFactory
) -> None:
    gateway = start_gateway(parse_config(settings(upstream.url)))
    client = make_client(gateway.url)
    try:
        with pytest.raises(client.exceptions.ValidationException):
            converse(client, "no-such-model-0")
        before = scrape(gateway.url)
        for i in range(1, 25):
            with pytest.raises(client.exceptions.ValidationException):
                converse(client, f"no-such-model-{i}-{'x' * i}")
        after = scrape(gateway.url)
        assert len(after) == len(before)
        assert value(after, "gateway_requests_total", tenant="team-a", model="unknown",
                     route="none", operation="Converse", outcome="invalid") == 25  # fmt: skip
        assert not any("no-such-model" in str(labels) for _, labels in after)
    finally:
        gateway.stop()
