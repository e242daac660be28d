"""One rank: `python -m torch.distributed.run ... -m yoloprof.worker SPEC.json` runs one trial,
`... -m yoloprof.worker --pool DIR` runs the trials the scan hands it, one after another.

Per trial it writes trials/<id>/rank<r>.jsonl (a RankInfo line, a StepSample line per step, in
"epoch" mode a RankEpochParts line, a RankEnd line) and sends everything the rank prints to
trials/<id>/rank<r>.log.

A pool keeps what is costly and trial-independent (imports, the process group, the CUDA context)
and builds everything a trial measures afresh: trainer, model, optimizer, dataloader and its
workers, DDP wrapper, probes, memory peaks. A rank whose trial did not end `ok` leaves the pool
(exit 1): torchrun then stops its peers, and the scan launches a new pool, so no trial ever runs
in a process whose state a failure may have spoiled.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from yoloprof.records import RankEnd, RankInfo, TrialSpec, read_json, to_dict
from yoloprof.paths import COMPILE_CACHE
from yoloprof.nodes import SCAN_NODE_ENV
from yoloprof.text import error_line


class RankWriter:
    def __init__(self, path: Path):
        self._f = open(path, "a", buffering=1)

    def write(self, kind: str, record) -> None:
        self._f.write(json.dumps({"kind": kind, **to_dict(record)}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _redirect_output(log: Path) -> None:
    """At the file-descriptor level, so C++ warnings and DataLoader workers land in the log too."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


# What Ultralytics' trainer (engine/trainer.py, the OOM retry) counts as running out of device memory besides
# "out of memory": cuBLAS failing to allocate its workspace, and cuDNN finding no convolution plan whose
# workspace fits ("unable to find an engine"; CUDNN_STATUS_INTERNAL_ERROR near the limit).
MEMORY_ERRORS = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_INTERNAL_ERROR", "unable to find an engine")


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    return (
        isinstance(exc, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text.lower()
        or "can't allocate memory" in text.lower()  # the CPU allocator
        or any(s in text for s in MEMORY_ERRORS)
    )


def _quietly(fn):
    """fn(), or None if it raises: for clean-up on a device that may be broken."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return None


def start_device(spec: TrialSpec):
    """The rank's device, before anything touches it: its GPU made current and CUDA initialised
    (probes.memory.start), the trial's memory peaks reset, and the clock that times its steps."""
    import torch

    from yoloprof.probes import memory
    from yoloprof.probes.clock import Clock

    local = int(os.environ.get("LOCAL_RANK", "0"))
    memory.start(torch.device("cuda", spec.gpus[local]) if spec.device == "cuda" and spec.gpus else None)
    return Clock(cuda=spec.device == "cuda", sync=spec.sync_phases)


def run(spec: TrialSpec, trial_dir: Path, writer: RankWriter, rank: int, pooled: bool = False) -> RankEnd:
    """One trial in this rank: the device first, then Ultralytics' trainer with the probes attached, until the
    trial's steps are done or it fails; every failure becomes the end record's status and error."""
    from yoloprof.probes import offline
    from yoloprof.probes.steps import StepProbe
    from yoloprof.worker import faults
    from yoloprof.worker.tasks import trainer_for
    from yoloprof.worker.trainer import TrialComplete

    offline.patch_ultralytics()
    clock = start_device(spec)
    steady: list[tuple[int, float]] = []  # (images, step_ms) of measured steady steps: the stopping rule's input
    probe = StepProbe(rank, spec.warmup_steps, clock, _sink(spec, writer, steady))
    trainer = None
    status, error = "ok", None
    try:
        faults.maybe_fail(0, rank, spec.trial_id, setup=True)
        if spec.knobs.compile != "off":  # compiled cold, as on a machine's first run (the scan removes it after)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(trial_dir / COMPILE_CACHE)
            os.environ["TRITON_CACHE_DIR"] = str(trial_dir / COMPILE_CACHE / "triton")
        trainer_cls = trainer_for(spec.model)  # the model's task's trainer: detect, segment, pose, obb, classify
        trainer = trainer_cls(
            spec,
            probe,
            str(trial_dir),
            lambda t: writer.write("info", rank_info(t, spec, rank)),
            lambda t: faults.maybe_fail(probe.steps_started - 1, rank, spec.trial_id, clock=clock),
            precise=lambda: _precise(spec, steady),
        )
        trainer.train()
        status, error = "error", "training ended before the planned steps"
    except TrialComplete:
        if trainer.epoch_parts is not None:
            writer.write("epoch_parts", trainer.epoch_parts)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        traceback.print_exc()
        status, error = ("oom" if _is_oom(exc) else "error"), error_line(exc)
        # After a sticky CUDA error every device query raises again: nothing below may raise, or the
        # rank would end without its end record and the report would not know why.
        probe.flush_after_failure()
    end = _end(trainer, probe, rank, status, error, pooled)
    if pooled:  # the next trial must not inherit this one's model, optimizer or cached blocks
        device = trainer.device if trainer is not None else None
        del trainer
        gc.collect()
        if device is not None and device.type == "cuda":
            import torch

            _quietly(torch.cuda.empty_cache)
    return end


def _sink(spec: TrialSpec, writer: RankWriter, steady: list):
    """Where the probe's step samples go: the rank's records, and the stopping rule's steady steps. In "epoch"
    mode the steps after close_mosaic are marked without mosaic, and each loader restart's first steps as warm-up."""
    from yoloprof.worker.trainer import epoch_plan

    plan = epoch_plan(spec) if spec.mode == "epoch" else None

    def sink(s) -> None:
        if plan is not None and plan.off <= s.step < plan.back:  # "epoch" mode: the steps after close_mosaic,
            s.mosaic, s.warmup = False, s.warmup or s.step < plan.steady_off  # the loader's restart as warm-up
        elif plan is not None and plan.back <= s.step < plan.steady_back:  # mosaic reopened: restarted again
            s.warmup = True
        writer.write("step", s)
        if not s.warmup and not s.epoch_boundary:
            steady.append((s.images, s.step_ms))

    return sink


def rank_info(t, spec: TrialSpec, rank: int) -> RankInfo:
    """What the rank runs, as Ultralytics built it (the trainer's on_ready): loader, AMP, accumulate, threads,
    compile, determinism, memory format, optimizer."""
    import torch
    import torch.distributed as dist

    from yoloprof.worker.trainer import is_channels_last, is_compiled

    loader = t.train_loader
    ddp = t.model if isinstance(t.model, torch.nn.parallel.DistributedDataParallel) else None
    return RankInfo(
        rank=rank,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=spec.world_size,
        pid=os.getpid(),
        hostname=socket.gethostname(),
        device=str(t.device),
        device_name=torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else "cpu",
        backend=dist.get_backend() if dist.is_initialized() else None,
        batch_per_rank=loader.batch_size,
        accumulate=t.accumulate,
        workers_requested=spec.knobs.workers,
        workers_effective=loader.num_workers,
        pin_memory_effective=bool(loader.pin_memory),
        amp_effective=bool(t.amp),
        dataset_images=len(loader.dataset),
        batches_per_epoch=len(loader),
        ddp_bucket_cap_mb=(ddp.bucket_bytes_cap / 2**20) if ddp is not None else None,
        torch_threads=torch.get_num_threads(),
        t_start_s=time.time(),
        compiled=is_compiled(t.model),
        deterministic_effective=torch.are_deterministic_algorithms_enabled(),
        channels_last_effective=is_channels_last(t.model),
        node=int(os.environ.get(SCAN_NODE_ENV, "0")),
        optimizer_effective=type(t.optimizer).__name__,
    )


def _end(trainer, probe, rank: int, status: str, error: Optional[str], pooled: bool) -> RankEnd:
    """The rank's end record: status, memory peaks (read without raising after a sticky CUDA error), the last
    step and set-up; the loaders closed and, outside a pool, the process group destroyed."""
    import torch
    import torch.distributed as dist

    from yoloprof.probes import memory

    device = trainer.device if trainer is not None else torch.device("cpu")
    peak = _quietly(lambda: memory.peak(device)) or memory.MemoryPeak(None, None, None, "n/a")
    for loader in (getattr(trainer, "train_loader", None), getattr(trainer, "test_loader", None)):
        if hasattr(loader, "close"):
            _quietly(loader.close)
    if dist.is_initialized() and status == "ok" and not pooled:
        dist.destroy_process_group()
    return RankEnd(
        rank=rank,
        status=status,
        peak_mem_mib=peak.peak_mib,
        mem_source=peak.source,
        peak_mem_allocated_mib=peak.allocated_mib,
        device_mem_total_mib=peak.total_mib,
        last_step=probe.steps_started - 1 if probe.steps_started else None,
        error=error,
        t_end_s=time.time(),
        setup_s=getattr(trainer, "setup_s", None),
    )


def _precise(spec: TrialSpec, steady: list[tuple[int, float]]) -> bool:
    from yoloprof.analysis.intervals import precise_enough

    if spec.precision is None:
        return False
    return precise_enough([n for n, _ in steady], [ms for _, ms in steady], spec.precision)


POLL_S = 0.02


def _next_job(pool_dir: Path, n: int) -> dict:
    """Wait for the scan's n-th job (written atomically by yoloprof.scan.launch.RankPool)."""
    path = pool_dir / f"job-{n:04d}.json"
    while not path.is_file():
        time.sleep(POLL_S)
    return json.loads(path.read_text())


def run_pool(pool_dir: Path, rank: int) -> int:
    n = 1
    while True:
        job = _next_job(pool_dir, n)
        if job.get("stop"):
            return 0
        end = run_spec(Path(job["spec"]), rank, pooled=True)
        if end.status != "ok":
            return 1  # leave the pool: torchrun stops the peers, the scan relaunches for the next trial
        n += 1


def run_spec(spec_path: Path, rank: int, pooled: bool = False) -> RankEnd:
    trial_dir = spec_path.parent
    _redirect_output(trial_dir / f"rank{rank}.log")
    spec = read_json(spec_path, TrialSpec)
    writer = RankWriter(trial_dir / f"rank{rank}.jsonl")
    try:
        end = run(spec, trial_dir, writer, rank, pooled=pooled)
    except BaseException as exc:  # noqa: BLE001 - the last line of defence for the end record
        traceback.print_exc()
        end = RankEnd(
            rank=rank, status="error", peak_mem_mib=None, mem_source="n/a", error=error_line(exc), t_end_s=time.time()
        )
    writer.write("end", end)
    writer.close()
    return end


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from yoloprof.orphan_guard import die_with_parent

    die_with_parent()  # torchrun killed with the scan takes its ranks along
    rank = int(os.environ.get("RANK", "0"))
    if argv[0] == "--pool":
        return run_pool(Path(argv[1]), rank)
    return 0 if run_spec(Path(argv[0]), rank).status == "ok" else 1


if __name__ == "__main__":
    sys.stdout.flush()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: DataLoader workers are closed already
