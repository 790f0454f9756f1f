"""Fair shares among tenants under contention, and batch after interactive.

Shares: ``contention.py``'s run (three replicas, two tenants per pool, each offering twice the
pool's quota; weights 1:1 on one pool, 3:1 on the other). Admitted shares are counted in the
tokens of the 200 answers (their ``usage``), by admission time, over the contended period.

Priority: one tenant sends interactive requests and ``x-gateway-priority: batch`` ones into a
pool saturated by its concurrency limit; no batch request may be admitted while an interactive
request that arrived before it is still waiting (admission times from send times plus the
gateway's x-gateway-queue-ms). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.load.contention import (
    DEADLINE_S,
    LOAD_S,
    PAIRS,
    TPM,
    WARM_S,
    WEIGHTS,
    Contended,
    contended,
)
from tests.load.harness import MODEL, MODEL_ID, make_bodies
from tests.load.scenarios import (
    OTHER_MODEL,
    Loop,
    Reply,
    Scenario,
    gateway_settings,
    model,
    percentile,
    route,
)

TOLERANCE = 0.10  # admitted shares within ±10 % of the weights' shares

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # the shared run takes ~100 s


@pytest.fixture(scope="module")
def run() -> Contended:
    return contended()


def shares(run: Contended, pair: tuple[str, str]) -> dict[str, tuple[int, float, float]]:
    """Per tenant: (tokens admitted in the contended period, share, the weights' share)."""
    first, last = run.started_wall + WARM_S, run.started_wall + LOAD_S
    tokens = {tenant: sum(r.tokens for r in run.loads[tenant].replies
                          if r.status == 200 and first <= r.admitted < last)
              for tenant in pair}  # fmt: skip
    total = sum(tokens.values())
    weights = sum(WEIGHTS[t] for t in pair)
    return {t: (tokens[t], tokens[t] / max(1, total), WEIGHTS[t] / weights) for t in pair}


def _report(run: Contended, name: str, pair: tuple[str, str]) -> None:
    measured = shares(run, pair)
    text = ", ".join(f"{t} (weight {WEIGHTS[t]:g}) {n} tokens = {s:.1%} (expected {e:.0%})"
                     for t, (n, s, e) in measured.items())  # fmt: skip
    print(
        f"\n[fair {name}] pool {TPM} tpm, each tenant offers 2 x, deadline {DEADLINE_S:.0f} s; "
        f"admitted {WARM_S:.0f}-{LOAD_S:.0f} s into the load: {text}"
    )
    for tenant in pair:
        replies = run.loads[tenant].replies
        print(f"[fair {name}] {tenant}: {len(replies)} requests, statuses "
              f"{dict(sorted(Counter(r.status for r in replies).items()))}, settled tokens "
              f"{sum(r.tokens for r in replies)} in all")  # fmt: skip


def _check(run: Contended, pair: tuple[str, str]) -> None:
    measured = shares(run, pair)
    assert sum(n for n, _, _ in measured.values()) >= 0.8 * TPM  # a minute's worth, contended
    for tenant, (_, share, expected) in measured.items():
        assert abs(share / expected - 1) <= TOLERANCE, (tenant, share, expected)


def test_equal_weights_get_equal_shares(run: Contended) -> None:
    _report(run, "1:1", PAIRS[MODEL])
    _check(run, PAIRS[MODEL])


def test_weights_three_to_one_get_three_to_one_shares(run: Contended) -> None:
    _report(run, "3:1", PAIRS[OTHER_MODEL])
    _check(run, PAIRS[OTHER_MODEL])


# ---- batch never overtakes interactive ------------------------------------------------------

SLOTS = 2  # the route's max_concurrency: the pool's saturating limit
PRIORITY_S = 8.0
SLACK_S = 0.05  # client send time vs the gateway's queue entry (admissions are ~0.1 s apart)


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    launcher = Scenario(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


def overtaken(interactive: list[Reply], batch: list[Reply]) -> list[tuple[Reply, Reply]]:
    """(interactive, batch) pairs where the batch request was admitted while the interactive
    one, sent earlier, was still waiting."""
    found = []
    for i in interactive:
        end = i.admitted if i.status == 200 else i.done
        for b in batch:
            if b.status == 200 and i.sent + SLACK_S < b.admitted < end - SLACK_S:
                found.append((i, b))
    return found


@pytest.mark.timeout(60)
async def test_a_batch_request_never_overtakes_an_interactive_one(scenario: Scenario) -> None:
    sim = scenario.sim(mode="rolling", tpm=10_000_000, ttft_ms=100.0, token_ms=1.0)
    models = {MODEL: model(MODEL_ID, route(10_000_000, max_concurrency=SLOTS))}
    (gateway,) = scenario.replicas(1, lambda port: gateway_settings(
        port, upstream_url=sim.url, redis_url=scenario.redis_url, models=models,
        tenants=scenario.tenants(), queue={"max_wait_s": 5}))  # fmt: skip
    # about 200 ms upstream each: SLOTS serve ~10/s; batch offers 12/s, interactive 4/s
    bodies = make_bodies(200, seed=13, words=(20, 60), max_tokens=100, output=(100, 100))
    key = scenario.keys["load"]
    batch = Loop([gateway.url], key, bodies, rate=12.0, duration_s=PRIORITY_S, timeout_s=20,
                 headers={"x-gateway-priority": "batch"})  # fmt: skip
    interactive = Loop([gateway.url], key, bodies, rate=4.0, duration_s=PRIORITY_S, timeout_s=20)

    async def later() -> None:
        await asyncio.sleep(1.0)  # the batch requests saturate the pool first
        await interactive.run()

    await asyncio.gather(batch.run(), later())
    inter, bat = interactive.replies, batch.replies
    wait_i = [r.queue_ms or 0 for r in inter if r.status == 200]
    wait_b = [r.queue_ms or 0 for r in bat if r.status == 200]
    found = overtaken(inter, bat)
    print(
        f"\n[priority] max_concurrency {SLOTS}, ~200 ms a call; batch 12/s, interactive 4/s "
        f"for {PRIORITY_S:.0f} s, one tenant"
    )
    print(f"[priority] interactive: {dict(Counter(r.status for r in inter))}, queue-ms p50 "
          f"{percentile(wait_i, 0.5):.0f} p99 {percentile(wait_i, 0.99):.0f} max "
          f"{max(wait_i, default=0)}; batch: {dict(Counter(r.status for r in bat))}, queue-ms "
          f"p50 {percentile(wait_b, 0.5):.0f} p99 {percentile(wait_b, 0.99):.0f}; batch "
          f"admitted while an earlier interactive waited: {len(found)}")  # fmt: skip

    assert all(r.status == 200 for r in inter), [r for r in inter if r.status != 200]
    assert Counter(r.status for r in bat)[200] > 0
    assert sum(1 for r in inter if (r.queue_ms or 0) > 0) >= 5  # they did wait behind batch
    assert not found, found[:3]
    assert percentile(wait_i, 0.99) < percentile(wait_b, 0.5)
