"""One rank of one trial: `python -m torch.distributed.run ... -m yoloprof.worker SPEC.json`.

Writes trials/<id>/rank<r>.jsonl (a RankInfo line, a StepSample line per step, a RankEnd line)
and sends everything the rank prints to trials/<id>/rank<r>.log.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from yoloprof.records import RankEnd, RankInfo, TrialSpec, read_json, to_dict
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


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (
        isinstance(exc, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text  # the CPU allocator
    )


def _quietly(fn):
    """fn(), or None if it raises: for clean-up on a device that may be broken."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return None


def run(spec: TrialSpec, trial_dir: Path, writer: RankWriter, rank: int) -> RankEnd:
    import torch
    import torch.distributed as dist

    from probes import memory
    from probes.clock import Clock
    from probes.steps import StepProbe
    from probes import offline
    from yoloprof.worker import faults
    from yoloprof.worker.trainer import ScanTrainer, TrialComplete

    offline.patch_ultralytics()
    clock = Clock(cuda=spec.device == "cuda", sync=spec.sync_phases)
    probe = StepProbe(rank, spec.warmup_steps, clock, lambda s: writer.write("step", s))

    def on_ready(t: ScanTrainer) -> None:
        loader = t.train_loader
        ddp = t.model if isinstance(t.model, torch.nn.parallel.DistributedDataParallel) else None
        writer.write(
            "info",
            RankInfo(
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
            ),
        )

    def on_step(t: ScanTrainer) -> None:
        faults.maybe_fail(probe.steps_started - 1, rank, spec.trial_id, clock=clock)

    trainer = None
    status, error = "ok", None
    try:
        faults.maybe_fail(0, rank, spec.trial_id, setup=True)
        trainer = ScanTrainer(spec, probe, str(trial_dir), on_ready, on_step)
        trainer.train()
        status, error = "error", "training ended before the planned steps"
    except TrialComplete:
        pass
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        traceback.print_exc()
        status, error = ("oom" if _is_oom(exc) else "error"), error_line(exc)
        # After a sticky CUDA error every device query raises again: nothing below may raise, or the
        # rank would end without its end record and the report would not know why.
        probe.flush_after_failure()
    device = trainer.device if trainer is not None else torch.device("cpu")
    peak = _quietly(lambda: memory.peak(device)) or memory.MemoryPeak(None, None, None, "n/a")
    for loader in (getattr(trainer, "train_loader", None), getattr(trainer, "test_loader", None)):
        if hasattr(loader, "close"):
            _quietly(loader.close)
    if dist.is_initialized() and status == "ok":
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
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from yoloprof.orphan_guard import die_with_parent

    die_with_parent()  # torchrun killed with the scan takes its ranks along
    spec_path = Path(argv[0])
    trial_dir = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    _redirect_output(trial_dir / f"rank{rank}.log")
    spec = read_json(spec_path, TrialSpec)
    writer = RankWriter(trial_dir / f"rank{rank}.jsonl")
    try:
        end = run(spec, trial_dir, writer, rank)
    except BaseException as exc:  # noqa: BLE001 - the last line of defence for the end record
        traceback.print_exc()
        end = RankEnd(rank=rank, status="error", peak_mem_mib=None, mem_source="n/a", error=error_line(exc),
                      t_end_s=time.time())  # fmt: skip
    writer.write("end", end)
    writer.close()
    return 0 if end.status == "ok" else 1


if __name__ == "__main__":
    sys.stdout.flush()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: DataLoader workers are closed already
