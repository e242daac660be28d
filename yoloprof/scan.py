"""`yoloprof scan`: check the input, plan, run each trial with torchrun, write every output.

Order matters for the user: everything that can be checked without running a trial is checked
first (flags, hardware, data, model, output folder), so a mistake costs one line, not a trial.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import __version__, aggregate, datainfo, launch, outputs, paths, plan
from yoloprof.console import ScanProgress
from yoloprof.dataset import SyntheticSpec, ensure
from yoloprof.errors import UsageError
from yoloprof.records import DatasetInfo, Environment, ScanMeta, TrialSpec, write_json

DEFAULT_MODEL = "yolo11n.yaml"
DEFAULT_CPU_RANKS = 2


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
    command: list[str] = field(default_factory=list)


def parse_axes(req: ScanRequest) -> dict[str, Optional[list]]:
    return {
        "batch": plan.parse_ints("--batch", req.batch, 1) if req.batch is not None else None,
        "workers": plan.parse_ints("--workers", req.workers, 0) if req.workers is not None else None,
        "amp": plan.parse_choices("--amp", req.amp, plan._BOOL) if req.amp is not None else None,
        "pin_memory": plan.parse_choices("--pin-memory", req.pin_memory, plan._BOOL) if req.pin_memory is not None else None,
        "cache": plan.parse_choices("--cache", req.cache, plan._CACHE) if req.cache is not None else None,
        "nccl": plan.parse_nccl(req.nccl) if req.nccl is not None else None,
    }  # fmt: skip


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


def prepare_out(req: ScanRequest) -> Path:
    if req.out is None:
        out = paths.next_scan_dir()
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


def trial_deviations(hw: plan.Hardware, req: ScanRequest, steps: int, warmup: int) -> list[str]:
    out = [
        f"Each trial trains {warmup} warm-up + {steps} measured iterations, then stops on the same step on every "
        "rank, without validation or checkpoints.",
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
        from yoloprof.worker.offline import AMP_CHECK_NOTE

        out.append(AMP_CHECK_NOTE + ".")
    return out


def _tail_logs(tdir: Path, result) -> list[str]:
    tails = []
    for log in sorted(tdir.glob("rank*.log")):
        lines = aggregate.log_tail(log, 12)
        if lines:
            tails += [f"[{log.stem}] {line}" for line in lines]
    return tails or [f"[launcher] {line}" for line in aggregate.log_tail(tdir / "launcher.log", 12)]


class _StopFlag:
    """SIGINT/SIGTERM end the running trial cleanly; the scan then writes what finished."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._saved = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def run(req: ScanRequest, console: Console) -> tuple[outputs.ScanOutputs, Path, int]:
    """Returns the outputs, the scan folder and the exit code (0, or 128 + signal when interrupted)."""
    check_numbers(req)
    given = parse_axes(req)
    from probes import environment

    user_env = environment.safe_env()  # as the user set it, before we add ours
    os.environ.update(launch.offline_env(paths.cache_dir()))  # before anything imports ultralytics
    from probes import model_check

    env = environment.collect(user_env)
    hw, hw_why = resolve_hardware(req, env)
    the_plan = plan.make_plan(hw, given)
    imgsz = req.imgsz or (640 if hw.device == "cuda" else 128)
    for b in the_plan.axes.batch:
        if b < hw.world_size:
            raise UsageError(f"--batch {b} is smaller than the {hw.world_size} ranks; each rank needs at least one image")
    dataset = resolve_data(req, console)
    model = model_check.resolve(req.model or DEFAULT_MODEL, len(dataset.classes))
    out = prepare_out(req)
    specs = plan.specs(the_plan, hw, model=model, data=dataset.data, imgsz=imgsz, optimizer=req.optimizer,
                       warmup=req.warmup, steps=req.steps)  # fmt: skip
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
        environment=env,
        trial_deviations=trial_deviations(hw, req, req.steps, req.warmup),
    )
    write_json(out / paths.SCAN_MARKER, meta)
    console.print(f"[bold]yoloprof scan[/] -> {out}")
    console.print(f"  ranks: {hw_why}")
    console.print(f"  model: {model}   imgsz: {imgsz}   optimizer: {req.optimizer}   steps: {req.warmup} warm-up + {req.steps} measured")
    console.print(f"  data: {dataset.data} ({dataset.train_images} images{', synthetic: speed only' if dataset.synthetic else ''})")
    for d in the_plan.dropped:
        console.print(f"  [yellow]not tried[/]: {d}")
    console.print(f"  plan: {len(specs)} trials")
    code = execute(out, specs, meta, req, console)
    result = outputs.write_all(out)
    return result, out, code


def execute(out: Path, specs: list[TrialSpec], meta: ScanMeta, req: ScanRequest, console: Console) -> int:
    timeout = req.trial_timeout or 1800.0
    with _StopFlag() as stop, ScanProgress(console, len(specs)) as progress:
        for i, spec in enumerate(specs, start=1):
            tdir = paths.trial_dir(out, spec.trial_id)
            progress.start(i, spec, tdir)
            outcome = launch.run_trial(
                spec, tdir, cache_dir=paths.cache_dir(), timeout_s=timeout,
                on_poll=progress.poll, should_stop=lambda: stop.signum is not None,
            )  # fmt: skip
            write_json(tdir / outputs.LAUNCH_FILE, outcome)
            result = aggregate.aggregate(spec, aggregate.read_ranks(tdir), outcome)
            if result.status != "ok":
                result.stderr_tail = _tail_logs(tdir, result)
            write_json(tdir / outputs.RESULT_FILE, result)
            progress.done(result)
            if stop.signum is not None:
                console.print(f"[yellow]Interrupted[/]: the results so far are in {out}.")
                return 128 + stop.signum
    return 0
