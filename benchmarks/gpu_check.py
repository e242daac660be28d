"""The GPU check: yoloprof's GPU path against the truth, in stages that fit one short lease of one GPU.

    python3 benchmarks/gpu_check.py [--out runs/gpu-check] [--stages grid,phases] [--budget-s 480] [--gpu 0]
    python3 benchmarks/gpu_check.py --dry-run        # the stages, their estimates and the total; runs nothing
    python3 benchmarks/gpu_check.py --check-travel   # what gpu_prepare.sh checks: the tree that travels, the wheels

Each stage has a time estimate and writes its result (<out>/<stage>.json) the moment it ends, and the
running summary <out>/gpu_check.json after every stage; with OUT set (the device machine), the summary
and a tarball of every record written so far (records.tar.gz: JSON, JSON lines, logs; no images or
weights) are copied there too, so a run cut short still returns the stages it finished. A stage
whose estimate no longer fits in --budget-s is skipped, and says so. The driver never touches CUDA
itself (NVML only): every CUDA call is in a child process, each with a time limit.

Exit 0 when no check failed, 1 when one did, 2 on bad arguments. `--device cpu` runs the stages
that can run without a GPU on CPU ranks (a smoke test of this driver, not of the GPU path).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # yoloprof: the tree is not installed on the device machine
if str(HERE) not in sys.path:  # the gpu_check_* modules beside this file, however it was started or loaded
    sys.path.insert(1, str(HERE))

from gpu_check_device_stages import nvml_info, stage_cuda_start, stage_doctor, stage_nccl  # noqa: E402
from gpu_check_run import BUDGET_S, CPU_SMOKE, GRACE_S, SUMMARY, Ctx, Params, Ran, Runner, Stage, pack_records  # noqa: E402
from gpu_check_trial_stages import stage_grid, stage_knobs, stage_oom_fit, stage_phases, stage_watch  # noqa: E402
from gpu_check_travel import (  # noqa: E402
    check_travel,
    missing_requirements,
    recompress_wheels,
    travel_files,
    wheel_requirements,
)
from gpu_check_verdicts import (  # noqa: E402
    Check,
    compare_phases,
    expected_settings,
    fit_against_oom,
    settings_check,
    step_problem,
    steps_check,
    telemetry_plausible,
    trials_check,
    watch_check,
)

__all__ = [
    "BUDGET_S",
    "GRACE_S",
    "STAGES",
    "Check",
    "Ctx",
    "Ran",
    "Runner",
    "Stage",
    "check_travel",
    "compare_phases",
    "expected_settings",
    "fit_against_oom",
    "main",
    "missing_requirements",
    "pack_records",
    "settings_check",
    "stage_cuda_start",
    "stage_doctor",
    "stage_oom_fit",
    "step_problem",
    "steps_check",
    "telemetry_plausible",
    "travel_files",
    "watch_check",
    "trials_check",
    "wheel_requirements",
]


STAGES = [
    Stage(
        "cuda-start",
        20,
        stage_cuda_start,
        "a rank's CUDA start-up (probes.memory.start, then peaks), and whether "
        "the old order (reset_peak_memory_stats first) raises",
        needs_gpu=True,
    ),
    Stage(
        "doctor",
        25,
        stage_doctor,
        "yoloprof doctor with CUDA_VISIBLE_DEVICES=0 and =<the GPU's UUID>: exit 0, the same GPU",
        needs_gpu=True,
    ),
    Stage(
        "grid",
        120,
        stage_grid,
        "a pooled grid scan of AMP on/off/bf16 x pin_memory on/off (yolo11n, batch 64, "
        "640, 8 workers): CUDA-event steps whose phases add up, effective settings, NVML telemetry",
    ),
    Stage(
        "phases",
        50,
        stage_phases,
        "the grid's best on one GPU, CUDA events against a run synchronized around every phase (within 10% or 1 ms)",
    ),
    Stage(
        "nccl",
        40,
        stage_nccl,
        "one NCCL rank under torchrun: DDP with the comm hook (every bucket's AllReduce "
        "timed), barrier, destroy_process_group; the AllReduce sweep; the doctor's collective check",
    ),
    Stage(
        "oom-fit",
        120,
        stage_oom_fit,
        "the compute probe's memory fit (yolo11x, 1280) against the batch that really runs out of memory",
        needs_gpu=True,
    ),
    Stage(
        "knobs",
        105,
        stage_knobs,
        "compile, deterministic off and channels_last off against Ultralytics' "
        "defaults on the tiny model, with the epoch job",
    ),
    Stage(
        "watch",
        45,
        stage_watch,
        "yoloprof train watching 3 epochs on the GPU from the grid's best.yaml: a line per epoch timed with "
        "CUDA events and the allocator's peak, the node's NVML telemetry, the run's summary",
    ),
]


def select(names: Optional[str], stages: Optional[list[Stage]] = None) -> list[Stage]:
    stages = STAGES if stages is None else stages
    if not names:
        return list(stages)
    asked = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in stages}
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the stages: {', '.join(s.name for s in stages)}")
    return [s for s in stages if s.name in asked]  # always in the check's own order


def plan_text(stages: list[Stage], budget_s: float) -> str:
    total = sum(s.estimate_s for s in stages)
    lines = [f"gpu_check: {len(stages)} stages, in this order (budget {budget_s:.0f} s):"]
    for i, s in enumerate(stages, 1):
        lines.append(f"  {i}. {s.name:<11} {s.estimate_s:>4.0f} s  {s.what}")
    lines.append(f"  total          {total:>4.0f} s ({total / 60:.1f} min)")
    spent, past = 0.0, []
    for s in stages:
        spent += s.estimate_s
        if spent > budget_s:
            past.append(s.name)
    if past:
        lines.append(
            f"  past the budget at these estimates, run only if earlier stages finish sooner: {', '.join(past)}"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu-check", help="folder for every stage's records and gpu_check.json")
    p.add_argument(
        "--stages", help=f"comma list, run in the check's order (default all: {','.join(s.name for s in STAGES)})"
    )
    p.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="skip a stage whose estimate no longer fits (default 480)"
    )
    p.add_argument("--gpu", type=int, default=0, help="the GPU's index (default 0)")
    p.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke test of this driver on CPU ranks"
    )
    p.add_argument("--dry-run", action="store_true", help="print the stages and their estimates; run nothing")
    p.add_argument(
        "--check-travel", action="store_true", help="size of what the device tool carries; the wheels' needs"
    )
    p.add_argument("--recompress-wheels", action="store_true", help="LZMA-recompress the big wheels in .whl")
    args = p.parse_args(argv)
    if args.recompress_wheels:
        recompress_wheels()
        return 0
    try:
        stages = select(args.stages)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    if args.check_travel:
        return check_travel()
    print(plan_text(stages, args.budget_s))
    if args.dry_run:
        return 0
    params = Params() if args.device == "cuda" else CPU_SMOKE
    ctx = Ctx(out=Path(args.out).resolve(), gpu=args.gpu, params=params)
    if params.device == "cuda":
        ctx.gpu_info = nvml_info(args.gpu)
        print(f"GPU {args.gpu}: {ctx.gpu_info}")
    copy_to = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    summary = Runner(stages, ctx, args.budget_s, copy_to).run()
    bad = [r["name"] for r in summary["stages"] if r["status"] in ("fail", "error")]
    print(
        f"gpu_check: {summary['elapsed_s']:.0f} s; "
        + (f"FAILED: {', '.join(bad)}" if bad else "no check failed")
        + f"; results in {ctx.out / SUMMARY}"
        + (f" and {copy_to}" if copy_to else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
