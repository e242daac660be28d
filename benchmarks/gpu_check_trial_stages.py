"""The GPU check's stages that run yoloprof trials: the grid scan, the phases against a synchronized run,
the memory fit against a real OOM, the knobs, and `yoloprof train`'s watch; each judged by gpu_check_verdicts."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

from gpu_check_run import Ctx
from gpu_check_verdicts import (
    Check,
    compare_phases,
    fit_against_oom,
    settings_check,
    steps_check,
    telemetry_plausible,
    trials_check,
    watch_check,
)
from yoloprof.records import ComputePoint, Knobs


def scan_command(ctx: Ctx, out: Path, *flags: str) -> list[str]:
    where = ["--gpus", str(ctx.gpu)] if ctx.cuda else ["--device", "cpu", "--nproc", "1"]
    return [
        sys.executable,
        "-m",
        "yoloprof",
        "scan",
        *where,
        "--strategy",
        "grid",
        "--precision",
        "off",
        "--no-defaults",
        "--no-ceilings",
        "--out",
        str(out),
        *flags,
    ]


def scan_records(scan: Path):
    """(outputs, {trial id: (knobs, device, rank records)}) of a finished scan folder."""
    from yoloprof import pipeline
    from yoloprof.analysis import aggregate
    from yoloprof.paths import trial_dir
    from yoloprof.records import TrialSpec, read_json

    res = pipeline.collect(scan)
    trials = {}
    for r in res.results:
        tdir = trial_dir(scan, r.trial_id)
        spec = read_json(tdir / "spec.json", TrialSpec) if (tdir / "spec.json").is_file() else None
        if r.status == "ok" and spec is not None:
            trials[r.trial_id] = (spec.knobs, spec.device, aggregate.read_ranks(tdir))
    return res, trials


def stage_grid(ctx: Ctx) -> list[Check]:
    p = ctx.params
    scan = ctx.stage_dir / "scan"
    flags = [
        "--model",
        p.model,
        "--amp",
        p.amp,
        "--pin-memory",
        p.pin_memory,
        "--workers",
        str(p.workers),
        "--batch",
        str(p.batch),
        "--imgsz",
        str(p.imgsz),
        "--steps",
        str(p.steps),
        "--warmup",
        str(p.warmup),
        "--no-epoch-job",
        "--trial-timeout",
        "100",
    ]
    ran = ctx.run(scan_command(ctx, scan, *flags), "scan")
    checks = [Check("scan", ran.returncode == 0 and not ran.timed_out, ran.line("yoloprof scan"))]
    if not (scan / "scan.json").is_file():
        return checks
    res, trials = scan_records(scan)
    expect = len(p.amp.split(",")) * len(p.pin_memory.split(","))
    checks.append(trials_check(res.results, res.meta.trial_ids, expect))
    timing = "cuda_event" if ctx.cuda else "host"
    checks += steps_check({t: v[2] for t, v in trials.items()}, timing)
    checks.append(settings_check(trials, ("amp_effective", "pin_memory_effective")))
    if ctx.cuda:
        checks.append(telemetry_plausible(res.results))
    return checks


def stage_knobs(ctx: Ctx) -> list[Check]:
    """The Ultralytics defaults trial (compile off, deterministic on, channels_last on) and one trial with
    each of the three flipped (compiled, not deterministic, NCHW), with the epoch job: every value of
    every knob runs once, on the tiny model so the compile fits the stage."""
    p = ctx.params
    scan = ctx.stage_dir / "scan"
    cmd = scan_command(
        ctx,
        scan,
        "--model",
        p.knobs_model,
        "--imgsz",
        str(p.knobs_imgsz),
        "--batch",
        str(p.knobs_batch),
        "--workers",
        str(min(p.workers, 4)),
        "--steps",
        "10",
        "--warmup",
        "3",
        "--compile",
        "default",
        "--deterministic",
        "off",
        "--channels-last",
        "off",
        "--trial-timeout",
        "150",
    )
    cmd.remove("--no-defaults")  # the defaults trial is the other half of every knob
    ran = ctx.run(cmd, "scan")
    checks = [Check("scan", ran.returncode == 0 and not ran.timed_out, ran.line("yoloprof scan"))]
    if not (scan / "scan.json").is_file():
        return checks
    res, trials = scan_records(scan)
    checks.append(trials_check(res.results, res.meta.trial_ids, 2))
    checks += steps_check({t: v[2] for t, v in trials.items()}, "cuda_event" if ctx.cuda else "host")
    checks.append(settings_check(trials, ("compiled", "deterministic_effective", "channels_last_effective")))
    costs = list(res.epoch_costs.values())
    epoch_ok = [c for c in costs if c.status == "ok"]
    predicted = {t: pr.epoch_s for t, pr in res.predictions.items()}
    checks.append(
        Check(
            "epoch job",
            bool(epoch_ok) and all(v is not None for v in predicted.values()),
            "; ".join(f"world {c.world_size}: {c.status} {c.error or ''}".strip() for c in costs) or "no epoch job ran",
            dict(epoch_s=predicted, val_s=[c.val.estimate for c in costs], save_s=[c.save.estimate for c in costs]),
        )
    )
    return checks


def default_phase_spec(ctx: Ctx):
    """The grid's settings when there is no grid scan to take the best trial from."""
    from yoloprof import paths
    from yoloprof.data import dataset
    from yoloprof.records import TrialSpec

    p = ctx.params
    knobs = Knobs(batch=p.batch, workers=p.workers, amp=ctx.cuda, pin_memory=ctx.cuda, cache="off", nccl="default")
    return TrialSpec(
        trial_id="phase",
        knobs=knobs,
        world_size=1,
        device=p.device,
        gpus=[ctx.gpu] if ctx.cuda else [],
        model=p.model,
        data=str(dataset.ensure(paths.cache_dir())),
        imgsz=p.imgsz,
        optimizer="SGD",
        warmup_steps=p.warmup,
        measured_steps=p.steps,
        env={"OMP_NUM_THREADS": str(max((os.cpu_count() or 1), 1))},
    )


def stage_phases(ctx: Ctx) -> list[Check]:
    from yoloprof import pipeline, paths
    from yoloprof.records import TrialSpec, read_json

    scan = ctx.out / "grid" / "scan"
    spec, source = None, "the grid's settings (no grid scan here)"
    if (scan / "scan.json").is_file():
        best = pipeline.collect(scan).best
        if best is not None:
            spec, source = (
                read_json(scan / "trials" / best.trial_id / "spec.json", TrialSpec),
                f"the grid's best, {best.trial_id}",
            )
    if spec is None:
        spec = default_phase_spec(ctx)
    checks = _phase_check(ctx, spec, paths.cache_dir())
    checks[0].detail += f" ({source})"
    return checks


def _phase_check(ctx: Ctx, spec, cache: Path) -> list[Check]:
    """The settings on one device, timed as a scan times them (CUDA events) and synchronizing around every phase."""
    from yoloprof.analysis import aggregate
    from yoloprof.scan import launch

    per_rank = dataclasses.replace(spec.knobs, batch=max(spec.knobs.batch // spec.world_size, 1))
    runs, ranks = {}, {}
    for sync in (False, True):
        one = dataclasses.replace(
            spec,
            trial_id=f"phase-{'synced' if sync else 'events'}",
            knobs=per_rank,
            world_size=1,
            gpus=[ctx.gpu] if ctx.cuda else [],
            sync_phases=sync,
            warmup_steps=5,
            measured_steps=20,
            max_steps=None,
            precision=None,
        )
        tdir = ctx.stage_dir / one.trial_id
        outcome = launch.run_trial(one, tdir, cache_dir=cache, should_stop=ctx.expired)
        ranks[one.trial_id] = aggregate.read_ranks(tdir)
        runs[sync] = aggregate.aggregate(one, ranks[one.trial_id], outcome)
    if any(r.status != "ok" or r.breakdown is None for r in runs.values()):
        return [
            Check(
                "phase times vs synchronized",
                False,
                "; ".join(f"{r.trial_id}: {r.status} {r.error or ''}" for r in runs.values()),
            )
        ]
    checks = [compare_phases(runs[False].breakdown, runs[True].breakdown)]
    timing = ("cuda_event", "cuda_sync") if ctx.cuda else ("host", "host")
    checks += steps_check({"phase-events": ranks["phase-events"]}, timing[0], " (events run)")
    checks += steps_check({"phase-synced": ranks["phase-synced"]}, timing[1], " (synced run)")
    return checks


OOM_SEARCH_MAX_BATCH = 512  # the built-in dataset's images: the largest batch that runs as asked on it


def _compute_point(ctx: Ctx, spec, folder: Path, cache: Path) -> tuple[ComputePoint, Optional[float]]:
    """One compute-probe trial as ceilings.compute runs it, stopped at the stage's limit."""
    from yoloprof.scan import ceilings

    point, r = ceilings.compute_point(spec, folder / spec.trial_id, cache_dir=cache, should_stop=ctx.expired)
    return point, r.device_mem_total_mib


def stage_oom_fit(ctx: Ctx) -> list[Check]:
    from yoloprof import paths
    from yoloprof.analysis.memory_fit import max_batch_fit
    from yoloprof.data import dataset
    from yoloprof.records import ComputeCeiling
    from yoloprof.scan import ceilings
    from yoloprof.search import plan

    p, cache = ctx.params, paths.cache_dir()
    # Ultralytics caps a batch at the dataset's size: the search stops at the built-in dataset's images (an
    # H200 fits a few dozen yolo11x images at 1280, and the search doubles from the fit up to 4x it)
    data = str(dataset.ensure(cache, dataset.SyntheticSpec(images=OOM_SEARCH_MAX_BATCH)))
    hw = plan.Hardware(p.device, 1, [ctx.gpu], os.cpu_count() or 1, 1)

    def specs(batch_list):
        return ceilings.compute_specs(
            hw,
            list(batch_list),
            [True],
            model=p.oom_model,
            data=data,
            imgsz=p.oom_imgsz,
            optimizer="SGD",
            warmup=2,
            steps=3,
        )

    points, total = [], None
    for spec in specs(p.oom_batches):
        pt, mem = _compute_point(ctx, spec, ctx.stage_dir / "probe", cache)
        points.append(pt)
        total = total or mem
    margin = ComputeCeiling(device="cuda", device_name="", device_mem_total_mib=total, points=[]).mem_margin_frac
    fit = max_batch_fit(points, total, margin) if total else None
    probe = Check(
        "compute probe points",
        all(x.status == "ok" for x in points),
        "; ".join(f"b{x.batch}: {x.status} {x.peak_mem_mib or 0:.0f} MiB {x.error or ''}".strip() for x in points)
        + f"; device {total or 0:.0f} MiB; fit {fit}",
        dict(points=[dataclasses.asdict(x) for x in points]),
    )
    if fit is None:
        return [probe, fit_against_oom(None, points)]
    batch, search = fit, []
    while (
        batch <= min(fit * 4, OOM_SEARCH_MAX_BATCH) and not ctx.expired()
    ):  # the fit must run; double until a batch runs out of memory
        pt, _ = _compute_point(ctx, specs([batch])[0], ctx.stage_dir / "search", cache)
        search.append(pt)
        if pt.status != "ok":
            break
        batch *= 2
    verdict = fit_against_oom(fit, points + search)
    verdict.figures["search"] = [
        dict(batch=x.batch, status=x.status, peak_mem_mib=x.peak_mem_mib, error=x.error) for x in search
    ]
    return [probe, verdict]


def stage_watch(ctx: Ctx) -> list[Check]:
    """`yoloprof train` watching a real run on the GPU (issue 23's CUDA branch): from the grid's best.yaml when
    the grid ran (so the run is compared with its prediction), else from the grid's settings; a few epochs."""
    import yaml

    p = ctx.params
    epochs = 3
    best = ctx.out / "grid" / "scan" / "best.yaml"
    if best.is_file():
        cfg = best
    else:
        data = ctx.stage_dir / "data"
        size = "640x480" if ctx.cuda else "160x120"
        images = str(4 * p.batch)
        ran = ctx.run(
            [sys.executable, "-m", "yoloprof", "dataset", "--out", str(data), "--images", images, "--size", size],
            "dataset",
        )
        if ran.returncode != 0:
            return [Check("dataset", False, ran.line("yoloprof dataset"))]
        cfg = ctx.stage_dir / "cfg.yaml"
        settings = dict(model=p.model, data=str(data / "data.yaml"), imgsz=p.imgsz, batch=p.batch, workers=p.workers)
        cfg.write_text(yaml.safe_dump(settings))
    where = ["--gpus", str(ctx.gpu)] if ctx.cuda else ["--nproc", "1", "device=cpu"]
    run_dir = ctx.stage_dir / "run"
    args = [f"epochs={epochs}", f"project={ctx.stage_dir}", "name=run", "exist_ok=True", "plots=False"]
    ran = ctx.run([sys.executable, "-m", "yoloprof", "train", str(cfg), *where, *args], "train")
    checks = [Check("train", ran.returncode == 0 and not ran.timed_out, ran.line("yoloprof train"))]
    checks += watch_check(run_dir, epochs, "cuda_event" if ctx.cuda else "host", [ctx.gpu] if ctx.cuda else [])
    summary = run_dir / "yoloprof" / "summary.json"
    verdict = json.loads(summary.read_text()).get("verdict") if summary.is_file() else None
    checks.append(Check("run summary", summary.is_file(), f"verdict: {verdict}" if verdict else "no summary.json"))
    return checks
