"""The largest batch that fits: a straight line through measured peak memory against batch.

Per-rank memory is what limits a DDP run. The line is measured on one device (the compute probe:
the allocator's reserved peak at each batch), and a DDP rank holds more than that: its CUDA
context, NCCL's buffers and the reducer's gradient buckets. The DDP trials measure that overhead
(NVML's used memory minus the allocator's, see aggregate.mem_overhead) and the fit subtracts it
from the device before drawing the line. Unlike Ultralytics' AutoBatch, which refuses DDP and
estimates from a fraction of free memory, every number here was measured.
"""

from __future__ import annotations

from typing import Optional

from yoloprof.records import PRECISIONS, ComputeCeiling, ComputePoint, TrialResult


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares (intercept, slope)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def max_batch_fit(
    points: list[ComputePoint], total_mib: float, margin_frac: float, overhead_mib: float = 0.0
) -> Optional[int]:
    """Largest batch whose predicted peak plus the per-rank overhead stays under (1 - margin) of the
    device; None without 2 points. An OOM point caps the answer below its batch, whatever the line says.

    Each point counts at the batch that ran (ComputePoint.batch_ran): a batch larger than the dataset runs
    capped at the dataset's size, so its memory is that batch's, never a point at the batch asked.
    """
    ok = [p for p in points if p.status == "ok" and p.peak_mem_mib]
    if len({p.batch_ran for p in ok}) < 2:
        return None
    intercept, slope = fit_line([p.batch_ran for p in ok], [p.peak_mem_mib for p in ok])
    if slope <= 0:
        return None
    room = total_mib * (1 - margin_frac) - overhead_mib
    best = int((room - intercept) / slope + 1e-9)  # 1e-9: 0.9 * 10000 is 8999.999...
    oom = [p.batch_ran for p in points if p.status == "oom"]
    if oom:
        best = min(best, min(oom) - 1)
    return best if best >= 1 else None


def ddp_overhead_mib(results: list[TrialResult]) -> Optional[float]:
    """The largest per-rank overhead the finished DDP trials measured; None when none did (CPU, no NVML)."""
    found = [
        r.mem_overhead_mib for r in results if r.status == "ok" and r.world_size > 1 and r.mem_overhead_mib is not None
    ]
    return max(found) if found else None


def ddp_fits(compute: ComputeCeiling, results: list[TrialResult]) -> tuple[dict[str, int], Optional[float]]:
    """({"amp"/"bf16"/"fp32": largest batch per rank under DDP}, the overhead used); empty without the overhead."""
    overhead = ddp_overhead_mib(results)
    if overhead is None or compute.device != "cuda" or not compute.device_mem_total_mib:
        return {}, overhead
    fits = {}
    for key, amp in PRECISIONS.items():
        fit = max_batch_fit(
            [p for p in compute.points if p.amp == amp], compute.device_mem_total_mib, compute.mem_margin_frac, overhead
        )
        if fit is not None:
            fits[key] = fit
    return fits, overhead
