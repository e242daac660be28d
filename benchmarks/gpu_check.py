"""Check yoloprof's GPU measurements against the truth, on whatever GPUs are here. Run on demand:

    .venv/bin/python benchmarks/gpu_check.py [--gpus 0,1] [--out runs/gpu-check] [--imgsz 640] [--batch 64]

1. A real scan over AMP on/off, pin_memory on/off and two workers values (with its ceilings).
2. Phase times: the best trial's settings on one GPU, timed as a scan times them (CUDA events, no
   synchronize) and again synchronizing the device around every phase; each phase's mean must
   agree within 10% or 1 ms.
3. NVML telemetry of every finished trial: present and plausible (utilisation, power, memory).
4. The memory fit against the batch that really runs out of memory on one GPU.

Prints each check with its figures, writes gpu_check.json beside the scan, and exits 1 if a check
failed. The scan folder's records (no images) are what tests/fixtures/gpu-scan keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yoloprof.records import Breakdown, ComputePoint, TrialResult  # noqa: E402

PHASES = ("data_wait_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")
PHASE_REL_TOL, PHASE_ABS_TOL_MS = 0.10, 1.0  # the bar: within 10% or 1 ms
MAX_POWER_W = 1500.0  # above any single GPU's board limit: a reading past it is a unit error


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None: could not be checked (said why)
    detail: str
    figures: dict = field(default_factory=dict)


def compare_phases(events: Breakdown, synced: Breakdown) -> Check:
    """Each phase of the event-timed run against the synchronized reference."""
    rows, bad = {}, []
    for p in PHASES:
        a, b = getattr(events, p), getattr(synced, p)
        if a is None or b is None:
            rows[p] = None
            continue
        diff = abs(a - b)
        rows[p] = dict(events_ms=round(a, 3), synced_ms=round(b, 3), diff_ms=round(diff, 3))
        if diff > max(PHASE_REL_TOL * b, PHASE_ABS_TOL_MS):
            bad.append(p)
    measured = [p for p in PHASES if rows[p] is not None]
    if not measured:
        return Check("phase times vs synchronized", None, "no phase was measured in both runs", rows)
    text = ", ".join(f"{p[:-3]} {rows[p]['events_ms']:.1f}/{rows[p]['synced_ms']:.1f} ms" for p in measured)
    return Check("phase times vs synchronized", not bad,
                 f"events/synced: {text}" + (f"; off by more than 10% and 1 ms: {', '.join(bad)}" if bad else ""), rows)


def telemetry_plausible(results: list[TrialResult]) -> Check:
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return Check("NVML telemetry", None, "no trial finished")
    problems, figures = [], {}
    for r in ok:
        t = r.telemetry
        if t is None or t.gpu_status != "ok":
            problems.append(f"{r.trial_id}: {t.gpu_status if t else 'no telemetry'}")
            continue
        figures[r.trial_id] = dict(util_pct=t.gpu_util_mean_pct, power_w=t.power_w_mean,
                                   mem_used_peak_mib=t.gpu_mem_used_peak_mib, energy_j_per_img=t.energy_j_per_img)
        if t.gpu_util_mean_pct is None or not 0 < t.gpu_util_mean_pct <= 100:
            problems.append(f"{r.trial_id}: utilisation {t.gpu_util_mean_pct}")
        if t.power_w_mean is not None and not 0 < t.power_w_mean < MAX_POWER_W:
            problems.append(f"{r.trial_id}: power {t.power_w_mean} W")
        total = r.device_mem_total_mib
        if t.gpu_mem_used_peak_mib is None or t.gpu_mem_used_peak_mib <= 0 or (total and t.gpu_mem_used_peak_mib > total * 1.01):
            problems.append(f"{r.trial_id}: memory used {t.gpu_mem_used_peak_mib} MiB of {total}")
        if r.peak_mem_mib and t.gpu_mem_used_peak_mib and t.gpu_mem_used_peak_mib < r.peak_mem_mib:
            problems.append(f"{r.trial_id}: NVML used {t.gpu_mem_used_peak_mib:.0f} < allocator {r.peak_mem_mib:.0f} MiB")
    return Check("NVML telemetry", not problems, "; ".join(problems) or f"plausible in {len(figures)} trials", figures)


def fit_against_oom(fit: Optional[int], points: list[ComputePoint]) -> Check:
    """The predicted largest batch (90% of memory) must run, and must sit below the first real OOM."""
    oom = sorted(p.batch for p in points if p.status == "oom")
    ran = sorted(p.batch for p in points if p.status == "ok")
    if fit is None:
        return Check("memory fit vs real OOM", None, "no fit (fewer than two compute points)")
    if not oom:
        return Check("memory fit vs real OOM", None, f"fit {fit}; no batch tried ran out of memory (largest run {ran[-1] if ran else 'none'})")
    first = oom[0]
    ok = fit < first and (fit in ran or any(b >= fit for b in ran))
    return Check("memory fit vs real OOM", ok, f"fit {fit} per rank (90% of memory); first OOM at {first}; "
                 f"fit / OOM = {fit / first:.2f}", dict(fit=fit, first_oom=first, ran=ran))


# -- the driver (needs GPUs) -----------------------------------------------------------------------


def _yoloprof(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "yoloprof", *args], cwd=ROOT).returncode


def _phase_check(scan: Path, best: TrialResult, gpu: int, cache: Path) -> Check:
    from yoloprof.analysis import aggregate
    from yoloprof.scan import launch
    from yoloprof.records import read_json, TrialSpec

    spec = read_json(scan / "trials" / best.trial_id / "spec.json", TrialSpec)
    per_rank = dataclasses.replace(spec.knobs, batch=max(spec.knobs.batch // spec.world_size, 1))
    runs = {}
    for sync in (False, True):
        one = dataclasses.replace(spec, trial_id=f"phase-{'synced' if sync else 'events'}", knobs=per_rank,
                                  world_size=1, gpus=[gpu], sync_phases=sync, warmup_steps=10, measured_steps=30)
        tdir = scan / "gpu-check" / one.trial_id
        outcome = launch.run_trial(one, tdir, cache_dir=cache)
        runs[sync] = aggregate.aggregate(one, aggregate.read_ranks(tdir), outcome)
    if any(r.status != "ok" or r.breakdown is None for r in runs.values()):
        return Check("phase times vs synchronized", False, "; ".join(f"{r.trial_id}: {r.status} {r.error or ''}" for r in runs.values()))
    return compare_phases(runs[False].breakdown, runs[True].breakdown)


def _oom_search(scan: Path, fit: int, amp: bool, gpu: int, cache: Path, imgsz: int) -> list[ComputePoint]:
    """Compute-probe points at the fit and above it, doubling until a batch runs out of memory."""
    from yoloprof import paths
    from yoloprof.scan import ceilings
    from yoloprof.search import plan
    from yoloprof.records import read_json, ScanMeta

    meta = read_json(scan / "scan.json", ScanMeta)
    hw = plan.Hardware("cuda", 1, [gpu], meta.environment.cpu_count, len(meta.environment.gpus))
    points: list[ComputePoint] = []
    batch = fit
    while batch <= fit * 8:
        specs = ceilings.compute_specs(hw, [batch], [amp], model=meta.model, data=meta.dataset.data, imgsz=imgsz,
                                       optimizer=meta.optimizer, warmup=2, steps=3)  # fmt: skip
        c = ceilings.compute(scan / "gpu-check" / f"oom-b{batch}", specs, cache_dir=paths.cache_dir(),
                             device_name="", device_mem_total_mib=None)  # fmt: skip
        points += c.points
        if any(p.status == "oom" for p in c.points):
            break
        batch *= 2
    return points


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", help="GPU indices (default: every visible GPU)")
    p.add_argument("--out", default="runs/gpu-check", help="folder for the scan and gpu_check.json")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, help="global batch (default 32 per GPU)")
    args = p.parse_args(argv)
    import torch

    from yoloprof import outputs, paths

    n_visible = torch.cuda.device_count()
    if n_visible == 0:
        print("gpu_check: no GPU visible to torch; this check needs one (run `yoloprof doctor` to see why)", file=sys.stderr)
        return 2
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else list(range(n_visible))
    out = Path(args.out)
    scan = out / "scan"
    batch = args.batch or 32 * len(gpus)
    code = _yoloprof("scan", "--gpus", ",".join(map(str, gpus)), "--amp", "on,off", "--pin-memory", "on,off",
                     "--workers", "2,8", "--batch", f"{batch // 2},{batch}", "--imgsz", str(args.imgsz),
                     "--out", str(scan))  # fmt: skip
    checks = [Check("scan", code == 0, f"yoloprof scan exited {code}")]
    if (scan / "scan.json").is_file():
        res = outputs.collect(scan)
        checks.append(telemetry_plausible(res.results))
        if res.best is not None:
            checks.append(_phase_check(scan, res.best, gpus[0], paths.cache_dir()))
        compute = res.ceilings.compute
        if compute is not None and res.best is not None:
            key = "amp" if res.best.knobs.amp else "fp32"
            fit = compute.max_batch_fit.get(key)
            points = _oom_search(scan, fit, res.best.knobs.amp, gpus[0], paths.cache_dir(), args.imgsz) if fit else []
            checks.append(fit_against_oom(fit, points))
    for c in checks:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[c.ok]
        print(f"[{mark}] {c.name}: {c.detail}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps([dataclasses.asdict(c) for c in checks], indent=1) + "\n")
    print(f"Wrote {out / 'gpu_check.json'}; keep {scan} (records only, no images) as tests/fixtures/gpu-scan")
    return 1 if any(c.ok is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
