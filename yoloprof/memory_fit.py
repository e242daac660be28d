"""The largest batch that fits: a straight line through measured peak memory against batch.

Per-rank memory is what limits a DDP run, so points measured on one device hold under DDP
(unlike Ultralytics' AutoBatch, which refuses DDP and estimates from a fraction of free memory).
"""

from __future__ import annotations

from typing import Optional

from yoloprof.records import ComputePoint


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares (intercept, slope)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def max_batch_fit(points: list[ComputePoint], total_mib: float, margin_frac: float) -> Optional[int]:
    """Largest batch whose predicted peak stays under (1 - margin) of the device; None without 2 points.

    An OOM point caps the answer below its batch, whatever the line says.
    """
    ok = [p for p in points if p.status == "ok" and p.peak_mem_mib]
    if len({p.batch for p in ok}) < 2:
        return None
    intercept, slope = fit_line([p.batch for p in ok], [p.peak_mem_mib for p in ok])
    if slope <= 0:
        return None
    best = int((total_mib * (1 - margin_frac) - intercept) / slope + 1e-9)  # 1e-9: 0.9 * 10000 is 8999.999...
    oom = [p.batch for p in points if p.status == "oom"]
    if oom:
        best = min(best, min(oom) - 1)
    return best if best >= 1 else None
