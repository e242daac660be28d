"""Two scans side by side (before/after a change): what got faster, by how much, where the time moved. Pure.

A change is stated only where it beats both scans' noise: the best configurations' ratio with a 95%
interval from both scans' combined intervals (analysis.noise: batch means within runs, the run-to-run
spread where repeats measured it), and a phase move only where it exceeds both trials' uncertainty of
that phase (the share intervals of data wait and exposed AllReduce; for the other phases the step's own
relative uncertainty). Two runs of the same scan compare as "no measurable change"."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from yoloprof.analysis import noise
from yoloprof.analysis.aggregate import PHASES
from yoloprof.pipeline import ScanOutputs
from yoloprof.records import TrialResult


@dataclass
class PhaseMove:
    phase: str
    a_ms: Optional[float]
    b_ms: Optional[float]
    noise_ms: Optional[float] = None  # 95% half-width of the difference; None where unknown
    beyond_noise: bool = False

    @property
    def delta_ms(self) -> Optional[float]:
        return None if self.a_ms is None or self.b_ms is None else self.b_ms - self.a_ms


@dataclass
class TrialPair:
    knobs: str
    a: TrialResult
    b: TrialResult
    low: Optional[float] = None  # 95% interval of ratio (each side's configuration in its own scan)
    high: Optional[float] = None
    beyond_noise: bool = False

    @property
    def ratio(self) -> Optional[float]:
        if self.a.status == "ok" and self.b.status == "ok" and self.a.img_per_s and self.b.img_per_s:
            return self.b.img_per_s / self.a.img_per_s
        return None


@dataclass
class Comparison:
    best_a: Optional[TrialResult]
    best_b: Optional[TrialResult]
    best_ratio: Optional[float]  # best configuration of B over best of A (combined img/s)
    phases: list[PhaseMove]  # best A against best B, largest move first
    pairs: list[TrialPair]  # trials with the same settings in both scans
    env_changes: list[tuple[str, str, str]]  # (what, in A, in B)
    verdict_a: str
    verdict_b: str
    summary: str
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    best_ratio_low: Optional[float] = None  # 95% interval of best_ratio; None where a side has no interval
    best_ratio_high: Optional[float] = None
    beyond_noise: bool = False  # the ratio's interval excludes 1
    uncertainty: str = ""  # how each side's interval was computed


def _key(r: TrialResult) -> tuple:
    """The same configuration in both scans: every knob (records from before a knob read as its default)."""
    return (r.world_size, r.knobs)


def _env(o: ScanOutputs) -> dict[str, str]:
    e, m = o.meta.environment, o.meta
    return {
        "GPUs": "; ".join(g.name for g in e.gpus) or "none",
        "ranks": f"{m.world_size} ({m.device})",
        "driver / CUDA / NCCL": f"{e.driver} / {e.cuda} / {e.nccl}",
        "torch": e.torch,
        "ultralytics": e.ultralytics,
        "CPU cores": str(e.cpu_count),
        "model": m.model,
        "imgsz": str(m.imgsz),
        # what the trials ran (a scan before auto was resolved pinned SGD; one after may run MuSGD: another step)
        "optimizer": ", ".join(sorted({r.optimizer for r in o.results if r.optimizer})) or m.optimizer,
        "dataset": f"{m.dataset.data} ({m.dataset.train_images} images)",
        "steps": f"{m.warmup_steps} + {m.measured_steps}",
        "host": e.hostname,
    }


def _best_config(o: ScanOutputs) -> Optional[noise.Config]:
    if o.best is None:
        return None
    return noise.config_of(o.results, o.best.trial_id)


def _ratio(a: noise.Config, b: noise.Config) -> tuple[float, Optional[float], Optional[float], bool]:
    """B's mean over A's, its 95% interval and whether it excludes 1 (the rule of noise.difference)."""
    ratio = b.mean / a.mean
    if not (a.known or b.known):
        return ratio, None, None, ratio != 1.0
    ha, hb = a.half_rel, b.half_rel
    if not (math.isfinite(ha) and math.isfinite(hb)) or ha >= 1 or hb >= 1:
        return ratio, None, None, False
    h = math.sqrt(math.log1p(ha) ** 2 + math.log1p(hb) ** 2)
    low, high = ratio * math.exp(-h), ratio * math.exp(h)
    return ratio, low, high, not (low <= 1.0 <= high)


def _phase_noise(r: TrialResult, phase: str, step_half_rel: float) -> Optional[float]:
    """95% half-width of a phase's ms per step in one trial: the share's interval times the step where the
    share has one, else the step's own relative uncertainty times the phase."""
    b = r.breakdown
    value = getattr(b, phase)
    if value is None:
        return None
    ci = {"data_wait_ms": r.data_wait_frac_ci, "comm_wait_ms": r.comm_frac_ci}.get(phase)
    if ci is not None:
        return (ci[1] - ci[0]) / 2 * b.step_ms
    if not math.isfinite(step_half_rel):
        return None
    return step_half_rel * abs(value)


def _phase_moves(best_a: TrialResult, best_b: TrialResult, cfg_a: noise.Config, cfg_b: noise.Config) -> list[PhaseMove]:
    known = cfg_a.known or cfg_b.known
    moves = []
    for p in PHASES:
        m = PhaseMove(p, getattr(best_a.breakdown, p), getattr(best_b.breakdown, p))
        if m.delta_ms is not None:
            if not known:
                m.beyond_noise = m.delta_ms != 0
            else:
                na, nb = _phase_noise(best_a, p, cfg_a.half_rel), _phase_noise(best_b, p, cfg_b.half_rel)
                if na is not None and nb is not None:
                    m.noise_ms = math.hypot(na, nb)
                    m.beyond_noise = abs(m.delta_ms) > m.noise_ms
        moves.append(m)
    moves.sort(key=lambda m: (not m.beyond_noise, -abs(m.delta_ms or 0.0)))
    return moves


def _name(phase: str) -> str:
    return phase.replace("_ms", "").replace("_", " ")


def compare(a: ScanOutputs, b: ScanOutputs) -> Comparison:
    best_a, best_b = a.best, b.best
    cfg_a, cfg_b = _best_config(a), _best_config(b)
    ratio = low = high = None
    beyond = False
    if cfg_a is not None and cfg_b is not None:
        ratio, low, high, beyond = _ratio(cfg_a, cfg_b)
    phases = []
    if best_a and best_b and best_a.breakdown and best_b.breakdown and cfg_a and cfg_b:
        phases = _phase_moves(best_a, best_b, cfg_a, cfg_b)
    by_b = {_key(r): r for r in b.results}
    pairs = [TrialPair(r.trial_id, r, by_b[_key(r)]) for r in a.results if _key(r) in by_b]
    for p in pairs:
        ca, cb = noise.config_of(a.results, p.a.trial_id), noise.config_of(b.results, p.b.trial_id)
        if ca is not None and cb is not None:
            _, p.low, p.high, p.beyond_noise = _ratio(ca, cb)
    keys_a, keys_b = {_key(r) for r in a.results}, set(by_b)
    ea, eb = _env(a), _env(b)
    env_changes = [(k, ea[k], eb[k]) for k in ea if ea[k] != eb.get(k)]
    uncertainty = ""
    if ratio is None:
        summary = (
            "No comparison of the best trials: "
            + ("scan A" if best_a is None else "scan B")
            + " has no finished trial."
        )
    else:
        span = (
            f"95% {low:.2f}-{high:.2f}"
            if low is not None
            else (
                "uncertainty not recorded" if not (cfg_a.known or cfg_b.known) else "uncertainty unknown: too few steps"
            )
        )
        uncertainty = f"A: {cfg_a.method}; B: {cfg_b.method}"
        moved = [m for m in phases if m.beyond_noise and m.delta_ms]
        fig = lambda c, r: f"{r.trial_id}, {c.mean:.1f} img/s"  # noqa: E731
        if beyond:
            summary = f"Best of B ({fig(cfg_b, best_b)}) is {ratio:.2f}x best of A ({fig(cfg_a, best_a)}; {span})"
        else:
            summary = (
                f"No measurable change: best of B ({fig(cfg_b, best_b)}) is {ratio:.2f}x best of A "
                f"({fig(cfg_a, best_a)}), {span}, within both scans' noise"
            )
        if moved:
            m = moved[0]
            summary += (
                f"; the largest move beyond the noise is {_name(m.phase)} {m.a_ms:.1f} -> {m.b_ms:.1f} ms "
                "per step" + (f" (+-{m.noise_ms:.1f} ms)" if m.noise_ms is not None else "")
            )
        elif phases:
            summary += "; no phase of the step moved beyond the noise"
        summary += "."
    return Comparison(
        best_a=best_a,
        best_b=best_b,
        best_ratio=ratio,
        phases=phases,
        pairs=pairs,
        env_changes=env_changes,
        verdict_a=a.headline,
        verdict_b=b.headline,
        summary=summary,
        only_a=[r.trial_id for r in a.results if _key(r) not in keys_b],
        only_b=[r.trial_id for r in b.results if _key(r) not in keys_a],
        best_ratio_low=low,
        best_ratio_high=high,
        beyond_noise=beyond,
        uncertainty=uncertainty,
    )
