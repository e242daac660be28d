"""`yoloprof scan --resume DIR`: a scan's saved plan run again, only the trials without a result; the context
rebuilt from scan.json (the choices the scan made, not today's defaults)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from rich.console import Console

from yoloprof import nodes as nodes_mod, pipeline, paths
from yoloprof.analysis import doctor
from yoloprof.errors import UsageError
from yoloprof.records import Knobs, RecordError, ScanMeta, read_json
from yoloprof.scan import cluster, launch, orchestrate, preflight, request, runner
from yoloprof.scan.request import ScanRequest
from yoloprof.search import baselines, plan


def _saved_space(meta: ScanMeta) -> dict[str, list]:
    """The space an auto scan searched; knobs its version did not have keep Ultralytics' default."""
    defaults = {f.name: [f.default] for f in dataclasses.fields(Knobs) if f.default is not dataclasses.MISSING}
    return {**defaults, **meta.axes}


def resume(folder: str, req: ScanRequest, console: Console):
    """`yoloprof scan --resume DIR`: the saved plan, only the trials without a result."""
    out = Path(folder).expanduser()
    meta = pipeline.load_meta(out)
    if not meta.specs:
        raise UsageError(f"--resume {out}: scan.json holds no plan to resume")
    os.environ.update(launch.offline_env(paths.cache_dir()))
    os.environ["YOLO_VERBOSE"] = "False"
    from yoloprof.probes import environment

    env = environment.collect()
    if meta.device == "cpu" and any(s.knobs.compile != "off" for s in meta.specs):
        env = environment.with_compiler(env)
    if meta.device == "cuda":
        doctor.gate(preflight.readings(env, "cuda"))
        missing = [g for g in meta.gpus if g not in {x.index for x in env.gpus}]
        if missing:
            raise UsageError(f"--resume {out}: the scan ran on GPUs {meta.gpus}; GPU {missing[0]} is not visible now")
    hw = plan.Hardware(
        meta.device,
        meta.world_size,
        meta.gpus,
        env.cpu_count,
        len(env.gpus),
        bf16=request.bf16(env, meta.gpus),
        compile_blocker=request.compile_blocker(env, meta.device),
        nnodes=meta.nnodes,
    )
    nodes = nodes_mod.SINGLE
    if meta.nnodes > 1:  # node 0 leads again; the other nodes run their first command again
        if req.node_rank not in (None, 0):
            raise UsageError(f"--resume runs on node 0; on node {req.node_rank} run its first command again")
        nodes = nodes_mod.parse(meta.nnodes, 0, req.rdzv_endpoint or meta.rdzv_endpoint)
    axes = plan.Axes(**meta.axes)
    yours = meta.baselines.get(baselines.YOURS)
    ctx = orchestrate.Context(
        env,
        hw,
        "as the scan planned",
        plan.Plan(axes, [s.knobs for s in meta.specs]),
        meta.imgsz,
        meta.dataset,
        meta.model,
        strategy=meta.strategy,
        budget_s=meta.budget_s,
        precision=meta.precision,
        max_steps=meta.max_steps,
        given=_saved_space(meta) if meta.strategy == "auto" else {},
        baseline=next((s.knobs for s in meta.specs if s.trial_id == yours), None),
        train_cfg=meta.train_cfg,
        train_cfg_args=meta.train_cfg_args,
        nodes=nodes,
        optimizer=meta.optimizer_plan or meta.optimizer,  # the choice the scan made, resolved alike
        memory=meta.memory,
    )  # the fit the scan decided
    req = ScanRequest(
        optimizer=meta.optimizer,
        warmup=meta.warmup_steps,
        steps=meta.measured_steps,
        trial_timeout=req.trial_timeout,
        no_ceilings=req.no_ceilings,
        command=req.command,
        no_epoch_job=req.no_epoch_job,
        no_reuse=req.no_reuse,
        no_defaults=baselines.DEFAULTS not in meta.baselines,
    )
    todo = [s.trial_id for s in meta.specs if not _has_result(out, s.trial_id)]
    console.print(
        f"[bold]yoloprof scan --resume[/] {out}: {len(meta.specs) - len(todo)} of {len(meta.specs)} trials "
        f"have results; running {len(todo)}"
    )
    leader = None
    if nodes.multi:
        leader = cluster.lead(
            nodes,
            f"{out.name}-{os.getpid()}-{int(time.time())}",
            cluster.hello(hw, meta.dataset, meta.model, meta.imgsz),
            console,
        )
    with cluster.leading(leader):
        return orchestrate.finish(out, meta, ctx, req, console)


def _has_result(out: Path, trial_id: str) -> bool:
    path = paths.trial_dir(out, trial_id) / pipeline.RESULT_FILE
    try:
        return path.is_file() and read_json(path).get("status") not in runner.RESUMABLE
    except RecordError:
        return False
