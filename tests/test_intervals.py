"""Batch-means intervals over correlated steps: exact on a hand series, honest on a correlated one."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from yoloprof.analysis import intervals


def ar1(seed: int, n: int = 40, phi: float = 0.5, mean_ms: float = 100.0, sd_ms: float = 15.0) -> list[float]:
    """Step times with lag-1 autocorrelation phi around a known mean (stationary from the first step)."""
    rng = random.Random(seed)
    x = rng.gauss(0.0, sd_ms)
    out = []
    for _ in range(n):
        x = phi * x + rng.gauss(0.0, sd_ms * math.sqrt(1 - phi * phi))
        out.append(mean_ms + x)
    return out


def test_batch_means_covers_the_true_rate_where_the_per_step_error_does_not():
    """200 AR(1) series (phi 0.5, like the slow and fast stretches in ../shared/NOISE.md), 32 images per 100 ms
    step on average: the true rate is 320 img/s. Batch means (10 blocks of 4) covers it near 95% of the time;
    the plain per-step standard error around the same estimate about 80%."""
    true, seeds = 320.0, range(200)
    bm = naive = 0
    for seed in seeds:
        ms = ar1(seed)
        iv = intervals.throughput([32.0] * len(ms), ms)
        assert iv.method == "batch means over 10 blocks of 4 steps"
        bm += iv.low <= true <= iv.high
        rates = [32.0 / m * 1e3 for m in ms]
        se = statistics.stdev(rates) / math.sqrt(len(rates))
        naive += iv.estimate - 1.96 * se <= true <= iv.estimate + 1.96 * se
    assert bm / len(seeds) >= 0.90  # 0.935 with these seeds
    assert naive / len(seeds) <= 0.85  # 0.80 with these seeds
    assert bm - naive >= 20


def test_independent_steps_cover_about_as_often_either_way():
    bm = sum(
        intervals.throughput([32.0] * 40, ms).low <= 320.0 <= intervals.throughput([32.0] * 40, ms).high
        for ms in (ar1(s, phi=0.0) for s in range(200))
    )
    assert 0.90 <= bm / 200 <= 0.99


def test_exact_interval_on_a_hand_series():
    # 12 steps -> 3 blocks of 4: 40 images per 400, 800 and 400 ms -> 100, 50, 100 img/s per block
    ms = [100.0] * 4 + [200.0] * 4 + [100.0] * 4
    iv = intervals.throughput([10.0] * 12, ms)
    assert iv.estimate == pytest.approx(120 / 1.6)
    half = 4.303 * statistics.stdev([100.0, 50.0, 100.0]) / math.sqrt(3)
    assert (iv.low, iv.high) == (pytest.approx(max(75 - half, 0)), pytest.approx(75 + half))
    assert iv.method == "batch means over 3 blocks of 4 steps"


def test_too_few_steps_give_no_interval():
    iv = intervals.throughput([8.0] * 6, [100.0] * 6)
    assert iv.estimate == pytest.approx(80) and iv.high == math.inf and iv.method.startswith("no interval")
    assert intervals.throughput([], []) is None
    assert not intervals.precise_enough([8.0] * 6, [100.0] * 6, 0.5)


def test_fraction_interval_and_t_quantiles():
    part = [10.0] * 4 + [30.0] * 4 + [20.0] * 4
    iv = intervals.fraction(part, [100.0] * 12)
    assert iv.estimate == pytest.approx(0.2)
    half = 4.303 * statistics.stdev([0.1, 0.3, 0.2]) / math.sqrt(3)
    assert (iv.low, iv.high) == (pytest.approx(max(0.2 - half, 0)), pytest.approx(min(0.2 + half, 1.0)))
    assert intervals.t975(1) == 12.706 and intervals.t975(30) == 2.042
    assert intervals.t975(60) == pytest.approx(2.000, abs=0.002) and intervals.t975(0) == math.inf
