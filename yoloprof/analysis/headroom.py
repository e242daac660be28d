"""Each trial set against the ceilings measured on the same model, data and machine. Pure.

compute ceiling: the one-device compute rate at the trial's per-rank batch and AMP, times the ranks
(what the GPUs could do if input and AllReduce cost nothing); input ceiling: what the loaders at the
trial's workers and pin_memory values delivered for the whole machine with no model running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from yoloprof.records import (
    AllReduceCeiling,
    ComputeCeiling,
    Knobs,
    LoaderCeiling,
    LoaderPoint,
    RecordError,
    TrialResult,
    from_dict,
)


@dataclass
class Ceilings:
    loader: Optional[LoaderCeiling] = None
    compute: Optional[ComputeCeiling] = None
    allreduce: list[AllReduceCeiling] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.loader or self.compute or self.allreduce)


@dataclass
class TrialVsCeilings:
    trial_id: str
    img_per_s: Optional[float]
    compute_img_s: Optional[float]
    input_img_s: Optional[float]
    pipeline_eff: Optional[float]  # img_per_s / compute ceiling
    input_headroom: Optional[float]  # input ceiling / img_per_s: below ~1.2 the loaders barely keep up


def load(folder: Path) -> Ceilings:
    """Whatever ceilings a folder holds; a damaged file is skipped (it is evidence, not input)."""
    folder = Path(folder)
    out = Ceilings()

    def read(path: Path, cls):
        try:
            return from_dict(cls, json.loads(path.read_text()))
        except (OSError, ValueError, RecordError):
            return None

    out.loader = read(folder / "loader.json", LoaderCeiling)
    out.compute = read(folder / "compute.json", ComputeCeiling)
    for p in sorted(folder.glob("allreduce-*.json")):
        c = read(p, AllReduceCeiling)
        if c is not None:
            out.allreduce.append(c)
    return out


def against(r: TrialResult, c: Ceilings) -> TrialVsCeilings:
    k, n = r.knobs, max(r.world_size, 1)
    compute = None
    if c.compute is not None:
        per_rank = max(r.batch_ran // n, 1)  # both at the batch that ran (a dataset smaller than a batch caps it)
        hit = next((p for p in c.compute.points if p.batch_ran == per_rank and p.amp == k.amp and p.img_per_s), None)
        compute = hit.img_per_s * n if hit else None
    loader = None
    if c.loader is not None:
        hit = next((p for p in c.loader.points if loader_matches(p, k) and p.img_per_s_machine), None)
        # one node's loaders: a trial across nodes has that many loading on each node
        loader = hit.img_per_s_machine * max(n / max(hit.ranks, 1), 1.0) if hit else None
    rate = r.img_per_s if r.status == "ok" else None
    return TrialVsCeilings(
        trial_id=r.trial_id,
        img_per_s=rate,
        compute_img_s=compute,
        input_img_s=loader,
        pipeline_eff=rate / compute if rate and compute else None,
        input_headroom=loader / rate if rate and loader else None,
    )


def loader_matches(p: LoaderPoint, k: Knobs) -> bool:
    """The loader point that loaded as this trial's ranks did: its workers, and its pin_memory where
    the point records one (older records did not: they match on workers alone)."""
    return p.workers == k.workers and (p.pin_memory is None or p.pin_memory == k.pin_memory)


def bucket_busbw(c: AllReduceCeiling) -> dict[int, float]:
    """The probe's busbw at the model's own bucket sizes."""
    return {p.size_bytes: p.busbw_gbs for p in c.points if p.is_bucket}


def achieved_bucket_busbw(r: TrialResult) -> list[tuple[int, float]]:
    """busbw of each DDP bucket as timed in training (launch to completion, so queueing counts)."""
    n = max(r.world_size, 1)
    out = []
    for size, ms in zip(r.bucket_sizes_bytes, r.bucket_allreduce_ms_p50):
        if ms and ms > 0 and n > 1:
            out.append((size, size / (ms / 1e3) / 1e9 * 2 * (n - 1) / n))
    return out
