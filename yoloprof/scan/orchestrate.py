"""`yoloprof scan`: check the input, plan, run each trial with torchrun, write every output.

Order matters for the user: everything that can be checked without running a trial is checked
first (flags, hardware, data, model, output folder), so a mistake costs one line, not a trial.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from rich.console import Console

from yoloprof import __version__, nodes as nodes_mod, pipeline, paths
from yoloprof.data.dataset import images_for
from yoloprof.search import baselines, plan, space, usercfg
from yoloprof.analysis import dataset_fit, doctor, optimizer as optim
from yoloprof.scan import cluster, launch, preflight, runner
from yoloprof.scan.ceiling_runs import disk_too, run_ceilings  # noqa: F401 - disk_too: re-exported for tests
from yoloprof.errors import ScanFailed, UsageError
from yoloprof.records import (
    DatasetInfo,
    Environment,
    Knobs,
    MemoryBudget,
    OptimizerPlan,
    RunPlan,
    ScanMeta,
    TrialSpec,
    write_json,
)

from yoloprof.scan.request import (  # noqa: F401 - the scan's input checks, re-exported for the CLI and tests
    DEFAULT_MODEL,
    MAX_STEPS_FACTOR,
    ScanRequest,
    check_numbers,
    parse_axes,
    parse_budget,
    parse_precision,
    prepare_out,
    resolve_data,
    resolve_hardware,
    resolve_memory,
    resolve_run_plan,
    resolve_strategy,
)

NO_TRIAL_OK = 1  # exit code of a scan that ran to the end without one trial finishing


def nodes_line(hw: plan.Hardware) -> str:
    if hw.nnodes == 1:
        return "Single node: trials cannot span nodes; a multi-node run adds inter-node links that were not measured."
    return (
        f"{hw.nnodes} nodes: each trial of {hw.world_size} ranks ran one torchrun per node ({hw.per_node} ranks each), "
        "joined by torchrun's c10d rendezvous; the GPU and CPU telemetry shown is node 0's (the other nodes' "
        "samples are kept under trials/<id>/nodes/)."
    )


def trial_deviations(
    hw: plan.Hardware,
    req: ScanRequest,
    steps: int,
    warmup: int,
    precision: Optional[float] = None,
    max_steps: Optional[int] = None,
) -> list[str]:
    measured = (
        f"{steps} to {max_steps} measured iterations (until the 95% interval of its images/s is within "
        f"+-{100 * precision:.0f}%)"
        if precision and max_steps and max_steps > steps
        else f"{steps} measured iterations"
    )
    out = [
        f"Each trial trains {warmup} warm-up + {measured}, then stops on the same step on every "
        "rank, without validation or checkpoints. Validation, checkpoint saving and the epoch end were timed "
        "separately, once per world size, with the recommended settings.",
        "Trials set close_mosaic=0 and warmup_epochs=0 to measure the steady state of training (mosaic on, full "
        "gradient accumulation, final learning-rate schedule), not its first or last epochs.",
        nodes_line(hw),
    ]
    if hw.device == "cpu":
        out.append(
            f"On CPU, plain `yolo train device=cpu` runs one process with workers=0; these trials ran {hw.world_size} "
            "gloo ranks with the workers shown, so the CPU figures show the measurement, not CPU training advice."
        )
    else:
        from yoloprof.probes.offline import AMP_CHECK_NOTE

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
    nodes: nodes_mod.Nodes = nodes_mod.SINGLE
    # what the trials run: the scan's OptimizerPlan (auto resolved per trial), or a name (scans from before it)
    optimizer: Union[OptimizerPlan, str, None] = None
    batches: list[int] = field(default_factory=list)  # every global batch the scan may run (the optimizer line)
    memory: Optional[MemoryBudget] = None  # what the dataset-fit test uses (psutil, the cgroup, or --mem-limit)

    def fit(self) -> dataset_fit.DatasetFit:
        return dataset_fit.decide(self.dataset, self.memory, self.imgsz, self.hw.world_size)

    def trial_args(self, req: ScanRequest) -> dict:
        """What every trial and probe of this scan trains: the model, data, image size, optimizer and steps."""
        return dict(
            model=self.model,
            data=self.dataset.data,
            imgsz=self.imgsz,
            optimizer=self.optimizer,
            warmup=req.warmup,
            steps=req.steps,
        )


def prepare(req: ScanRequest, console: Console) -> Context:
    check_numbers(req)
    given = parse_axes(req)
    memory = resolve_memory(req)  # a bad --mem-limit: one line now
    from yoloprof.probes import environment

    user_env = environment.safe_env()  # as the user set it, before we add ours
    os.environ.update(launch.offline_env(paths.cache_dir()))  # before anything imports ultralytics
    os.environ["YOLO_VERBOSE"] = "False"  # this process only: trials get YOLO_VERBOSE=True for their logs
    from yoloprof.probes import model_check

    if req.cfg and req.baseline:
        raise UsageError(f"--cfg {req.cfg} sets your settings from its batch, workers, amp and cache; drop --baseline")
    train_cfg, cfg_args = usercfg.read(req.cfg) if req.cfg else (None, {})
    usercfg.apply(req, cfg_args, req.cfg, usercfg.optimizer_flag(req))  # model, data, imgsz: the config's
    usercfg.optimizer_asked(usercfg.optimizer_flag(req), cfg_args)  # a name Ultralytics does not know: one line now
    env = environment.collect(user_env)
    checks = preflight.readings(env, req.device)  # the doctor's cheap checks: no subprocess
    doctor.gate(checks)  # NVML sees GPUs that torch does not: stop, unless --device cpu
    on_cpu = req.device == "cpu" or (not env.gpus and req.gpus is None)
    if on_cpu and compile_asked(given, cfg_args, req.baseline):  # else no trial compiles: skip inductor's import
        env = environment.with_compiler(env)
    nodes = nodes_mod.parse(req.nnodes, req.node_rank, req.rdzv_endpoint)
    if req.ranks is not None and req.nproc is None and on_cpu:  # CPU scaling: as many ranks as the largest size
        req.nproc = max(max(plan.parse_ints("--ranks", req.ranks, 1)) // nodes.nnodes, 1)
    hw, hw_why = resolve_hardware(req, env)
    local_hw = hw
    if nodes.multi:  # every node runs as many ranks as this one: the plan counts all of them
        hw = dataclasses.replace(hw, world_size=hw.world_size * nodes.nnodes, nnodes=nodes.nnodes)
        hw_why += f" on each of {nodes.nnodes} nodes: {hw.world_size} ranks"
    world_sizes = plan.parse_world_sizes(req.ranks, hw) if req.ranks else None
    the_plan = plan.make_plan(hw, given)
    mine = (
        baselines.from_cfg(cfg_args, hw, req.cfg)
        if req.cfg
        else (baselines.parse_baseline(req.baseline, hw) if req.baseline else None)
    )
    strategy = resolve_strategy(req, given)
    imgsz = req.imgsz or (640 if hw.device == "cuda" else 128)
    # the built-in dataset holds enough images for the largest batch the scan may run (dataset.images_for)
    batches = planned_batches(hw, given, strategy, the_plan, mine, with_defaults=not req.no_defaults)
    dataset = resolve_data(req, console, images=images_for(max(batches)))
    # a batch the dataset cannot run as asked (Ultralytics caps it at the dataset, DDP at a rank's shard) is not
    # planned; the baselines still run whatever they ask, as references, and their notes say what ran
    if strategy == "grid":
        plan.drop_over_the_data(the_plan, hw, dataset.train_images, flag=given.get("batch") is not None)
    elif given.get("batch"):
        space.auto_space(hw, given, train_images=dataset.train_images)  # one line now if no batch given can run
    roles = baselines.add(the_plan, hw, mine, with_defaults=not req.no_defaults)
    model = model_check.resolve(req.model or DEFAULT_MODEL, len(dataset.classes))
    usercfg.check_task(cfg_args, dataset.task, model, req.cfg)
    run_plan = resolve_run_plan(req, cfg_args)
    # --optimizer, the config's, else Ultralytics' auto: picked per trial for the planned run, not a trial's few steps
    optimizer = usercfg.optimizer_plan(
        usercfg.optimizer_flag(req), cfg_args, images=dataset.train_images, epochs=run_plan.epochs, nbs=run_plan.nbs
    )
    req.optimizer = optimizer.asked
    preflight.before_scan(checks, local_hw, max(the_plan.axes.workers), console)  # on 2+ GPUs: a first NCCL AllReduce
    precision = parse_precision(req.precision)
    max_steps = req.max_steps or (req.steps * MAX_STEPS_FACTOR if precision else None)
    if strategy == "auto" and req.ranks:
        raise UsageError("--ranks compares world sizes over a grid; add --strategy grid")
    budget_s = parse_budget(req.budget, hw.device) if strategy == "auto" else None
    return Context(
        env,
        hw,
        hw_why,
        the_plan,
        imgsz,
        dataset,
        model,
        roles,
        world_sizes,
        strategy,
        budget_s,
        precision,
        max_steps,
        given,
        mine,
        run_plan,
        train_cfg,
        cfg_args,
        nodes,
        optimizer,
        batches=sorted(set(batches)),
        memory=memory,
    )


def compile_asked(given: dict, cfg_args: dict, baseline: Optional[str]) -> bool:
    """A trial may compile: --compile names a mode, or your settings (--cfg, --baseline) compile. An auto scan on
    CPU never tries compile unasked (space.auto_space), so the C++ compiler is looked for only then."""
    modes = given.get("compile") or []
    return any(m != "off" for m in modes) or bool(cfg_args.get("compile")) or "compile" in (baseline or "")


def planned_batches(
    hw: plan.Hardware, given: dict, strategy: str, the_plan: plan.Plan, mine: Optional[Knobs], with_defaults: bool
) -> list[int]:
    """Every global batch the scan may run, known before its data: the grid's list or the auto space's values,
    the user's settings and Ultralytics' defaults. The compute probe runs the same batches per rank."""
    out = list(space.batch_values(hw, given) if strategy == "auto" else the_plan.axes.batch)
    out += [mine.batch] if mine is not None else []
    return out + ([baselines.ultralytics_defaults(hw).batch] if with_defaults else [])


def run(req: ScanRequest, console: Console) -> tuple[pipeline.ScanOutputs, Path, int]:
    """Returns the outputs, the scan folder and the exit code (0, NO_TRIAL_OK, or 128 + signal when interrupted)."""
    started = time.monotonic()
    ctx = prepare(req, console)
    out = prepare_out(req)
    hello = cluster.hello(ctx.hw, ctx.dataset, ctx.model, ctx.imgsz)
    leader = lead(ctx.nodes, out, hello, console) if ctx.nodes.multi else None
    specs = [] if ctx.strategy == "auto" else _grid_specs(req, ctx)  # auto proposes its trials as it searches
    meta = _meta(req, ctx, specs)
    write_json(out / paths.SCAN_MARKER, meta)
    _announce(console, req, ctx, meta, out)
    with cluster.leading(leader):
        return finish(out, meta, ctx, req, console, started)


def _grid_specs(req: ScanRequest, ctx: Context) -> list[TrialSpec]:
    """The grid's trials: the plan's knob product at each world size."""
    return plan.specs(
        ctx.plan,
        ctx.hw,
        **ctx.trial_args(req),
        world_sizes=ctx.world_sizes,
        precision=ctx.precision,
        max_steps=ctx.max_steps,
        overrides=usercfg.held(ctx.train_cfg_args),
    )


def _meta(req: ScanRequest, ctx: Context, specs: list[TrialSpec]) -> ScanMeta:
    """scan.json as the scan starts: what was asked, the machine, the plan and (grid) every trial."""
    hw, dataset = ctx.hw, ctx.dataset
    meta = ScanMeta(
        yoloprof_version=__version__,
        created_s=time.time(),
        command=req.command,
        device=hw.device,
        world_size=hw.world_size,
        gpus=hw.gpus,
        model=ctx.model,
        imgsz=ctx.imgsz,
        optimizer=req.optimizer,  # what was asked ("auto" by default); each spec names its trial's optimizer
        warmup_steps=req.warmup,
        measured_steps=req.steps,
        dataset=dataset,
        axes={k: list(v) for k, v in vars(ctx.plan.axes).items()},
        dropped=ctx.plan.dropped,
        trial_ids=[s.trial_id for s in specs],
        specs=specs,
        baselines={
            role: next(s.trial_id for s in specs if s.knobs == k and s.world_size == hw.world_size)
            for role, k in ctx.roles.items()
        }
        if specs
        else {},  # auto: set when the search runs its start
        environment=ctx.env,
        trial_deviations=trial_deviations(hw, req, req.steps, req.warmup, ctx.precision, ctx.max_steps),
        strategy=ctx.strategy,
        budget_s=ctx.budget_s,
        precision=ctx.precision,
        max_steps=ctx.max_steps,
        run_plan=ctx.run_plan,
        train_cfg=ctx.train_cfg,
        train_cfg_args=ctx.train_cfg_args,
        nnodes=hw.nnodes,
        rdzv_endpoint=ctx.nodes.endpoint if ctx.nodes.multi else None,
        task=dataset.task,  # the model's task: the data was read for it
        optimizer_plan=ctx.optimizer,
        memory=ctx.memory,
    )
    if usercfg.deviation(ctx.train_cfg_args):
        meta.trial_deviations.append(usercfg.deviation(ctx.train_cfg_args))
    return meta


def _announce(console: Console, req: ScanRequest, ctx: Context, meta: ScanMeta, out: Path) -> None:
    """The scan's opening lines: where it writes, the ranks, the model, the data, the memory and the plan."""
    specs, dataset, model = meta.specs, ctx.dataset, ctx.model
    console.print(f"[bold]yoloprof scan[/] -> {out}")
    console.print(
        f"  ranks: {ctx.hw_why}"
        + (
            f"; scaling over {ctx.world_sizes} ranks, same batch per rank"
            if ctx.world_sizes and len(ctx.world_sizes) > 1
            else ""
        )
    )
    measured = (
        f"{req.steps}-{ctx.max_steps} measured, until img/s is known within +-{100 * ctx.precision:.0f}%"
        if ctx.precision and ctx.max_steps and ctx.max_steps > req.steps
        else f"{req.steps} measured"
    )
    console.print(f"  model: {model} ({dataset.task})   imgsz: {ctx.imgsz}   steps: {req.warmup} warm-up + {measured}")
    batches = sorted({s.knobs.batch for s in specs}) if specs else ctx.batches
    console.print(f"  optimizer: {optim.describe(ctx.optimizer, batches)}", markup=False, highlight=False)
    console.print(
        f"  data: {dataset.data} ({dataset.train_images} images{', synthetic: speed only' if dataset.synthetic else ''})"
    )
    console.print(f"  memory: {dataset_fit.summary(ctx.fit())}", markup=False, highlight=False)
    if ctx.train_cfg:
        for line in usercfg.summary(ctx.train_cfg, ctx.train_cfg_args, ctx.baseline):
            console.print(f"  {line}", markup=False, highlight=False)
    for d in ctx.plan.dropped:
        console.print(f"  [yellow]not tried[/]: {d}")
    for role, tid in meta.baselines.items():
        console.print(f"  baseline: {role} = {tid}")
    if ctx.strategy == "auto":
        console.print(
            f"  plan: auto, within {ctx.budget_s / 60:.1f} min: "
            + ("" if req.no_ceilings else "the input, compute and link ceilings, then ")
            + "a search from Ultralytics' defaults"
            + ("" if ctx.baseline is None else " and your settings")
            + ", then repeats of the contenders"
        )
    else:
        console.print(
            f"  plan: {len(specs)} trials" + ("" if req.no_ceilings else ", then the input, compute and link ceilings")
        )


def lead(nodes: nodes_mod.Nodes, out: Path, me: dict, console: Console):
    """Node 0 of several: wait for the others; a scan that cannot start leaves no folder behind."""
    try:
        return cluster.lead(nodes, f"{out.name}-{os.getpid()}-{int(time.time())}", me, console)
    except BaseException:
        if not any(out.iterdir()):
            out.rmdir()
        raise


def follow(req: ScanRequest, console: Console) -> int:
    """Nodes 1..N-1 of a multi-node scan: the same checks as node 0, then its plan, launch by launch."""
    from yoloprof.scan import follow as follower

    return follower.run(prepare(req, console), req, console)


def finish(
    out: Path, meta: ScanMeta, ctx: Context, req: ScanRequest, console: Console, started: Optional[float] = None
):
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
        pipeline.write_all(out)
        raise ScanFailed(str(exc)) from None
    if code == 0 and not req.no_ceilings and not (out / "ceilings" / "compute.json").is_file():
        if pipeline.collect(out).ranking.best_trial_id is None:  # ceilings explain trials; none finished
            console.print("Ceilings: not run, since no trial finished (fix the trials' errors first).")
        else:
            run_ceilings(out / "ceilings", ctx, req, console, bucket_sizes=_measured_buckets(out, meta))
    if (
        code == 0 and not req.no_epoch_job
    ):  # validation, saving, epoch end: once per world size, none when no trial finished
        from yoloprof.scan import epoch_job

        epoch_job.run(out, meta, ctx, req, console)
    result = pipeline.write_all(out)
    if code:
        console.print(f"[yellow]Interrupted[/]: what finished is written; resume with: yoloprof scan --resume {out}")
    elif result.ranking.best_trial_id is None:
        code = NO_TRIAL_OK  # everything is written; a script or CI job must still see that nothing was measured
    return result, out, code


def _measured_buckets(out: Path, meta: ScanMeta) -> list[int]:
    for tid in meta.trial_ids:
        r = pipeline.trial_result(out, tid)
        if r is not None and r.bucket_sizes_bytes:
            return r.bucket_sizes_bytes
    return []
