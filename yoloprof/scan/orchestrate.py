"""`yoloprof scan`: check the input, plan, run each trial with torchrun, write every output.

Order matters for the user: everything that can be checked without running a trial is checked
first (flags, hardware, data, model, output folder), so a mistake costs one line, not a trial.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import __version__, outputs, paths
from yoloprof.search import baselines, plan, usercfg
from yoloprof.data import datainfo
from yoloprof.analysis import doctor
from yoloprof.scan import launch, preflight, runner
from yoloprof.data.dataset import SyntheticSpec, ensure
from yoloprof.errors import ScanFailed, UsageError
from yoloprof.records import DatasetInfo, Environment, RecordError, RunPlan, ScanMeta, read_json, write_json

DEFAULT_MODEL = "yolo11n.yaml"
DEFAULT_CPU_RANKS = 2
NO_TRIAL_OK = 1  # exit code of a scan that ran to the end without one trial finishing


@dataclass
class ScanRequest:
    gpus: Optional[str] = None
    device: Optional[str] = None  # "cpu" forces CPU ranks
    nproc: Optional[int] = None
    model: Optional[str] = None
    data: Optional[str] = None
    imgsz: Optional[int] = None
    optimizer: str = "SGD"
    warmup: int = 5
    steps: int = 20
    out: Optional[str] = None
    batch: Optional[str] = None
    workers: Optional[str] = None
    amp: Optional[str] = None
    pin_memory: Optional[str] = None
    cache: Optional[str] = None
    nccl: Optional[str] = None
    trial_timeout: Optional[float] = None
    no_ceilings: bool = False
    baseline: Optional[str] = None  # the user's current settings, "batch=32,workers=4,amp=off"
    no_defaults: bool = False
    ranks: Optional[str] = None  # world sizes to compare (scaling), e.g. "1,2,4"
    strategy: Optional[str] = None  # "auto" | "grid"; None: grid where knob lists are given, else auto
    budget: Optional[str] = None  # auto: "5m", "300s", "0.5h" or minutes
    precision: Optional[str] = None  # "3%", "0.03" or "off"
    max_steps: Optional[int] = None
    no_reuse: bool = False  # a torchrun launch per trial instead of rank pools
    cfg: Optional[str] = None  # the user's Ultralytics training config (what `yolo train cfg=` takes)
    epochs: Optional[int] = None  # the run to predict (default: the config's epochs, else Ultralytics' 100)
    gpu_hour_price: Optional[float] = None  # per GPU-hour (per rank-hour on CPU)
    currency: Optional[str] = None
    command: list[str] = field(default_factory=list)


DEFAULT_PRECISION = 0.03
MAX_STEPS_FACTOR = 3  # a trial measures at most 3x its minimum steps unless --max-steps says otherwise
DEFAULT_BUDGET_S = {"cpu": 300.0, "cuda": 600.0}


def parse_precision(text: Optional[str]) -> Optional[float]:
    if text is None:
        return DEFAULT_PRECISION
    if str(text).strip().lower() in ("off", "none", "0"):
        return None
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise UsageError(f"--precision {text}: give the interval's half-width as 3% or 0.03 (or off for fixed steps)")
    return value


def parse_budget(text: Optional[str], device: str) -> float:
    """Seconds; a bare number is minutes."""
    if text is None:
        return DEFAULT_BUDGET_S[device]
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--budget {text}: give a time such as 5m, 300s or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600, None: 60}[m.group(2)]


def resolve_strategy(req: ScanRequest, given: dict) -> str:
    if req.strategy not in (None, "auto", "grid"):
        raise UsageError(f"--strategy {req.strategy}: use auto (search within a budget) or grid (every combination)")
    if req.strategy is not None:
        return req.strategy
    return "grid" if any(v is not None for v in given.values()) or req.ranks else "auto"


def parse_axes(req: ScanRequest) -> dict[str, Optional[list]]:
    return {
        "batch": plan.parse_ints("--batch", req.batch, 1) if req.batch is not None else None,
        "workers": plan.parse_ints("--workers", req.workers, 0) if req.workers is not None else None,
        "amp": plan.parse_choices("--amp", req.amp, plan._BOOL) if req.amp is not None else None,
        "pin_memory": plan.parse_choices("--pin-memory", req.pin_memory, plan._BOOL) if req.pin_memory is not None else None,
        "cache": plan.parse_choices("--cache", req.cache, plan._CACHE) if req.cache is not None else None,
        "nccl": plan.parse_nccl(req.nccl) if req.nccl is not None else None,
    }  # fmt: skip


def resolve_run_plan(req: ScanRequest, cfg_args: Optional[dict] = None) -> RunPlan:
    """The run to predict: flags win over the user's config, which wins over Ultralytics' defaults."""
    from yoloprof.analysis.epoch import plan_run

    return plan_run(cfg_args, req.epochs, req.gpu_hour_price, req.currency)


def check_numbers(req: ScanRequest) -> None:
    if req.steps < 1:
        raise UsageError(f"--steps {req.steps}: measure at least 1 step (default 20)")
    if req.warmup < 0:
        raise UsageError(f"--warmup {req.warmup}: cannot be negative (default 5)")
    if req.imgsz is not None and req.imgsz < 32:
        raise UsageError(f"--imgsz {req.imgsz}: must be at least 32 (the model's largest stride)")
    if req.nproc is not None and req.nproc < 1:
        raise UsageError(f"--nproc {req.nproc}: run at least 1 rank")
    if req.trial_timeout is not None and req.trial_timeout <= 0:
        raise UsageError(f"--trial-timeout {req.trial_timeout}: give seconds > 0")
    if req.max_steps is not None and req.max_steps < req.steps:
        raise UsageError(f"--max-steps {req.max_steps}: must be at least --steps {req.steps} (the minimum)")


def resolve_hardware(req: ScanRequest, env: Environment) -> tuple[plan.Hardware, str]:
    visible = [g.index for g in env.gpus]
    if req.device not in (None, "cpu", "cuda", "gpu"):
        raise UsageError(f"--device {req.device}: use cpu, or --gpus to pick GPUs")
    if req.gpus is not None and req.device == "cpu":
        raise UsageError("--gpus and --device cpu contradict each other; give one of them")
    if req.gpus is not None:
        if not visible:
            raise UsageError(f"--gpus {req.gpus}: this machine has no GPU visible to torch; use --device cpu --nproc 2")
        gpus = plan.parse_ints("--gpus", req.gpus, 0)
        missing = [g for g in gpus if g not in visible]
        if missing:
            raise UsageError(f"--gpus {req.gpus}: GPU {missing[0]} is not there; visible GPUs are {','.join(map(str, visible))}")
        if req.nproc is not None and req.nproc != len(gpus):
            raise UsageError(f"--nproc {req.nproc} with --gpus {req.gpus}: on GPUs there is one rank per GPU; drop --nproc")
        why = f"GPUs {','.join(map(str, gpus))} as asked"
    elif req.device != "cpu" and visible:
        if req.nproc is not None:
            raise UsageError("--nproc is for CPU ranks; on GPUs pick them with --gpus 0,1")
        gpus, why = visible, f"every visible GPU ({len(visible)}), one rank each"
    else:
        if req.device in ("cuda", "gpu"):
            raise UsageError("--device cuda: this machine has no GPU visible to torch; use --device cpu")
        n = req.nproc or DEFAULT_CPU_RANKS
        hw = plan.Hardware("cpu", n, [], env.cpu_count, 0)
        return hw, f"{n} CPU ranks with gloo" + ("" if req.device == "cpu" else " (no GPU visible)")
    return plan.Hardware("cuda", len(gpus), gpus, env.cpu_count, len(visible)), f"{why}, NCCL"


def resolve_data(req: ScanRequest, console: Console) -> DatasetInfo:
    if req.data is not None:
        return datainfo.inspect(req.data)
    spec = SyntheticSpec()
    target = paths.cache_dir() / "datasets" / spec.key
    if not target.is_dir():
        console.print(f"Generating the built-in synthetic dataset ({spec.images} images, {spec.width}x{spec.height}) "
                      f"into {target} (once)...")  # fmt: skip
    return datainfo.inspect(ensure(paths.cache_dir(), spec))


def prepare_out(req: ScanRequest, kind: str = "scan") -> Path:
    if req.out is None:
        out = paths.next_run_dir(kind)
    else:
        out = Path(req.out).expanduser()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: is a file; give a new folder")
        if out.is_dir() and any(out.iterdir()):
            if (out / paths.SCAN_MARKER).is_file():
                raise UsageError(f"--out {out}: holds an earlier scan; give a new folder (or resume it with --resume)")
            raise UsageError(f"--out {out}: is not empty and not a yoloprof scan; give a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); give a writable folder") from None
    return out


def trial_deviations(hw: plan.Hardware, req: ScanRequest, steps: int, warmup: int,
                     precision: Optional[float] = None, max_steps: Optional[int] = None) -> list[str]:  # fmt: skip
    measured = (f"{steps} to {max_steps} measured iterations (until the 95% interval of its images/s is within "
                f"+-{100 * precision:.0f}%)" if precision and max_steps and max_steps > steps else f"{steps} measured iterations")
    out = [
        f"Each trial trains {warmup} warm-up + {measured}, then stops on the same step on every "
        "rank, without validation or checkpoints. Validation, checkpoint saving and the epoch end were timed "
        "separately, once per world size, with the recommended settings.",
        "Trials set close_mosaic=0 and warmup_epochs=0 to measure the steady state of training (mosaic on, full "
        "gradient accumulation, final learning-rate schedule), not its first or last epochs.",
        "Single node: trials cannot span nodes; a multi-node run adds inter-node links that were not measured.",
    ]
    if hw.device == "cpu":
        out.append(
            f"On CPU, plain `yolo train device=cpu` runs one process with workers=0; these trials ran {hw.world_size} "
            "gloo ranks with the workers shown, so the CPU figures show the measurement, not CPU training advice."
        )
    else:
        from probes.offline import AMP_CHECK_NOTE

        out.append(AMP_CHECK_NOTE + ".")
    return out


@dataclass
class Context:
    """Everything a scan or a probe needs, checked before any process is launched."""

    env: Environment
    hw: plan.Hardware
    hw_why: str
    plan: plan.Plan
    imgsz: int
    dataset: DatasetInfo
    model: str
    roles: dict = field(default_factory=dict)  # baseline role -> Knobs
    world_sizes: Optional[list[int]] = None  # several: a scaling scan
    strategy: str = "grid"
    budget_s: Optional[float] = None
    precision: Optional[float] = None
    max_steps: Optional[int] = None
    given: dict = field(default_factory=dict)  # the knob lists the user named (None: not named)
    baseline: Optional[object] = None  # the user's --baseline Knobs
    run_plan: RunPlan = field(default_factory=RunPlan)  # the training run to predict
    train_cfg: Optional[str] = None  # --cfg, absolute
    train_cfg_args: dict = field(default_factory=dict)  # its arguments, held in every trial


def prepare(req: ScanRequest, console: Console) -> Context:
    check_numbers(req)
    given = parse_axes(req)
    from probes import environment

    user_env = environment.safe_env()  # as the user set it, before we add ours
    os.environ.update(launch.offline_env(paths.cache_dir()))  # before anything imports ultralytics
    os.environ["YOLO_VERBOSE"] = "False"  # this process only: trials get YOLO_VERBOSE=True for their logs
    from probes import model_check

    if req.cfg and req.baseline:
        raise UsageError(f"--cfg {req.cfg} sets your settings from its batch, workers, amp and cache; drop --baseline")
    train_cfg, cfg_args = usercfg.read(req.cfg) if req.cfg else (None, {})
    usercfg.apply(req, cfg_args, req.cfg, usercfg.optimizer_flag(req))  # model, data, imgsz: the config's
    env = environment.collect(user_env)
    checks = preflight.readings(env, req.device)  # the doctor's cheap checks: no subprocess
    doctor.gate(checks)  # NVML sees GPUs that torch does not: stop, unless --device cpu
    on_cpu = req.device == "cpu" or (not env.gpus and req.gpus is None)
    if req.ranks is not None and req.nproc is None and on_cpu:  # CPU scaling: as many ranks as the largest size
        req.nproc = max(plan.parse_ints("--ranks", req.ranks, 1))
    hw, hw_why = resolve_hardware(req, env)
    world_sizes = plan.parse_world_sizes(req.ranks, hw) if req.ranks else None
    the_plan = plan.make_plan(hw, given)
    mine = baselines.from_cfg(cfg_args, hw, req.cfg) if req.cfg else (
        baselines.parse_baseline(req.baseline, hw) if req.baseline else None)  # fmt: skip
    roles = baselines.add(the_plan, hw, mine, with_defaults=not req.no_defaults)
    imgsz = req.imgsz or (640 if hw.device == "cuda" else 128)
    dataset = resolve_data(req, console)
    model = model_check.resolve(req.model or DEFAULT_MODEL, len(dataset.classes))
    run_plan = resolve_run_plan(req, cfg_args)
    if req.cfg and usercfg.optimizer_flag(req) is None:  # the config's optimizer, `auto` picked for its run
        req.optimizer = usercfg.optimizer(cfg_args, images=dataset.train_images, batch=mine.batch,
                                          epochs=run_plan.epochs)[0]  # fmt: skip
    preflight.before_scan(checks, hw, max(the_plan.axes.workers), console)  # on 2+ GPUs: a first NCCL AllReduce
    precision = parse_precision(req.precision)
    max_steps = req.max_steps or (req.steps * MAX_STEPS_FACTOR if precision else None)
    strategy = resolve_strategy(req, given)
    if strategy == "auto" and req.ranks:
        raise UsageError("--ranks compares world sizes over a grid; add --strategy grid")
    budget_s = parse_budget(req.budget, hw.device) if strategy == "auto" else None
    return Context(env, hw, hw_why, the_plan, imgsz, dataset, model, roles, world_sizes, strategy, budget_s,
                   precision, max_steps, given, mine, run_plan, train_cfg, cfg_args)  # fmt: skip


def run(req: ScanRequest, console: Console) -> tuple[outputs.ScanOutputs, Path, int]:
    """Returns the outputs, the scan folder and the exit code (0, NO_TRIAL_OK, or 128 + signal when interrupted)."""
    started = time.monotonic()
    ctx = prepare(req, console)
    hw, the_plan, dataset, model, imgsz = ctx.hw, ctx.plan, ctx.dataset, ctx.model, ctx.imgsz
    out = prepare_out(req)
    specs = [] if ctx.strategy == "auto" else plan.specs(
        the_plan, hw, model=model, data=dataset.data, imgsz=imgsz, optimizer=req.optimizer, warmup=req.warmup,
        steps=req.steps, world_sizes=ctx.world_sizes, precision=ctx.precision, max_steps=ctx.max_steps,
        overrides=usercfg.held(ctx.train_cfg_args))  # fmt: skip
    meta = ScanMeta(
        yoloprof_version=__version__,
        created_s=time.time(),
        command=req.command,
        device=hw.device,
        world_size=hw.world_size,
        gpus=hw.gpus,
        model=model,
        imgsz=imgsz,
        optimizer=req.optimizer,
        warmup_steps=req.warmup,
        measured_steps=req.steps,
        dataset=dataset,
        axes={k: list(v) for k, v in vars(the_plan.axes).items()},
        dropped=the_plan.dropped,
        trial_ids=[s.trial_id for s in specs],
        specs=specs,
        baselines={role: next(s.trial_id for s in specs if s.knobs == k and s.world_size == hw.world_size)
                   for role, k in ctx.roles.items()} if specs else {},  # auto: set when the search runs its start
        environment=ctx.env,
        trial_deviations=trial_deviations(hw, req, req.steps, req.warmup, ctx.precision, ctx.max_steps),
        strategy=ctx.strategy,
        budget_s=ctx.budget_s,
        precision=ctx.precision,
        max_steps=ctx.max_steps,
        run_plan=ctx.run_plan,
        train_cfg=ctx.train_cfg,
        train_cfg_args=ctx.train_cfg_args,
    )
    if usercfg.deviation(ctx.train_cfg_args):
        meta.trial_deviations.append(usercfg.deviation(ctx.train_cfg_args))
    write_json(out / paths.SCAN_MARKER, meta)
    console.print(f"[bold]yoloprof scan[/] -> {out}")
    console.print(f"  ranks: {ctx.hw_why}" + (f"; scaling over {ctx.world_sizes} ranks, same batch per rank"
                                               if ctx.world_sizes and len(ctx.world_sizes) > 1 else ""))
    measured = (f"{req.steps}-{ctx.max_steps} measured, until img/s is known within +-{100 * ctx.precision:.0f}%"
                if ctx.precision and ctx.max_steps and ctx.max_steps > req.steps else f"{req.steps} measured")
    console.print(f"  model: {model}   imgsz: {imgsz}   optimizer: {req.optimizer}   steps: {req.warmup} warm-up + {measured}")
    console.print(f"  data: {dataset.data} ({dataset.train_images} images{', synthetic: speed only' if dataset.synthetic else ''})")
    if ctx.train_cfg:
        for line in usercfg.summary(ctx.train_cfg, ctx.train_cfg_args, ctx.baseline, req.optimizer,
                                    images=dataset.train_images, epochs=ctx.run_plan.epochs):  # fmt: skip
            console.print(f"  {line}", markup=False, highlight=False)
    for d in the_plan.dropped:
        console.print(f"  [yellow]not tried[/]: {d}")
    for role, tid in meta.baselines.items():
        console.print(f"  baseline: {role} = {tid}")
    if ctx.strategy == "auto":
        console.print(f"  plan: auto, within {ctx.budget_s / 60:.1f} min: " + ("" if req.no_ceilings else
                      "the input, compute and link ceilings, then ") + "a search from Ultralytics' defaults"
                      + ("" if ctx.baseline is None else " and your settings") + ", then repeats of the contenders")
    else:
        console.print(f"  plan: {len(specs)} trials" + ("" if req.no_ceilings else ", then the input, compute and link ceilings"))
    return finish(out, meta, ctx, req, console, started)


def finish(out: Path, meta: ScanMeta, ctx: Context, req: ScanRequest, console: Console,
           started: Optional[float] = None):  # fmt: skip
    """Trials (those without a result), then ceilings, then every output; used by scan and --resume.
    The auto strategy measures its ceilings first (they prune its space)."""
    started = time.monotonic() if started is None else started
    policy = launch.HangPolicy(total_s=req.trial_timeout)
    try:
        if meta.strategy == "auto":
            from yoloprof.scan import auto

            code = auto.run(out, meta, ctx, req, console, started)
        else:
            code = runner.execute(out, meta.specs, meta, policy, console, reuse=not req.no_reuse)
    except runner.ScanStopped as exc:
        outputs.write_all(out)
        raise ScanFailed(str(exc)) from None
    if code == 0 and not req.no_ceilings and not (out / "ceilings" / "compute.json").is_file():
        if outputs.collect(out).ranking.best_trial_id is None:  # ceilings explain trials; none finished
            console.print("Ceilings: not run, since no trial finished (fix the trials' errors first).")
        else:
            run_ceilings(out / "ceilings", ctx, req, console, bucket_sizes=_measured_buckets(out, meta))
    if code == 0:  # validation, saving, epoch end: once per world size, none when no trial finished
        from yoloprof.scan import epoch_job

        epoch_job.run(out, meta, ctx, req, console)
    result = outputs.write_all(out)
    if code:
        console.print(f"[yellow]Interrupted[/]: what finished is written; resume with: yoloprof scan --resume {out}")
    elif result.ranking.best_trial_id is None:
        code = NO_TRIAL_OK  # everything is written; a script or CI job must still see that nothing was measured
    return result, out, code


def resume(folder: str, req: ScanRequest, console: Console):
    """`yoloprof scan --resume DIR`: the saved plan, only the trials without a result."""
    out = Path(folder).expanduser()
    meta = outputs.load_meta(out)
    if not meta.specs:
        raise UsageError(f"--resume {out}: scan.json holds no plan to resume")
    os.environ.update(launch.offline_env(paths.cache_dir()))
    os.environ["YOLO_VERBOSE"] = "False"
    from probes import environment

    env = environment.collect()
    if meta.device == "cuda":
        doctor.gate(preflight.readings(env, "cuda"))
        missing = [g for g in meta.gpus if g not in {x.index for x in env.gpus}]
        if missing:
            raise UsageError(f"--resume {out}: the scan ran on GPUs {meta.gpus}; GPU {missing[0]} is not visible now")
    hw = plan.Hardware(meta.device, meta.world_size, meta.gpus, env.cpu_count, len(env.gpus))
    axes = plan.Axes(**meta.axes)
    yours = meta.baselines.get(baselines.YOURS)
    ctx = Context(env, hw, "as the scan planned", plan.Plan(axes, [s.knobs for s in meta.specs]), meta.imgsz,
                  meta.dataset, meta.model, strategy=meta.strategy, budget_s=meta.budget_s, precision=meta.precision,
                  max_steps=meta.max_steps, given=dict(meta.axes) if meta.strategy == "auto" else {},
                  baseline=next((s.knobs for s in meta.specs if s.trial_id == yours), None),
                  train_cfg=meta.train_cfg, train_cfg_args=meta.train_cfg_args)  # fmt: skip
    req = ScanRequest(optimizer=meta.optimizer, warmup=meta.warmup_steps, steps=meta.measured_steps,
                      trial_timeout=req.trial_timeout, no_ceilings=req.no_ceilings, command=req.command,
                      no_reuse=req.no_reuse, no_defaults=baselines.DEFAULTS not in meta.baselines)  # fmt: skip
    todo = [s.trial_id for s in meta.specs if not _has_result(out, s.trial_id)]
    console.print(f"[bold]yoloprof scan --resume[/] {out}: {len(meta.specs) - len(todo)} of {len(meta.specs)} trials "
                  f"have results; running {len(todo)}")  # fmt: skip
    return finish(out, meta, ctx, req, console)


def _has_result(out: Path, trial_id: str) -> bool:
    path = paths.trial_dir(out, trial_id) / outputs.RESULT_FILE
    try:
        return path.is_file() and read_json(path).get("status") not in runner.RESUMABLE
    except RecordError:
        return False


def _measured_buckets(out: Path, meta: ScanMeta) -> list[int]:
    for tid in meta.trial_ids:
        r = outputs.trial_result(out, tid)
        if r is not None and r.bucket_sizes_bytes:
            return r.bucket_sizes_bytes
    return []


def run_ceilings(folder: Path, ctx: Context, req: ScanRequest, console: Console, *, bucket_sizes: list[int],
                 which: tuple[str, ...] = ("loader", "compute", "allreduce")) -> None:  # fmt: skip
    """The three ceilings for this scan's knobs: workers for input, batch x AMP for compute, presets for link."""
    from reports import terminal
    from yoloprof.scan import ceilings

    hw, axes, n = ctx.hw, ctx.plan.axes, max(ctx.hw.world_size, 1)
    if "loader" in which:
        console.print("Input ceiling: the dataloader alone, one loader per rank at once...")
        c = ceilings.loader(folder, data=ctx.dataset.data, model=ctx.model, imgsz=ctx.imgsz,
                            batch_per_rank=max(min(axes.batch) // n, 1), workers=axes.workers, ranks=n,
                            device=hw.device, cache=axes.cache[0], cache_dir=paths.cache_dir(), batches=req.steps,
                            pin_memory=axes.pin_memory, gpus=hw.gpus)  # fmt: skip
        console.print(terminal.loader_table(c))
    if "compute" in which:
        console.print("Compute ceiling: the training step on one device, batch already there...")
        specs = ceilings.compute_specs(hw, axes.batch, axes.amp, model=ctx.model, data=ctx.dataset.data,
                                       imgsz=ctx.imgsz, optimizer=req.optimizer, warmup=req.warmup, steps=req.steps)  # fmt: skip
        specs = usercfg.for_compute(specs, ctx.train_cfg_args, n)  # --cfg: its arguments hold here too
        gpu = next((g for g in ctx.env.gpus if hw.gpus and g.index == hw.gpus[0]), None)
        c = ceilings.compute(folder, specs, cache_dir=paths.cache_dir(), device_name=gpu.name if gpu else "cpu",
                             device_mem_total_mib=gpu.mem_total_mib if gpu else None)  # fmt: skip
        console.print(terminal.compute_table(c))
    if "allreduce" in which:
        if n < 2:
            console.print("Link ceiling: not measured (one rank runs no AllReduce).")
            return
        console.print("Link ceiling: AllReduce sweep on the scan's ranks...")
        for preset in axes.nccl:
            c = ceilings.allreduce(folder, hw=hw, preset=preset, bucket_sizes=bucket_sizes, cache_dir=paths.cache_dir())
            console.print(terminal.allreduce_table(c))


def run_probe(kind: str, req: ScanRequest, console: Console) -> Path:
    """`yoloprof probe loader|compute|allreduce`: one ceiling, standalone, into runs/yoloprof/probe-N."""
    ctx = prepare(req, console)
    out = prepare_out(req, kind="probe")
    console.print(f"[bold]yoloprof probe {kind}[/] -> {out}   ({ctx.hw_why}; model {ctx.model}, imgsz {ctx.imgsz})")
    buckets = []
    if kind == "allreduce":
        from probes import model_check

        buckets = model_check.ddp_bucket_sizes(ctx.model, len(ctx.dataset.classes))
    run_ceilings(out, ctx, req, console, bucket_sizes=buckets, which=(kind,))
    return out
