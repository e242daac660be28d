"""Speed-up and efficiency per world size, where a scan measured several. Pure.

Trials are grouped by everything but the world size, with the batch per rank held constant (as
when GPUs are added to a run); efficiency is the speed-up over the ideal, linear one. The seed
articles report about 85% at 4 GPUs: below that, the report's AllReduce columns say why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from yoloprof.analysis.ranking import settings_tail
from yoloprof.records import Knobs, TrialResult


@dataclass
class ScalePoint:
    trial_id: str
    world_size: int
    img_per_s: float
    speedup: float  # over the smallest world size in the group
    efficiency: float  # speedup / (world_size / smallest world size)
    comm_frac: float | None


@dataclass
class ScaleGroup:
    settings: str  # "batch 8/rank, workers 2, fp32, ..."
    points: list[ScalePoint]


def groups(results: list[TrialResult]) -> list[ScaleGroup]:
    by: dict[Knobs, list[TrialResult]] = {}
    for r in results:
        if r.status != "ok" or not r.img_per_s:
            continue
        k = r.knobs
        key = replace(k, batch=k.batch // max(r.world_size, 1))  # the settings, with the batch per rank
        by.setdefault(key, []).append(r)
    out = []
    for key, rs in by.items():
        sizes = {r.world_size for r in rs}
        if len(sizes) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.world_size)
        base = rs[0]
        pts = []
        for r in rs:
            speedup = r.img_per_s / base.img_per_s
            pts.append(ScalePoint(r.trial_id, r.world_size, r.img_per_s, speedup,
                                  speedup / (r.world_size / base.world_size), r.comm_frac))  # fmt: skip
        settings = ", ".join([f"batch {key.batch}/rank", f"workers {key.workers}", *settings_tail(key)])
        out.append(ScaleGroup(settings, pts))
    return out
