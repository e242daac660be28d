"""Telemetry samples -> a summary over a trial's measured steps. Pure: no torch, pynvml or psutil.

Every figure is None when nothing measured it (no GPU, no NVML, a field the device does not
support): the report prints "n/a" with the reason, never a zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from yoloprof.records import CpuSample, GpuSample, RecordError, TelemetryHeader, TelemetrySummary, from_dict
from yoloprof.stats import mean, quantile

BUSY_CORE_PCT = 90.0  # a core this busy has nothing left for DataLoader workers


def read_telemetry(path: Path) -> tuple[Optional[TelemetryHeader], list[GpuSample], list[CpuSample], list[str]]:
    """(header, GPU samples, CPU samples, notes: unsupported fields and reader errors)."""
    header, gpu, cpu, notes = None, [], [], []
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
            elif kind == "gpu":
                gpu.append(from_dict(GpuSample, obj))
            elif kind == "cpu":
                cpu.append(from_dict(CpuSample, obj))
            elif kind == "unsupported":
                notes.append("not supported by the device: " + ", ".join(obj.get("fields", [])))
            elif kind == "error":
                notes.append(f"{obj.get('source')} sampling stopped: {obj.get('message')}")
        except (ValueError, RecordError):
            continue  # a line cut short by a killed scan
    return header, gpu, cpu, notes


def _energy(samples: list[GpuSample]) -> Optional[float]:
    """Joules used by one GPU over its samples: the energy counter, else power integrated over time."""
    with_counter = [s for s in samples if s.energy_j is not None]
    if len(with_counter) >= 2:
        return with_counter[-1].energy_j - with_counter[0].energy_j
    with_power = [s for s in samples if s.power_w is not None]
    if len(with_power) >= 2:
        return sum((b.t_s - a.t_s) * (a.power_w + b.power_w) / 2 for a, b in zip(with_power, with_power[1:]))
    return None


def summarize(header: Optional[TelemetryHeader], gpu: list[GpuSample], cpu: list[CpuSample], t0_s: float,
              t1_s: float, images: int) -> TelemetrySummary:  # fmt: skip
    status = header.gpu_status if header is not None else "not measured: no telemetry was recorded"
    g = [s for s in gpu if t0_s <= s.t_s <= t1_s]
    c = [s for s in cpu if t0_s <= s.t_s <= t1_s]
    out = TelemetrySummary(gpu_status=status, samples=len(g) + len(c))
    if g:
        util = [s.sm_util_pct for s in g if s.sm_util_pct is not None]
        out.gpu_util_mean_pct = mean(util)
        by_time: dict[float, list[float]] = {}
        for s in g:
            if s.sm_util_pct is not None:
                by_time.setdefault(s.t_s, []).append(s.sm_util_pct)
        out.gpu_util_p10_pct = quantile([sum(v) / len(v) for v in by_time.values()], 0.1)
        used = [s.mem_used_mib for s in g if s.mem_used_mib is not None]
        out.gpu_mem_used_peak_mib = max(used) if used else None
        out.power_w_mean = mean(s.power_w for s in g)
        out.sm_clock_mhz_mean = mean(s.sm_clock_mhz for s in g)
        out.throttle_reasons = sorted({r for s in g for r in (s.throttle_reasons or []) if r != "idle"})
        per_gpu = [_energy([s for s in g if s.gpu == k]) for k in sorted({s.gpu for s in g})]
        if per_gpu and all(e is not None for e in per_gpu):
            out.energy_j = sum(per_gpu)
            out.energy_j_per_img = out.energy_j / images if images else None
    if c:
        out.cpu_util_mean_pct = mean(sum(s.cpu_pct_per_core) / len(s.cpu_pct_per_core) for s in c if s.cpu_pct_per_core)
        busy = [all(x >= BUSY_CORE_PCT for x in s.cpu_pct_per_core) for s in c if s.cpu_pct_per_core]
        out.cpu_busy_cores_frac = sum(busy) / len(busy) if busy else None
        out.loader_cpu_pct_mean = mean(s.loader_cpu_pct for s in c)
        out.loader_rss_peak_mib = max(s.loader_rss_mib for s in c)
        out.mem_available_min_mib = min(s.mem_available_mib for s in c)
    return out
