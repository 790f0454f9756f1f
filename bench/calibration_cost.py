"""What the input-estimate calibration adds to each request's CPU on the hot path.

Per request the data plane looks up the factor of (model, body family), scales the estimate,
and at settlement records one sample (a bin and a counter). The background refresh (one Redis
round trip a second, or a local merge) is not per request and not counted here. Measured with
``timeit`` over realistic InvokeModel and Converse bodies (best of ``--rounds``), next to the
estimate itself, which every request already pays.

Usage::

    .venv/bin/python bench/calibration_cost.py [--number 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import timeit

from gateway import calibration, cost
from gateway.calibration import CalibrationPolicy
from gateway.limiter.calibrating import Calibrations, family

CONVERSE = {
    "system": [{"text": "You are a careful assistant for the search team. Answer briefly. " * 6}],
    "messages": [
        {"role": "user" if i % 2 == 0 else "assistant",
         "content": [{"text": "A question about quotas, tokens and retries, with details. " * 8}]}
        for i in range(5)
    ],
    "inferenceConfig": {"maxTokens": 512},
}  # fmt: skip
INVOKE = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Summarise the quota report for this week. " * 10}],
}


def per_call_us(statement: object, number: int, rounds: int) -> float:
    best = min(timeit.repeat(statement, number=number, repeat=rounds))  # type: ignore[arg-type]
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calibrations = Calibrations(CalibrationPolicy(), [("claude", "converse"), ("claude", "invoke")],
                                None, "bgw")  # fmt: skip
    for operation, body in (("converse", CONVERSE), ("invoke", INVOKE)):
        raw = cost.estimate(operation, body, default_max_tokens=4096)
        key = ("claude", family(operation))

        def hot_path(raw: cost.Estimate = raw, key: tuple[str, str] = key) -> None:
            scaled = calibration.scale(raw.input_tokens, calibrations.factor(key))
            cost.Estimate(scaled, raw.max_output_tokens)
            calibrations.observe(key, raw.input_tokens, scaled)

        def estimate(operation: str = operation, body: dict[str, object] = body) -> None:
            cost.estimate(operation, body, default_max_tokens=4096)

        calibrated = per_call_us(hot_path, args.number, args.rounds)
        baseline = per_call_us(estimate, args.number // 10, args.rounds)
        print(
            f"{operation:9} estimate {raw.input_tokens:5d} tokens: estimate {baseline:6.2f} µs,"
            f" calibration (factor + scale + sample) {calibrated:5.2f} µs per request"
        )


if __name__ == "__main__":
    main()
