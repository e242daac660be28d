"""Confidence intervals for figures measured over correlated steps. Pure: no numpy needed here.

Training steps are not independent: DataLoader workers deliver batches in bursts and a slow
stretch of the machine slows several steps in a row (lag-1 autocorrelation up to +0.7 here,
../shared/NOISE.md), so the per-step spread understates the uncertainty of a mean. Batch means
does not: the series is cut into consecutive blocks long enough to be nearly independent, each
block gives one throughput (its images over its time), and the interval comes from the spread of
those block figures with Student's t. The estimate itself is the whole series' images over its
time, the figure a user's training would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

CONFIDENCE = 0.95
MIN_BLOCK_STEPS = 4  # a block shorter than this keeps most of a burst's correlation inside one block
MAX_BLOCKS = 10
MIN_BLOCKS = 3  # fewer blocks than this and the spread says nothing

# Two-sided 95% quantiles of Student's t, df 1..30; beyond 30 the normal approximation below.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval."""
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.960 + 2.4 / df  # within 0.002 of the exact value for df > 30


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    method: str  # how it was computed, for the report ("batch means over 5 blocks of 4 steps")

    @property
    def half_rel(self) -> float:
        """Half-width relative to the estimate (0.03 = +-3%)."""
        if not self.estimate or not math.isfinite(self.high - self.low):
            return math.inf
        return (self.high - self.low) / 2 / abs(self.estimate)


def blocks_for(n: int) -> tuple[int, int]:
    """(block length, number of blocks) for n steps: blocks of at least MIN_BLOCK_STEPS, at most
    MAX_BLOCKS of them, longer blocks as the series grows (as batch means needs)."""
    length = max(MIN_BLOCK_STEPS, math.ceil(n / MAX_BLOCKS))
    return length, n // length


def _sd(xs: Sequence[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def throughput(images: Sequence[float], step_ms: Sequence[float]) -> Optional[Interval]:
    """Images per second of a series of steps, with a batch-means interval. None without steps.

    With too few steps for MIN_BLOCKS blocks the interval is unbounded (low 0, high inf): the
    estimate stands, its uncertainty is unknown, and a caller must not present it as tight.
    """
    pairs = [(n, ms) for n, ms in zip(images, step_ms) if ms is not None and ms > 0]
    if not pairs:
        return None
    total_s = sum(ms for _, ms in pairs) / 1e3
    estimate = sum(n for n, _ in pairs) / total_s
    length, count = blocks_for(len(pairs))
    if count < MIN_BLOCKS:
        return Interval(
            estimate,
            0.0,
            math.inf,
            f"no interval: {len(pairs)} steps are fewer than {MIN_BLOCKS} blocks of {MIN_BLOCK_STEPS}",
        )
    rates = []
    for b in range(count):
        block = pairs[b * length : (b + 1) * length]
        rates.append(sum(n for n, _ in block) / (sum(ms for _, ms in block) / 1e3))
    half = t975(count - 1) * _sd(rates) / math.sqrt(count)
    used = count * length
    method = f"batch means over {count} blocks of {length} steps" + (
        f" (last {len(pairs) - used} steps in the estimate only)" if used < len(pairs) else ""
    )
    return Interval(estimate, max(estimate - half, 0.0), estimate + half, method)


def precise_enough(images: Sequence[float], step_ms: Sequence[float], precision: float) -> bool:
    """The stopping rule of a trial: the throughput interval's half-width is within `precision`."""
    iv = throughput(images, step_ms)
    return iv is not None and iv.half_rel <= precision


def fraction(part_ms: Sequence[Optional[float]], step_ms: Sequence[float]) -> Optional[Interval]:
    """A share of the step (data wait, exposed AllReduce) with a batch-means interval."""
    pairs = [(p, s) for p, s in zip(part_ms, step_ms) if p is not None and s and s > 0]
    if not pairs:
        return None
    estimate = sum(p for p, _ in pairs) / sum(s for _, s in pairs)
    length, count = blocks_for(len(pairs))
    if count < MIN_BLOCKS:
        return Interval(estimate, 0.0, 1.0, "no interval: too few steps")
    shares = [
        sum(p for p, _ in pairs[b * length : (b + 1) * length])
        / sum(s for _, s in pairs[b * length : (b + 1) * length])
        for b in range(count)
    ]
    half = t975(count - 1) * _sd(shares) / math.sqrt(count)
    return Interval(
        estimate,
        max(estimate - half, 0.0),
        min(estimate + half, 1.0),
        f"batch means over {count} blocks of {length} steps",
    )


def summed_throughput(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Optional[Interval]:
    """Images per second of several loaders timed at once (one per rank: the machine's rate), as
    `series` of (images, ms) per batch. The estimate is the sum of each series' rate; the interval comes
    from batch means of the summed block rates (block b of every series covers about the same stretch
    of time, since the windows start together), so a stretch that slows every rank widens it."""
    pairs = [[(n, ms) for n, ms in zip(images, step_ms) if ms is not None and ms > 0] for images, step_ms in series]
    pairs = [p for p in pairs if p]
    if not pairs:
        return None
    estimate = sum(sum(n for n, _ in p) / (sum(ms for _, ms in p) / 1e3) for p in pairs)
    shortest = min(len(p) for p in pairs)
    length, count = blocks_for(shortest)
    if count < MIN_BLOCKS:
        return Interval(
            estimate,
            0.0,
            math.inf,
            f"no interval: {shortest} batches are fewer than {MIN_BLOCKS} blocks of {MIN_BLOCK_STEPS}",
        )
    sums = []
    for b in range(count):
        blocks = [p[b * length : (b + 1) * length] for p in pairs]
        sums.append(sum(sum(n for n, _ in blk) / (sum(ms for _, ms in blk) / 1e3) for blk in blocks))
    half = t975(count - 1) * _sd(sums) / math.sqrt(count)
    return Interval(
        estimate,
        max(estimate - half, 0.0),
        estimate + half,
        f"batch means over {count} blocks of {length} batches, ranks summed",
    )
