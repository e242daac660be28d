"""Telemetry samples -> a summary over a trial's measured steps. Pure: no torch, pynvml or psutil.

Every figure is None when nothing measured it (no GPU, no NVML, a field the device does not
support): the report prints "n/a" with the reason, never a zero.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

from yoloprof.records import CpuSample, GpuSample, RecordError, TelemetryHeader, TelemetrySummary, from_dict
from yoloprof.analysis.stats import mean, quantile

BUSY_CORE_PCT = 90.0  # a core this busy has nothing left for DataLoader workers
NO_FILE = "not measured: no telemetry file"


def read_telemetry(path: Path) -> tuple[Optional[TelemetryHeader], list[GpuSample], list[CpuSample], list[str]]:
    """(header, GPU samples, CPU samples, notes: the unsupported GPU fields and the readers' errors).

    A missing file reads as nothing; a line cut short by a killed scan is skipped.
    """
    header, gpu, cpu, unsupported, errors = None, [], [], [], []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None, [], [], []
    for line in lines:
        try:
            obj = json.loads(line)
            kind = obj.pop("kind", None)
            if kind == "header":
                header = from_dict(TelemetryHeader, obj)
                unsupported += header.unsupported
            elif kind == "gpu":
                gpu.append(from_dict(GpuSample, obj))
            elif kind == "cpu":
                cpu.append(from_dict(CpuSample, obj))
            elif kind == "unsupported":
                unsupported += [str(f) for f in obj.get("fields", [])]
            elif kind == "error":
                errors.append(f"{obj.get('source')} telemetry stopped: {obj.get('message')}")
        except (ValueError, TypeError, AttributeError, RecordError):
            continue
    notes = ["not supported by the GPU: " + ", ".join(dict.fromkeys(unsupported))] if unsupported else []
    return header, gpu, cpu, notes + errors


def _energy(samples: list[GpuSample]) -> Optional[float]:
    """Joules one GPU used over its samples: the energy counter, else its power integrated (trapezoids)."""
    counter = [s.energy_j for s in samples if s.energy_j is not None]
    if len(counter) >= 2 and counter[-1] >= counter[0]:  # a counter that went back was reset (driver reload)
        return counter[-1] - counter[0]
    power = [s for s in samples if s.power_w is not None]
    if len(power) >= 2:
        return sum((b.t_s - a.t_s) * (a.power_w + b.power_w) / 2 for a, b in itertools.pairwise(power))
    return None


def _gpu_summary(out: TelemetrySummary, g: list[GpuSample], images: int) -> None:
    out.gpu_util_mean_pct = mean(s.sm_util_pct for s in g)
    by_time: dict[float, list[float]] = {}
    for s in g:
        if s.sm_util_pct is not None:
            by_time.setdefault(s.t_s, []).append(s.sm_util_pct)
    out.gpu_util_p10_pct = quantile([sum(v) / len(v) for v in by_time.values()], 0.1)
    out.gpu_mem_used_peak_mib = max((s.mem_used_mib for s in g if s.mem_used_mib is not None), default=None)
    out.power_w_mean = mean(s.power_w for s in g)
    out.sm_clock_mhz_mean = mean(s.sm_clock_mhz for s in g)
    out.throttle_reasons = sorted({r for s in g for r in (s.throttle_reasons or [])})
    per_gpu = [_energy(sorted((s for s in g if s.gpu == k), key=lambda s: s.t_s)) for k in sorted({s.gpu for s in g})]
    if all(e is not None for e in per_gpu):  # a GPU without either would make the sum an undercount
        out.energy_j = sum(per_gpu)
        out.energy_j_per_img = out.energy_j / images if images > 0 else None


def _cpu_summary(out: TelemetrySummary, c: list[CpuSample]) -> None:
    cores = [s.cpu_pct_per_core for s in c if s.cpu_pct_per_core]
    out.cpu_util_mean_pct = mean(sum(x) / len(x) for x in cores)
    out.cpu_busy_cores_frac = sum(all(v >= BUSY_CORE_PCT for v in x) for x in cores) / len(cores) if cores else None
    out.loader_cpu_pct_mean = mean(s.loader_cpu_pct for s in c)
    out.loader_rss_peak_mib = max((s.loader_rss_mib for s in c if s.loader_rss_mib is not None), default=None)
    out.mem_available_min_mib = min((s.mem_available_mib for s in c if s.mem_available_mib is not None), default=None)


def summarize(
    header: Optional[TelemetryHeader],
    gpu_samples: list[GpuSample],
    cpu_samples: list[CpuSample],
    t0_s: float,
    t1_s: float,
    images: int,
) -> TelemetrySummary:
    """Telemetry over [t0_s, t1_s], the trial's measured steps; images: those trained in the window."""
    g = [s for s in gpu_samples if t0_s <= s.t_s <= t1_s]
    c = [s for s in cpu_samples if t0_s <= s.t_s <= t1_s]
    out = TelemetrySummary(gpu_status=header.gpu_status if header is not None else NO_FILE, samples=len(g) + len(c))
    if g:
        _gpu_summary(out, g, images)
    if c:
        _cpu_summary(out, c)
    return out
