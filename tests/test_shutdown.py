"""Graceful shutdown with the real ``serve`` process (uvicorn for ``h1``, granian by default), a
real Redis limiter and a simulator that takes its time: on SIGTERM readiness turns false at
once, a new request gets a retryable ServiceUnavailableException with retry hints, what is in
flight (a stream included) and what is queued is answered within ``server.shutdown_grace_s``,
every reservation is settled, and the process exits 0 (docs/operations.md, "Shutdown")."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from botocore.exceptions import ClientError

from gateway.shutdown import Drain, cancel_requests
from gateway.simulator.app import create_simulator_app
from gateway.simulator.config import LatencyConfig, SimulatorConfig
from tests.conftest import ENVIRON, ClientFactory, gateway_settings
from tests.servers import GatewayProcess, RedisServer, ServerThread

pytestmark = pytest.mark.timeout(60)

GRACE_S = 8.0
EXIT_MARGIN_S = 2.0  # the process may take this long past the grace period to exit
BURNDOWN = 5  # claude-sonnet's output_burndown in tests.conftest.gateway_settings
SMALL_KEY_ID, SMALL_SECRET = "GWTESTSMALLTENANT01", "small-tenant-secret-0123456789"
NARROW_KEY_ID, NARROW_SECRET = "GWTESTNARROWTENANT1", "narrow-tenant-secret-0123456789"
ENVIRONS = ENVIRON | {"TEST_SMALL_SECRET": SMALL_SECRET, "TEST_NARROW_SECRET": NARROW_SECRET}
CALL_TEXT = "in flight [sim:output_tokens=10]"  # ~0.8 s first token, then 10 x 50 ms
STREAM_TEXT = "a stream [sim:output_tokens=40] [sim:token_ms=75]"  # ~3.8 s in all


@pytest.fixture(scope="module")
def slow_simulator() -> Iterator[ServerThread]:
    """A Bedrock stand-in with latency: 800 ms to the first token, then 50 ms per token."""
    config = SimulatorConfig(port=0, latency=LatencyConfig(ttft_ms=800, per_output_token_ms=50))
    with ServerThread(create_simulator_app(config)) as server:
        yield server


def settings(upstream_url: str, redis_url: str, prefix: str, http: str) -> dict[str, Any]:
    config = gateway_settings(upstream_url, http=http, shutdown_grace_s=GRACE_S)
    config["queue"] = {"max_wait_s": GRACE_S - 2}
    config["limiter"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": prefix}
    # team-a: no budget (the calls and the stream in flight). small: a tenant TPM that admits
    # two of these calls, the rest wait (until their deadline: the window frees no room
    # before it). narrow: one call at a time, so its next ones wait and are admitted during the
    # drain. Day budgets and concurrency limits make the store keep a settled total and
    # leases, to check afterwards.
    config["tenants"]["team-a"] |= {"tokens_per_day": 10_000_000, "max_concurrency": 50}
    config["tenants"]["small"] = {
        "access_keys": [{"id": SMALL_KEY_ID, "secret_env": "TEST_SMALL_SECRET"}],
        "tpm": 700, "tokens_per_day": 10_000_000,
    }  # fmt: skip
    config["tenants"]["narrow"] = {
        "access_keys": [{"id": NARROW_KEY_ID, "secret_env": "TEST_NARROW_SECRET"}],
        "max_concurrency": 1, "tokens_per_day": 10_000_000,
    }  # fmt: skip
    return config


@dataclass
class Answer:
    """What one call got: a status and the quota tokens its usage reported, or a failure."""

    status: int
    code: str = ""
    quota_tokens: int = 0
    headers: dict[str, str] | None = None
    failure: str = ""
    at: float = 0.0


def _quota(usage: dict[str, int]) -> int:
    return (usage.get("inputTokens", 0) + usage.get("cacheWriteInputTokens", 0)
            + usage.get("outputTokens", 0) * BURNDOWN)  # fmt: skip


def converse(client: Any, text: str, max_tokens: int = 60) -> Answer:
    try:
        reply = client.converse(
            modelId="claude-sonnet", messages=[{"role": "user", "content": [{"text": text}]}],
            inferenceConfig={"maxTokens": max_tokens},
        )  # fmt: skip
    except ClientError as exc:
        meta = exc.response["ResponseMetadata"]
        return Answer(meta["HTTPStatusCode"], exc.response["Error"]["Code"],
                      headers=meta["HTTPHeaders"], at=time.monotonic())  # fmt: skip
    except Exception as exc:  # a reset or refused connection, a timeout: never acceptable
        return Answer(0, failure=f"{type(exc).__name__}: {exc}", at=time.monotonic())
    return Answer(200, quota_tokens=_quota(reply["usage"]), at=time.monotonic())


def converse_stream(client: Any, started: threading.Event) -> Answer:
    usage: dict[str, int] = {}
    events: list[str] = []
    try:
        reply = client.converse_stream(
            modelId="claude-sonnet",
            messages=[{"role": "user", "content": [{"text": STREAM_TEXT}]}],
            inferenceConfig={"maxTokens": 60},
        )
        for event in reply["stream"]:
            events.extend(event)
            started.set()
            usage = event.get("metadata", {}).get("usage", usage)
    except Exception as exc:
        return Answer(0, failure=f"{type(exc).__name__}: {exc}", at=time.monotonic())
    finally:
        started.set()
    if not events or events[-1] != "metadata":
        return Answer(0, failure=f"the stream ended early: {events[-3:]}", at=time.monotonic())
    return Answer(200, quota_tokens=_quota(usage), at=time.monotonic())


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('gateway_queue_depth{model="claude-sonnet",'))  # fmt: skip


def metric_lines(url: str, name: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll a condition of the real processes (not passing time: each check is a request)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ready_status(url: str) -> int:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code
    except httpx.TransportError:
        return 0  # not listening


@pytest.mark.parametrize("http", ["h1", "auto"])
def test_sigterm_drains_answers_everything_settles_and_exits_0(
    http: str, slow_simulator: ServerThread, redis_server: RedisServer,
    make_client: ClientFactory, tmp_path: Path,
) -> None:  # fmt: skip
    prefix = f"sd{uuid.uuid4().hex[:8]}"
    config = settings(slow_simulator.url, redis_server.url, prefix, http)
    gateway = GatewayProcess(config, ENVIRONS, log_path=str(tmp_path / "gateway.log")).start()
    steady = make_client(gateway.url)
    small = make_client(gateway.url, key_id=SMALL_KEY_ID, secret=SMALL_SECRET)
    narrow = make_client(gateway.url, key_id=NARROW_KEY_ID, secret=NARROW_SECRET)
    started = threading.Event()
    pool = ThreadPoolExecutor(max_workers=16)
    try:
        stream = pool.submit(converse_stream, make_client(gateway.url), started)
        assert started.wait(10), "the stream never started"
        in_flight = [pool.submit(converse, steady, CALL_TEXT) for _ in range(3)]
        budgeted = [pool.submit(converse, small, CALL_TEXT) for _ in range(4)]
        one_by_one = [pool.submit(converse, narrow, CALL_TEXT) for _ in range(3)]
        wait_until(lambda: queue_depth(gateway.url) >= 4, 10, "requests to queue")
        store = redis.Redis(port=redis_server.port)
        assert store.zcard(f"{{{prefix}}}:tenant:narrow:conc") == 1  # its one lease, held

        assert gateway.proc is not None
        gateway.terminate()
        stopped_at = time.monotonic()
        wait_until(lambda: ready_status(gateway.url) != 200, 1, "readiness to turn false")
        not_ready_after = time.monotonic() - stopped_at
        assert ready_status(gateway.url) == 503  # still listening: a load balancer sees 503
        late = converse(make_client(gateway.url), "too late")  # a new connection
        counted = metric_lines(gateway.url, "gateway_requests_total")

        answers: list[Future[Answer]] = [stream, *in_flight, *budgeted, *one_by_one]
        results = [f.result(timeout=GRACE_S + 5) for f in answers]
        code = gateway.proc.wait(timeout=GRACE_S + EXIT_MARGIN_S + 5)
        exited_after = time.monotonic() - stopped_at
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        gateway.stop()
    log = (tmp_path / "gateway.log").read_text()
    print(f"{http}: not ready after {not_ready_after:.3f} s, exited after {exited_after:.2f} s, "
          f"answers {[(r.status, r.code) for r in results]}")  # fmt: skip

    assert not_ready_after < 0.5
    assert late.status == 503, late
    assert late.code == "ServiceUnavailableException"
    assert late.headers is not None
    assert int(late.headers["retry-after"]) >= 1
    assert int(late.headers["x-amz-retry-after"]) > 0
    assert late.headers["retry-after-ms"] == late.headers["x-amz-retry-after"]
    assert 'outcome="unavailable"' in counted

    assert [r.failure for r in results if r.failure] == [], log
    for r in results:  # a complete answer: 200, or a Bedrock-shaped refusal to retry
        assert r.status == 200 or r.code in ("ThrottlingException", "ServiceUnavailableException")
        assert r.at - stopped_at < GRACE_S
    assert results[0].status == 200  # the stream ran to its end
    assert all(r.status == 200 for r in results[1:4])  # the calls in flight finished...
    assert min(r.at for r in results[:4]) > stopped_at  # ...after the signal
    assert [r.status for r in results[4:8]].count(200) == 2  # the TPM's two; the rest waited
    assert all(r.status == 200 for r in results[8:])  # admitted one by one while draining
    assert max(r.at for r in results[8:]) - stopped_at > 1  # ...after the signal

    assert code == 0, log
    assert exited_after < GRACE_S + EXIT_MARGIN_S
    assert "Traceback" not in log

    # Nothing left reserved: no lease held, and each tenant's settled total is what the
    # usage in the answers says.
    leases = store.keys(f"{{{prefix}}}:*:conc")  # a lease set with no member is deleted
    assert {key: store.zcard(key) for key in leases} == dict.fromkeys(leases, 0)
    totals = {"team-a": results[:4], "small": results[4:8], "narrow": results[8:]}
    for tenant, answered in totals.items():
        settled = store.hget(f"{{{prefix}}}:tenant:{tenant}:tokens_per_day", "t")
        assert int(settled or 0) == sum(r.quota_tokens for r in answered), tenant
    small_tpm = store.hgetall(f"{{{prefix}}}:tenant:small:tpm")  # the rolling minute's slots
    assert sum(int(v) for k, v in small_tpm.items() if k.isdigit()) == sum(
        r.quota_tokens for r in results[4:8]
    )


@pytest.mark.parametrize("http", ["h1", "auto"])
def test_a_call_longer_than_the_grace_period_is_cancelled_answered_and_settled(
    http: str, slow_simulator: ServerThread, redis_server: RedisServer,
    make_client: ClientFactory, tmp_path: Path,
) -> None:  # fmt: skip
    grace = 1.0
    prefix = f"sd{uuid.uuid4().hex[:8]}"
    config = settings(slow_simulator.url, redis_server.url, prefix, http)
    config["server"]["shutdown_grace_s"] = grace
    config["queue"] = {"max_wait_s": 0.5}
    gateway = GatewayProcess(config, ENVIRONS, log_path=str(tmp_path / "gateway.log")).start()
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        slow = pool.submit(converse, make_client(gateway.url), "slow [sim:ttft_ms=20000]")
        wait_until(lambda: "claude-sonnet" in metric_lines(gateway.url, "gateway_admissions"),
                   10, "the call to be admitted")  # fmt: skip
        assert gateway.proc is not None
        gateway.terminate()
        stopped_at = time.monotonic()
        code = gateway.proc.wait(timeout=grace + EXIT_MARGIN_S + 10)
        exited_after = time.monotonic() - stopped_at
        answer = slow.result(timeout=10)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        gateway.stop()
    print(f"{http}: exited after {exited_after:.2f} s, the slow call got {answer}")
    assert code == 0, (tmp_path / "gateway.log").read_text()
    assert exited_after < grace + EXIT_MARGIN_S
    # cancelled at the deadline: answered in Bedrock's shape, and settled (a call cut short
    # keeps its whole reservation: what Bedrock counted is not known)
    assert (answer.status, answer.code) == (503, "ServiceUnavailableException"), answer
    store = redis.Redis(port=redis_server.port)
    assert store.zcard(f"{{{prefix}}}:tenant:team-a:conc") == 0
    assert int(store.hget(f"{{{prefix}}}:tenant:team-a:tokens_per_day", "t") or 0) > 0


# The drain's own logic, without a process: driven by its signal callback, no time passes.


def drain_for_test(idle: list[bool]) -> tuple[Drain, list[str]]:
    events: list[str] = []
    drain = Drain(60.0, lambda: idle[0], lambda: events.append("refusing"),
                  lambda: events.append("cancelled"))  # fmt: skip
    drain._resume = lambda sig, left: events.append(f"resumed {sig} {left > 50}")
    return drain, events


async def test_a_drain_refuses_at_once_and_resumes_the_server_once_idle() -> None:
    idle = [False]
    drain, events = drain_for_test(idle)
    drain.signalled(signal.SIGTERM)
    assert drain.draining
    assert events == ["refusing"]
    drain.signalled(signal.SIGTERM)  # a second signal: stop waiting...
    idle[0] = True  # ...though by then all was answered
    assert drain._task is not None
    await drain._task
    assert events == ["refusing", f"resumed {signal.SIGTERM} True"]


async def test_a_drain_cut_short_cancels_what_is_left() -> None:
    drain, events = drain_for_test([False])
    drain.signalled(signal.SIGINT)
    drain.signalled(signal.SIGINT)
    assert drain._task is not None
    await drain._task
    assert events == ["refusing", "cancelled", f"resumed {signal.SIGINT} True"]


async def test_cancel_requests_finds_the_tasks_running_the_handler() -> None:
    release = asyncio.Event()

    async def handler() -> None:
        await release.wait()

    async def wrapped() -> None:  # as a server runs it: the handler a few awaits down
        await handler()

    requests = [asyncio.create_task(wrapped()) for _ in range(3)]
    other = asyncio.create_task(release.wait())
    await asyncio.sleep(0)  # let them start
    assert cancel_requests(handler.__code__) == 3
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert not other.done()
    release.set()
    await other
