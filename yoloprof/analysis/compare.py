"""Two scans side by side (before/after a change): what got faster, by how much, where the time moved. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from yoloprof.analysis.aggregate import PHASES
from yoloprof.outputs import ScanOutputs
from yoloprof.records import TrialResult


@dataclass
class PhaseMove:
    phase: str
    a_ms: Optional[float]
    b_ms: Optional[float]

    @property
    def delta_ms(self) -> Optional[float]:
        return None if self.a_ms is None or self.b_ms is None else self.b_ms - self.a_ms


@dataclass
class TrialPair:
    knobs: str
    a: TrialResult
    b: TrialResult

    @property
    def ratio(self) -> Optional[float]:
        if self.a.status == "ok" and self.b.status == "ok" and self.a.img_per_s and self.b.img_per_s:
            return self.b.img_per_s / self.a.img_per_s
        return None


@dataclass
class Comparison:
    best_a: Optional[TrialResult]
    best_b: Optional[TrialResult]
    best_ratio: Optional[float]
    phases: list[PhaseMove]  # best A against best B, largest move first
    pairs: list[TrialPair]  # trials with the same settings in both scans
    env_changes: list[tuple[str, str, str]]  # (what, in A, in B)
    verdict_a: str
    verdict_b: str
    summary: str
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)


def _key(r: TrialResult) -> tuple:
    k = r.knobs
    return (r.world_size, k.batch, k.workers, k.amp, k.pin_memory, k.cache, k.nccl)


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
        "dataset": f"{m.dataset.data} ({m.dataset.train_images} images)",
        "steps": f"{m.warmup_steps} + {m.measured_steps}",
        "host": e.hostname,
    }


def compare(a: ScanOutputs, b: ScanOutputs) -> Comparison:
    best_a, best_b = a.best, b.best
    ratio = best_b.img_per_s / best_a.img_per_s if best_a and best_b else None
    phases = []
    if best_a and best_b and best_a.breakdown and best_b.breakdown:
        for p in PHASES:
            phases.append(PhaseMove(p, getattr(best_a.breakdown, p), getattr(best_b.breakdown, p)))
        phases.sort(key=lambda m: -abs(m.delta_ms or 0.0))
    by_b = {_key(r): r for r in b.results}
    pairs = [TrialPair(r.trial_id, r, by_b[_key(r)]) for r in a.results if _key(r) in by_b]
    keys_a, keys_b = {_key(r) for r in a.results}, set(by_b)
    ea, eb = _env(a), _env(b)
    env_changes = [(k, ea[k], eb[k]) for k in ea if ea[k] != eb.get(k)]
    if ratio is None:
        summary = "No comparison of the best trials: " + ("scan A" if best_a is None else "scan B") + " has no finished trial."
    else:
        moved = next((m for m in phases if m.delta_ms), None)
        where = ""
        if moved is not None:
            where = f"; the largest move is {moved.phase.replace('_ms', '').replace('_', ' ')} " \
                    f"{moved.a_ms:.1f} -> {moved.b_ms:.1f} ms per step"  # fmt: skip
        summary = (f"Best of B ({best_b.trial_id}, {best_b.img_per_s:.1f} img/s) is {ratio:.2f}x best of A "
                   f"({best_a.trial_id}, {best_a.img_per_s:.1f} img/s){where}.")  # fmt: skip
    return Comparison(
        best_a=best_a, best_b=best_b, best_ratio=ratio, phases=phases, pairs=pairs, env_changes=env_changes,
        verdict_a=a.headline, verdict_b=b.headline, summary=summary,
        only_a=[r.trial_id for r in a.results if _key(r) not in keys_b],
        only_b=[r.trial_id for r in b.results if _key(r) not in keys_a],
    )  # fmt: skip
