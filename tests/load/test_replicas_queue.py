"""Three gateway processes on one Redis, under overload, with queueing (``contention.py``).

Every waiter is answered by its deadline: admitted, or a ThrottlingException with retry hints
at the deadline, never a 5xx or a client timeout. The replicas share the capacity evenly: the
requests that found the pools full are admitted in like proportions and after like waits on
every replica. And the waiters do not poll Redis: one dispatcher per model and replica asks
for its queue's head only when a request arrives, a settlement frees capacity, or the store's
hint (at most ``recheck_s``, 1 s) comes due, so Redis' load follows the request rate, not the
number of waiting requests. Run with ``-s`` for the figures.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.load.contention import (
    BLOCKED_END_S,
    DEADLINE_S,
    FILL_S,
    LOAD_S,
    PAIRS,
    REPLICAS,
    WARM_S,
    Contended,
    contended,
)
from tests.load.harness import metric
from tests.load.scenarios import Reply, percentile

MODELS = len(PAIRS)
RECHECK_S = 1.0  # queue.recheck_s (the default)
BACKGROUND = 6  # script / HGETALL calls a second of one replica's background tasks (measured 5.4)
SLOT_S = 0.25  # limiter.slot_ms (the default): capacity returns slot by slot
REFUSAL_COMMANDS = 8
"""What answering one waiter with a refusal writes at most: HINCRBY and PEXPIRE on each of its
tenant's usage hashes (minute, day, month) and its model's quota-report hash, less when the
refusals of a moment are gathered into one write. A cost per request answered, not per request
waiting."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # the shared run takes ~100 s


@pytest.fixture(scope="module")
def run() -> Contended:
    return contended()


def _replies(run: Contended) -> list[Reply]:
    return [r for load in run.loads.values() for r in load.replies]


def _sample(run: Contended, at: float) -> tuple[float, int, dict[str, int]]:
    return next(s for s in run.commands if abs(s[0] - at) < 2)


def _rates(run: Contended, since: float, until: float) -> dict[str, float]:
    """Per second between two samples: Redis commands (those scripts run included), EVALSHA
    and HGETALL calls (the round trips: admission attempts and settlements, learned-quota
    refreshes), and admissions (the clients' count)."""
    (t0, total0, calls0), (t1, total1, calls1) = _sample(run, since), _sample(run, until)
    span = t1 - t0
    first, last = run.started_wall + since, run.started_wall + until
    admitted = sum(1 for r in _replies(run) if r.status == 200 and first <= r.admitted < last)
    refused = sum(
        1 for r in _replies(run) if r.status == 429 and first <= r.sent + r.latency < last
    )
    return {
        "commands": (total1 - total0) / span,
        "evalsha": (calls1.get("evalsha", 0) - calls0.get("evalsha", 0)) / span,
        "hgetall": (calls1.get("hgetall", 0) - calls0.get("hgetall", 0)) / span,
        "admitted": admitted / (until - since),
        "refused": refused / (until - since),
        "span": span,
    }


def test_every_waiter_is_answered_by_its_deadline(run: Contended) -> None:
    replies = _replies(run)
    statuses = Counter(r.status for r in replies)
    refused = [r for r in replies if r.status == 429]
    late = [r.latency for r in refused]
    waited = [r.queue_ms or 0 for r in replies if r.status == 200]
    print(f"\n[replicas] {REPLICAS} gateways, one Redis; 4 tenants x 2 x quota on {MODELS} pools, "
          f"deadline {DEADLINE_S:.0f} s: {len(replies)} requests, statuses "
          f"{dict(sorted(statuses.items()))}; 429 latency {min(late, default=0):.2f}-"
          f"{max(late, default=0):.2f} s; 200 queue-ms max {max(waited, default=0)}; "
          f"simulator throttled {sum(p['throttled'] for p in run.pools.values())}")  # fmt: skip
    assert all(load.not_sent == 0 for load in run.loads.values())
    assert set(statuses) <= {200, 429}, statuses  # no 5xx, no client timeout (status 0)
    assert statuses[429] > 0, "no overload"
    for reply in refused:
        assert reply.gateway_own, reply
        assert DEADLINE_S - 0.1 <= reply.latency <= DEADLINE_S + 1.0, reply
        assert reply.retry_after_ms is not None, reply
        assert reply.retry_after is not None, reply
    assert max(waited) <= DEADLINE_S * 1000
    assert all(p["throttled"] == 0 for p in run.pools.values())
    assert sum(metric(e, "gateway_upstream_throttles_total") for e in run.expositions) == 0


def test_the_replicas_share_the_waits_evenly(run: Contended) -> None:
    first = run.started_wall + FILL_S + 1  # sent once the pools were full: every one waited
    rows = []
    for replica in range(REPLICAS):
        waiters = [r for r in _replies(run) if r.gateway == replica and r.sent >= first]
        waits = [r.queue_ms or 0 for r in waiters if r.status == 200]
        rows.append((len(waiters), len(waits), percentile(waits, 0.5), percentile(waits, 0.9)))
        print(f"[replicas] gateway{replica}: {len(waiters)} requests found the pools full, "
              f"{len(waits)} admitted ({len(waits) / max(1, len(waiters)):.1%}), their "
              f"queue-ms p50 {rows[-1][2]:.0f} p90 {rows[-1][3]:.0f}")  # fmt: skip
    shares = [ok / max(1, n) for n, ok, _, _ in rows]
    p50s, p90s = [row[2] for row in rows], [row[3] for row in rows]
    mean = sum(shares) / len(shares)
    print(f"[replicas] spread between replicas: queue-ms p50 {max(p50s) - min(p50s):.0f} ms, "
          f"p90 {max(p90s) - min(p90s):.0f} ms; admitted share {min(shares):.1%}-"
          f"{max(shares):.1%} (mean {mean:.1%})")  # fmt: skip
    assert all(ok >= 30 for _, ok, _, _ in rows)  # every replica admitted waiters
    # None starved, none favoured past half as much again. Not even: a replica's own
    # settlements wake its queue at once while the others learn of the room at their next
    # re-check, so whichever leads tends to stay ahead; seven runs of 2026-12-04 measured the
    # leader at 1.13-1.41 x the mean share and the last at 0.67-0.85 x (a random extra delay
    # on every re-check, tried, moved the lead to another replica without narrowing it).
    assert all(0.5 * mean <= share <= 1.5 * mean for share in shares)
    assert max(p50s) - min(p50s) <= 0.2 * DEADLINE_S * 1000
    assert max(p90s) - min(p90s) <= 0.1 * DEADLINE_S * 1000


def test_waiting_requests_do_not_poll_redis(run: Contended) -> None:
    offered = sum(load.rate for load in run.loads.values())
    depths = [d for t, d in run.depths if WARM_S + 10 <= t <= BLOCKED_END_S + 1]
    waiting = sum(depths) / len(depths)
    blocked = _rates(run, WARM_S, BLOCKED_END_S)  # nothing returns but refunds: all wait
    burst = _rates(run, BLOCKED_END_S, LOAD_S)  # capacity returns slot by slot
    (_, _, calls0), (_, _, calls1) = _sample(run, WARM_S), _sample(run, BLOCKED_END_S)
    top = sorted(((n, c - calls0.get(n, 0)) for n, c in calls1.items()), key=lambda x: -x[1])
    print(f"[replicas] offered {offered:.1f} requests/s; waiting in all queues (sum of "
          f"gateway_queue_depth) {', '.join(f'{d:.0f}' for _, d in run.depths)} at "
          f"{', '.join(f'{t:.0f}' for t, _ in run.depths)} s")  # fmt: skip
    for name, rates in (("while all wait", blocked), ("while capacity returns", burst)):
        print(f"[replicas] Redis {name} ({rates['span']:.0f} s): {rates['commands']:.1f} "
              f"commands/s, {rates['evalsha']:.1f} EVALSHA/s, {rates['hgetall']:.1f} "
              f"HGETALL/s, for {rates['admitted']:.2f} admissions/s")  # fmt: skip
    print(
        f"[replicas] commands while all wait, by name: "
        f"{', '.join(f'{n} {c}' for n, c in top if c > 0)}"
    )
    assert waiting >= 150
    # Round trips: an attempt for a queue's head per arrival (it may be the new head) or per
    # recheck_s, per hint (at most once a slot while capacity returns), and an admission and
    # a settlement per admitted request; one learned-quota refresh per replica a second, and
    # each replica's other background reads (the calibration refresh a second, the tenant
    # registry's reloads and the metrics' pool refresh): BACKGROUND calls a second at most.
    constant = REPLICAS * (MODELS / RECHECK_S + 1 + BACKGROUND)
    assert blocked["evalsha"] + blocked["hgetall"] <= (
        offered + 2 * blocked["admitted"] + constant + 2
    )  # fmt: skip
    assert burst["evalsha"] + burst["hgetall"] <= (
        offered + 2 * burst["admitted"] + REPLICAS * (MODELS / SLOT_S + 1 + BACKGROUND) + 2
    )  # fmt: skip
    # ... each a handful of commands inside the scripts; nothing near one per waiting request
    assert blocked["commands"] <= 6 * (blocked["evalsha"] + blocked["hgetall"])
    # Polling once a second per waiter would be >= ``waiting`` commands a second; the
    # replicas' background polls (tenant registry version every 0.25 s, calibration, metrics)
    # are about 40 of the commands counted here, the refusals' usage tallies the rest.
    print(f"[replicas] while all wait: {blocked['refused']:.1f} refusals/s, "
          f"{blocked['commands'] - REFUSAL_COMMANDS * blocked['refused']:.1f} commands/s "
          f"besides their tallies, for {waiting:.0f} waiting")  # fmt: skip
    assert blocked["commands"] - REFUSAL_COMMANDS * blocked["refused"] < 0.75 * waiting
