"""Self-calibrating input estimates: how Bedrock's true input counts compare with ours.

Bedrock counts input with each model's own tokenizer; ``cost.estimate`` uses fixed weights
that no model matches exactly. Every answer reports the true count, so for each model and body
family (Converse, InvokeModel) we keep a histogram of true / estimate over time slots, and
scale later estimates by a high quantile of it: under-estimates (which admit more than Bedrock
will count) become rare, and an over-counting model is no longer over-reserved for good.

Pure arithmetic, no I/O and no clock: callers pass slot numbers. Histograms are
``{slot: {bin: count}}``; bin ``b`` holds ratios in ``[base**b, base**(b + 1))`` with
``base = 1 + step``, ratios clamped to ``[floor, ceiling]`` first, so one absurd usage report
moves one sample to an edge and the factor stays bounded whatever is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Histogram = dict[int, dict[int, int]]
"""Samples by time slot, then by ratio bin: ``{slot: {bin: count}}``."""


@dataclass(frozen=True, slots=True)
class CalibrationPolicy:
    quantile: float = 0.98
    """Scale estimates by this quantile of true / estimate."""
    initial: float = 1.10
    """The factor until ``min_samples`` answers are seen: a safe margin over the fit."""
    min_samples: int = 20
    window_s: float = 60.0
    """Use at least the newest this many seconds of samples (more when traffic is sparse)."""
    retain_s: float = 600.0
    """Samples older than this are dropped."""
    slot_s: float = 5.0
    step: float = 0.01
    """Bin width: factors are resolved to about this fraction."""
    floor: float = 0.5
    ceiling: float = 3.0
    min_estimate: int = 16
    """Estimates below this many tokens are too coarse to learn from (not sampled)."""

    @property
    def window_slots(self) -> int:
        return max(1, math.ceil(self.window_s / self.slot_s))

    @property
    def retain_slots(self) -> int:
        return max(self.window_slots, math.ceil(self.retain_s / self.slot_s))


def bin_of(policy: CalibrationPolicy, estimated: int, actual: int) -> int | None:
    """The ratio bin of one answer, or None when it is not worth a sample."""
    if estimated < policy.min_estimate or actual < 0:
        return None
    ratio = min(policy.ceiling, max(policy.floor, actual / estimated))
    return math.floor(math.log(ratio) / math.log1p(policy.step) + 1e-9)


def factor(policy: CalibrationPolicy, histogram: Mapping[int, Mapping[int, int]],
           now_slot: int) -> float | None:  # fmt: skip
    """The quantile's upper bin edge over the newest slots holding at least ``window_s`` and
    ``min_samples``; None when the whole retained history holds fewer samples."""
    merged: dict[int, int] = {}
    total = 0
    oldest = now_slot - policy.retain_slots
    for slot in sorted((s for s in histogram if s > oldest), reverse=True):
        for bin_, count in histogram[slot].items():
            merged[bin_] = merged.get(bin_, 0) + count
            total += count
        if total >= policy.min_samples and slot <= now_slot - policy.window_slots + 1:
            break
    if total < policy.min_samples:
        return None
    needed = policy.quantile * total
    seen = 0
    for bin_ in sorted(merged):
        seen += merged[bin_]
        if seen >= needed:
            edge = (1 + policy.step) ** (bin_ + 1)
            return min(policy.ceiling, max(policy.floor, edge))
    raise AssertionError("unreachable: the quantile lies within the samples")


def add(histogram: Histogram, slot: int, bin_: int, count: int = 1) -> None:
    bins = histogram.setdefault(slot, {})
    bins[bin_] = bins.get(bin_, 0) + count


def prune(policy: CalibrationPolicy, histogram: Histogram, now_slot: int) -> None:
    for slot in [s for s in histogram if s <= now_slot - policy.retain_slots]:
        del histogram[slot]


def scale(tokens: int, by: float) -> int:
    """An input estimate scaled by a calibration factor, rounded up."""
    return math.ceil(tokens * by - 1e-9)
