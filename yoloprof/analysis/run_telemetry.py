"""A watched run's telemetry -> each epoch's GPU and CPU figures. Pure: reads files, imports no torch or pynvml.

`yoloprof train` samples its node every second (yoloprof.probes.telemetry, in the launching process, not in
the ranks) into RUN_DIR/yoloprof/telemetry-node<n>.jsonl. An epoch's samples are those taken while its steps
ran (rank 0's epoch line says when): validation runs at other clocks and loads and is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from yoloprof.analysis.change import onset, reference
from yoloprof.analysis.stats import mean
from yoloprof.analysis.telemetry import read_telemetry
from yoloprof.records import CpuSample, GpuSample
from yoloprof.records.run import Drift, RunEpoch, RunEpochView

# NVML's reasons that slow the clocks below what the load asks for (idle and the application clocks are not)
SLOWDOWN = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
_NODE = re.compile(r"telemetry-node(\d+)\.jsonl$")


@dataclass
class GpuEpoch:
    """One GPU over one epoch's steps."""

    node: int
    gpu: int  # CUDA index on its node, as yoloprof train saw it
    rank: int  # the rank on it: node * GPUs a node + its position
    samples: int
    sm_util_pct: Optional[float]
    sm_clock_mhz: Optional[float]
    temp_c_max: Optional[float]
    power_w: Optional[float]
    slowdown_frac: float  # share of its samples with one of SLOWDOWN
    reasons: list[str] = field(default_factory=list)


@dataclass
class NodeTelemetry:
    node: int
    status: str  # the GPU reader's ("ok", or "not measured: <why>")
    gpus: list[int]
    gpu: list[GpuSample]
    cpu: list[CpuSample]
    notes: list[str]


def read(run_dir: Path) -> list[NodeTelemetry]:
    out = []
    for f in sorted((Path(run_dir) / "yoloprof").glob("telemetry-node*.jsonl")):
        m = _NODE.search(f.name)
        if not m:
            continue
        header, gpu, cpu, notes = read_telemetry(f)
        out.append(
            NodeTelemetry(
                int(m.group(1)),
                header.gpu_status if header else "not measured: the file has no header",
                list(header.gpus) if header else [],
                gpu,
                cpu,
                notes,
            )
        )
    return out


def windows(epochs: dict[int, list[RunEpoch]]) -> dict[int, tuple[float, float]]:
    """epoch -> (start, end) of its steps on the wall clock, from rank 0's line (the lowest rank's if absent)."""
    if not epochs:
        return {}
    rows = epochs.get(0) or epochs[min(epochs)]
    out = {}
    for e in rows:
        end = e.t_end_s - (e.end_s or 0.0)  # the line is written after validation and saving
        out[e.epoch] = (end - e.train_s, end)
    return out


def notes(nodes: list[NodeTelemetry]) -> list[str]:
    """One line per node: what was sampled, or why not."""
    if not nodes:
        return ["not measured: no telemetry file (a run watched before telemetry was added, or --no-watch)"]
    out = []
    for n in nodes:
        gpu = f"{len({s.gpu for s in n.gpu})} GPU(s), {len(n.gpu)} samples" if n.gpu else f"GPU {n.status}"
        out.append(f"node {n.node}: {gpu}; CPU {len(n.cpu)} samples" + "".join(f"; {x}" for x in n.notes))
    return out


def per_gpu(nodes: list[NodeTelemetry], t0: float, t1: float) -> list[GpuEpoch]:
    out = []
    for n in nodes:
        for pos, gpu in enumerate(n.gpus):
            g = [s for s in n.gpu if s.gpu == gpu and t0 <= s.t_s <= t1]
            if not g:
                continue
            reasons = [set(s.throttle_reasons or []) for s in g]
            out.append(
                GpuEpoch(
                    n.node,
                    gpu,
                    n.node * len(n.gpus) + pos,
                    len(g),
                    mean(s.sm_util_pct for s in g),
                    mean(s.sm_clock_mhz for s in g),
                    max((s.temp_c for s in g if s.temp_c is not None), default=None),
                    mean(s.power_w for s in g),
                    sum(bool(r & set(SLOWDOWN)) for r in reasons) / len(g),
                    sorted(set().union(*reasons)),
                )
            )
    return out


def cpu_figures(nodes: list[NodeTelemetry], t0: float, t1: float) -> tuple[Optional[float], Optional[float], int]:
    """(every core's busy %, the loader workers' CPU %, samples) over the window, all nodes."""
    c = [s for n in nodes for s in n.cpu if t0 <= s.t_s <= t1]
    cores = [s.cpu_pct_per_core for s in c if s.cpu_pct_per_core]
    return mean(sum(x) / len(x) for x in cores), mean(s.loader_cpu_pct for s in c), len(c)


CLOCK_FALL = 0.10  # a GPU's mean SM clock this far below its steady epochs', with NVML naming a slowdown


def fill(views: list[RunEpochView], epochs: dict[int, list[RunEpoch]], nodes: list[NodeTelemetry]) -> None:
    """Each epoch's telemetry figures into its view (in place)."""
    spans = windows(epochs)
    for v in views:
        if v.epoch not in spans:
            continue
        t0, t1 = spans[v.epoch]
        gs = per_gpu(nodes, t0, t1)
        v.cpu_util_pct, v.loader_cpu_pct, n = cpu_figures(nodes, t0, t1)
        v.telemetry_samples = n + sum(g.samples for g in gs)
        if gs:
            v.gpu_util_pct = mean(g.sm_util_pct for g in gs)
            v.sm_clock_mhz_min = min((g.sm_clock_mhz for g in gs if g.sm_clock_mhz is not None), default=None)
            v.gpu_temp_c_max = max((g.temp_c_max for g in gs if g.temp_c_max is not None), default=None)
            v.throttle_reasons = sorted({r for g in gs for r in g.reasons if r in SLOWDOWN})


def clock_drifts(keys: list[int], epochs: dict[int, list[RunEpoch]], nodes: list[NodeTelemetry]) -> list[Drift]:
    """A GPU whose clocks fell for good, with NVML's reason (heat, power): its rank's steps slow with it."""
    spans = windows(epochs)
    by_epoch = {k: {(g.node, g.gpu): g for g in per_gpu(nodes, *spans[k])} for k in spans}
    out = []
    for node, gpu in sorted({key for gs in by_epoch.values() for key in gs}):
        rows = {k: gs.get((node, gpu)) for k, gs in by_epoch.items()}
        clock = {k: (r.sm_clock_mhz if r else None) for k, r in rows.items()}

        def fell(k: int, since: int, rows=rows, clock=clock) -> bool:
            ref, r = reference(clock, since), rows.get(k)
            return (
                bool(ref)
                and r is not None
                and r.sm_clock_mhz is not None
                and (r.sm_clock_mhz < ref * (1 - CLOCK_FALL) and r.slowdown_frac >= 0.5)
            )

        k = onset([k for k in keys if k in rows], fell, clock)
        if k is None:
            continue
        r, ref = rows[k], reference(clock, k)
        heat = f", {r.temp_c_max:.0f} C at most" if r.temp_c_max is not None else ""
        power = f", {r.power_w:.0f} W" if r.power_w is not None else ""
        why = ", ".join(x for x in r.reasons if x in SLOWDOWN)
        out.append(
            Drift(
                "clocks",
                k,
                r.rank,
                f"GPU {gpu} of node {node} (rank {r.rank}): its SM clock fell from {ref:.0f} to {r.sm_clock_mhz:.0f} MHz "
                f"({100 * (r.sm_clock_mhz / ref - 1):+.0f}%) from epoch {k + 1}, NVML naming {why} in "
                f"{100 * r.slowdown_frac:.0f}% of its samples{heat}{power}: cooling or the power limit slows it",
            )
        )
    return out
