"""Speed-up and efficiency per world size, where a scan measured several. Pure.

Trials are grouped by everything but the world size, with the batch per rank held constant (as
when GPUs are added to a run); efficiency is the speed-up over the ideal, linear one. The seed
articles report about 85% at 4 GPUs: below that, the report's AllReduce columns say why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from yoloprof.analysis.ranking import settings_tail
from yoloprof.records import AllReduceCeiling, Knobs, TrialResult


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
            pts.append(
                ScalePoint(
                    r.trial_id,
                    r.world_size,
                    r.img_per_s,
                    speedup,
                    speedup / (r.world_size / base.world_size),
                    r.comm_frac,
                )
            )
        settings = ", ".join([f"batch {key.batch}/rank", f"workers {key.workers}", *settings_tail(key)])
        out.append(ScaleGroup(settings, pts))
    return out


@dataclass
class LinkLoss:
    """Where scaling across nodes is lost: the model's gradient buckets AllReduced across every node
    against the same within one node (the link probe run twice, yoloprof.scan.ceilings.allreduce)."""

    nccl: str
    nnodes: int
    ranks: int  # across nodes
    ranks_one_node: Optional[int]  # None: not measured (one rank per node)
    bucket_mib: float  # the model's buckets, together (0: the probe knew no bucket sizes)
    across_ms: Optional[float]  # one step's AllReduce of those buckets, across nodes
    one_node_ms: Optional[float]
    text: str


# Two single sweeps closer than this are not told apart: the run-to-run spread measured on these machines
# reaches 24% (../shared/NOISE.md), and a sweep is not repeated.
LINK_NOISE = 0.25


def _bucket_ms(c: AllReduceCeiling, sizes: set[int]) -> Optional[float]:
    times = {p.size_bytes: p.time_us for p in c.points if p.size_bytes in sizes}
    return sum(times.values()) / 1e3 if sizes and set(times) == sizes else None


def link_losses(allreduce: list[AllReduceCeiling]) -> list[LinkLoss]:
    out = []
    for c in allreduce:
        if c.nnodes <= 1 or c.status != "ok":
            continue
        one = next((o for o in allreduce if o.nnodes == 1 and o.nccl == c.nccl and o.status == "ok"), None)
        sizes = {p.size_bytes for p in c.points if p.is_bucket}
        if not sizes:  # no bucket sizes known: the largest size both probes ran
            common = {p.size_bytes for p in c.points} & ({p.size_bytes for p in one.points} if one else set())
            sizes = {max(common)} if common else ({max(p.size_bytes for p in c.points)} if c.points else set())
        across, within = _bucket_ms(c, sizes), _bucket_ms(one, sizes) if one else None
        what = (
            f"{len(sizes)} gradient bucket{'s' if len(sizes) != 1 else ''}"
            if any(p.is_bucket for p in c.points)
            else "the largest message"
        )
        mib = sum(sizes) / 2**20
        if across is None:
            text = f"AllReduce across {c.nnodes} nodes ({c.nccl}): the probe did not reach the model's {what}"
        elif within is None:
            text = (
                f"AllReduce of the model's {what} ({mib:.1f} MiB) takes {across:.2f} ms a step across {c.nnodes} "
                f"nodes ({c.world_size} ranks, {c.nccl}); within one node: not measured (one rank per node), so "
                "the share lost to the inter-node link is unknown"
            )
        else:
            both = (
                f"AllReduce of the model's {what} ({mib:.1f} MiB) takes {across:.2f} ms a step across {c.nnodes} "
                f"nodes ({c.world_size} ranks) and {within:.2f} ms within one node ({one.world_size} ranks, "
                f"{c.nccl}; one sweep each, no interval)"
            )
            if within > 0 and abs(across / within - 1) > LINK_NOISE:
                text = f"{both}: the inter-node link costs {across - within:+.2f} ms a step ({across / within:.1f}x)"
            else:
                text = f"{both}: no measurable difference (within +-{100 * LINK_NOISE:.0f}%, one sweep's noise)"
        out.append(LinkLoss(c.nccl, c.nnodes, c.world_size, one.world_size if one else None, mib, across, within, text))
    return out
