"""Repeats, run-to-run noise and differences that beat it. Pure: functions over list[TrialResult].

Two levels vary on these machines (../shared/NOISE.md): steps within a run (correlated; each trial's
batch-means interval, yoloprof.analysis.intervals, covers it) and whole runs (the same configuration
launched again lands 6-24% away). The second is measured, never assumed: from every configuration run
more than once (a trial with `repeat_of`, or simply the same settings twice), the relative spread of its
runs around their mean is pooled over configurations, df = sum(runs - 1).

A configuration is the finished trials with the same knobs and world size. Its combined figure is the
mean img/s of its runs; the 95% half-width of that mean is

- where the run-to-run spread was measured: t975(df) * s_rel * mean / sqrt(k), widened to at least the
  mean within-run half-width / sqrt(k);
- where no configuration was repeated: the within-run interval only ("run-to-run noise not measured");
- where a run has no within-run interval (too few steps): unbounded, the uncertainty is unknown;
- records without any interval (written before intervals existed, or built by hand): the point
  figure, exact as far as this module knows ("uncertainty not recorded").

`difference(results, a, b)` is the ratio of B's configuration mean over A's with a 95% interval (log
scale: the two relative half-widths add in quadrature), and `beyond_noise` when that interval excludes
1. `contenders(results)` lists the configurations still in the running for the best. The search calls
both to decide what to repeat and whether a candidate beats the incumbent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from yoloprof.analysis.intervals import t975
from yoloprof.records import TrialResult

# Within this share of the smallest peak memory, two configurations count as using the same memory when
# choosing among tied ones (peak memory itself moves a little from run to run).
MEMORY_TOLERANCE = 0.05


def config_key(r: TrialResult) -> tuple:
    return (r.knobs, r.world_size)


def _ok(r: TrialResult) -> bool:
    return r.status == "ok" and bool(r.img_per_s)


def within_half_rel(r: TrialResult) -> Optional[float]:
    """A run's own 95% half-width relative to its img/s: inf where the run could not give one (too few
    steps), None where the record carries no interval information at all (old or hand-built records)."""
    if r.img_per_s_ci_low is not None and r.img_per_s_ci_high is not None and r.img_per_s:
        return (r.img_per_s_ci_high - r.img_per_s_ci_low) / 2 / r.img_per_s
    if r.img_per_s_ci_method:
        return math.inf
    return None


@dataclass
class RunToRun:
    """Pooled relative spread of single runs of one configuration around its mean."""

    s_rel: Optional[float]  # None: no configuration was run twice
    df: int  # sum over repeated configurations of (runs - 1)
    configs: int  # configurations with 2+ runs

    @property
    def half_rel(self) -> Optional[float]:
        """95% half-width of one run, relative: t975(df) * s_rel."""
        return None if self.s_rel is None else t975(self.df) * self.s_rel

    def text(self) -> str:
        if self.s_rel is None:
            return "run-to-run noise not measured (no configuration was run twice)"
        return (
            f"run-to-run spread {100 * self.s_rel:.1f}% pooled over {self.configs} repeated "
            f"configuration{'s' if self.configs != 1 else ''} (df {self.df})"
        )


@dataclass
class Config:
    """The finished runs of one configuration and their combined figure."""

    key: tuple
    trial_ids: list[str]  # the original run first (the one that repeats nothing), then its repeats
    runs: list[float]  # img/s of each run, same order
    mean: float
    low: float  # 95% interval of the mean
    high: float
    method: str
    known: bool  # False where no run recorded any interval (the bounds are then the point figure)

    @property
    def first(self) -> str:
        return self.trial_ids[0]

    @property
    def half_rel(self) -> float:
        return (self.high - self.low) / 2 / self.mean if math.isfinite(self.high) else math.inf


def _groups(results: list[TrialResult]) -> dict[tuple, list[TrialResult]]:
    groups: dict[tuple, list[TrialResult]] = {}
    for r in results:
        if _ok(r):
            groups.setdefault(config_key(r), []).append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: r.repeat_of is not None)  # stable: the original first, repeats in order
    return groups


def run_to_run(results: list[TrialResult]) -> RunToRun:
    """Pool the relative variance of runs around their configuration's mean over every repeated one."""
    ss, df, n = 0.0, 0, 0
    for runs in _groups(results).values():
        if len(runs) < 2:
            continue
        m = sum(r.img_per_s for r in runs) / len(runs)
        ss += sum((r.img_per_s / m - 1) ** 2 for r in runs)
        df += len(runs) - 1
        n += 1
    return RunToRun(math.sqrt(ss / df) if df else None, df, n)


def _combine(key: tuple, runs: list[TrialResult], rtr: RunToRun) -> Config:
    k = len(runs)
    mean = sum(r.img_per_s for r in runs) / k
    within = [within_half_rel(r) for r in runs]
    ids = [r.trial_id for r in runs]
    known = [w for w in within if w is not None]
    if not known and rtr.s_rel is None:
        return Config(
            key,
            ids,
            [r.img_per_s for r in runs],
            mean,
            mean,
            mean,
            "uncertainty not recorded (no interval in these records)",
            False,
        )
    w_mean = sum(known) / len(known) if known else 0.0
    floor = w_mean / math.sqrt(k)
    if rtr.s_rel is not None:
        half = max(rtr.half_rel / math.sqrt(k), floor)
        method = f"{rtr.text()} and batch means within each run" + (f"; mean of {k} runs" if k > 1 else "")
    else:
        half = floor
        method = "batch means within the run; run-to-run noise not measured"
    if not math.isfinite(half):
        return Config(
            key,
            ids,
            [r.img_per_s for r in runs],
            mean,
            0.0,
            math.inf,
            "no interval: too few steps for batch means" + ("" if rtr.s_rel is None else f"; {rtr.text()}"),
            True,
        )
    return Config(
        key, ids, [r.img_per_s for r in runs], mean, max(mean * (1 - half), 0.0), mean * (1 + half), method, True
    )


def configurations(results: list[TrialResult]) -> list[Config]:
    """Every configuration with a finished run, highest combined img/s first."""
    rtr = run_to_run(results)
    out = [_combine(key, runs, rtr) for key, runs in _groups(results).items()]
    return sorted(out, key=lambda c: -c.mean)


def config_of(results: list[TrialResult], trial_id: str) -> Optional[Config]:
    return next((c for c in configurations(results) if trial_id in c.trial_ids), None)


def trial_interval(r: TrialResult, rtr: RunToRun) -> tuple[Optional[float], Optional[float]]:
    """One run's 95% interval as results.csv shows it: its within-run interval, widened to the run-to-run
    spread where repeats measured it (relative half-width max(within, t975(df) * s_rel)). (None, None)
    where neither is known."""
    if not _ok(r):
        return None, None
    within = within_half_rel(r)
    if rtr.s_rel is None:
        return r.img_per_s_ci_low, r.img_per_s_ci_high
    half = max(within or 0.0, rtr.half_rel)
    if not math.isfinite(half):
        return None, None
    return max(r.img_per_s * (1 - half), 0.0), r.img_per_s * (1 + half)


@dataclass
class Difference:
    """B's configuration over A's: ratio of their combined img/s, with a 95% interval."""

    a_trial_id: str
    b_trial_id: str
    ratio: float  # mean img/s of B's configuration / mean of A's
    low: float
    high: float
    beyond_noise: bool  # the interval excludes 1.0
    method: str
    known: bool = True  # False where neither side recorded an interval (the ratio is then taken as exact)

    @property
    def gain(self) -> float:
        return self.ratio - 1

    @property
    def half_rel(self) -> float:
        """Half-width of the ratio's interval relative to 1 (0.08 = +-8%)."""
        if not math.isfinite(self.high) or self.low <= 0:
            return math.inf
        return math.log(self.high / self.low) / 2

    def interval_text(self) -> str:
        """'95% 0.91-1.08', or why there is none."""
        if not self.known:
            return "uncertainty not recorded"
        if not math.isfinite(self.high):
            return "uncertainty unknown: too few steps for an interval"
        return f"95% {self.low:.2f}-{self.high:.2f}"

    def gain_text(self, unit: str = "images/s") -> str:
        """'+31% images/s (95% +20% to +43%)', or 'no measurable effect on images/s (95% -4% to +9%)'."""
        if not self.known:
            return f"{100 * self.gain:+.0f}% {unit}"
        if not math.isfinite(self.high):
            return f"{100 * self.gain:+.0f}% {unit}, uncertainty unknown (too few steps for an interval)"
        span = f"95% {100 * (self.low - 1):+.0f}% to {100 * (self.high - 1):+.0f}%"
        if self.beyond_noise:
            return f"{100 * self.gain:+.0f}% {unit} ({span})"
        return f"no measurable effect on {unit} ({span})"


def _diff(a: Config, b: Config) -> tuple[float, float, float, bool]:
    ratio = b.mean / a.mean
    if not (a.known or b.known):
        return ratio, ratio, ratio, ratio != 1.0
    ha, hb = a.half_rel, b.half_rel
    if not (math.isfinite(ha) and math.isfinite(hb)) or ha >= 1 or hb >= 1:
        return ratio, 0.0, math.inf, False
    # log scale: log(1 + h) ~ h; the halves of two independent means add in quadrature
    h = math.sqrt(math.log1p(ha) ** 2 + math.log1p(hb) ** 2)
    low, high = ratio * math.exp(-h), ratio * math.exp(h)
    return ratio, low, high, not (low <= 1.0 <= high)


def difference(results: list[TrialResult], a_trial_id: str, b_trial_id: str) -> Difference:
    """B's configuration against A's (each trial id stands for its configuration, repeats included):
    ratio = mean img/s of B's / mean of A's, its 95% interval, and beyond_noise when the interval excludes
    1.0. The same configuration gives ratio 1 and beyond_noise False. A trial id that did not finish (or is
    not in results) gives ratio nan and beyond_noise False, with the reason in `method`."""
    configs = configurations(results)
    by_id = {tid: c for c in configs for tid in c.trial_ids}
    missing = [t for t in (a_trial_id, b_trial_id) if t not in by_id]
    if missing:
        return Difference(
            a_trial_id,
            b_trial_id,
            math.nan,
            math.nan,
            math.nan,
            False,
            f"{', '.join(missing)} did not finish: no figure to compare",
            False,
        )
    a, b = by_id[a_trial_id], by_id[b_trial_id]
    if a is b:
        return Difference(a_trial_id, b_trial_id, 1.0, 1.0, 1.0, False, "the same configuration", a.known)
    ratio, low, high, beyond = _diff(a, b)
    method = a.method if a.method == b.method else f"A: {a.method}; B: {b.method}"
    return Difference(a_trial_id, b_trial_id, ratio, low, high, beyond, method, a.known or b.known)


def tied_with_best(results: list[TrialResult]) -> list[Config]:
    """The fastest configuration and every one whose difference from it is not beyond the noise, fastest first."""
    configs = configurations(results)
    if not configs:
        return []
    best = configs[0]
    return [best] + [c for c in configs[1:] if not _diff(best, c)[3]]


def contenders(results: list[TrialResult], limit: int = 3) -> list[str]:
    """First trial ids of the configurations still in the running for the best: the one with the highest
    combined img/s and those whose difference from it is not beyond the noise, best first, at most `limit`.
    One id means the best is settled; several mean repeats of these would tell them apart."""
    return [c.first for c in tied_with_best(results)][:limit]
