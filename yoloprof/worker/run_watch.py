"""The scan's step probe on a real training run, light: one summary line per epoch and rank.

`yoloprof train` adds it to every rank (YOLOPROF_WATCH=1); a Python user adds it to a run started without
yoloprof with `watch(model)` before `model.train(...)`. It attaches through Ultralytics' callbacks, on the
trainer Ultralytics built: the same marks as a trial's (yoloprof.probes.steps: the batch arriving, the copy,
forward + loss, the last gradient, backward, the optimizer step, each DDP bucket's AllReduce), on the
device's timeline on GPUs. Steps are summarised as they complete and never kept one by one: a 300-epoch run
writes 300 lines per rank to RUN_DIR/yoloprof/rank<r>.jsonl, each flushed when its epoch ends (a killed run
keeps every finished epoch). The only wait it adds is at the epoch's end, for the last step's events, where
validation would wait anyway.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from yoloprof.analysis.stats import mean, quantile
from yoloprof.records import StepSample
from yoloprof.records.run import RunEpoch, RunStart

ENV = "YOLOPROF_WATCH"  # "1": yoloprof train's ranks attach the watch
PREDICTION_ENV = "YOLOPROF_PREDICTION"  # JSON of the scan's prediction (yoloprof train puts it there)
POINTER_ENV = "YOLOPROF_RUN_POINTER"  # a file where a node's first rank writes the run folder for yoloprof train
FOLDER = "yoloprof"  # in Ultralytics' run folder


# The run's telemetry (NVML, CPU) every second: slow enough to cost nothing measurable (0.2-0.3% of one core,
# benchmarks/overhead.py --watch), fast enough for a few samples in a short epoch.
TELEMETRY_S = 1.0


def watch(model) -> "RunWatch":
    """Attach to a YOLO model before `model.train(...)`: its trainer's ranks write the run's records. Without
    yoloprof train to sample the node, this process samples its own GPU and CPU (a thread, every second)."""
    w = RunWatch(sample=True)
    for event, fn in w.callbacks().items():
        model.add_callback(event, fn)
    return w


class RunWatch:
    def __init__(self, sample: bool = False):
        self.sample = sample  # watch(model): no yoloprof train process samples the node, this one does
        self.sampler = None
        self.probe = None
        self.file = None
        self.rank = max(int(os.environ.get("RANK", "-1")), 0)
        self._steps: list[StepSample] = []
        self._t_epoch = self._t_train_end = 0.0
        self._open = False  # an epoch's steps ended and its line is not written yet

    def callbacks(self) -> dict:
        return {
            "on_train_start": self.on_train_start,
            "on_train_epoch_start": self.on_epoch_start,
            "on_train_batch_start": lambda t: self.probe.batch_start(t.epoch),
            "on_train_batch_end": lambda t: self.probe.batch_end(),
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_train_end": self.on_train_end,
        }

    # -- set-up ------------------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        from yoloprof.probes.clock import Clock
        from yoloprof.probes.steps import StepProbe

        cuda = trainer.device.type == "cuda"
        self.device = trainer.device
        self.probe = StepProbe(self.rank, 0, Clock(cuda=cuda), self._steps.append)
        _attach(trainer, self.probe, self.rank)
        self._metrics_t: list[float] = []  # rank 0: seconds into the run at each epoch's results.csv line
        save_metrics = trainer.save_metrics

        def timed_save_metrics(metrics):
            self._metrics_t.append(time.time() - trainer.train_time_start)  # as Ultralytics times its csv row
            return save_metrics(metrics)

        trainer.save_metrics = timed_save_metrics
        folder = Path(trainer.save_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / f"rank{self.rank}.jsonl"
        predicted = json.loads(os.environ.get(PREDICTION_ENV) or "{}") if self.rank == 0 else {}
        self.start = RunStart(
            rank=self.rank,
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            device=str(trainer.device),
            pid=os.getpid(),
            t_start_s=time.time(),
            timing=self.probe.clock.timing,
            epochs=int(trainer.epochs),
            close_mosaic=int(trainer.args.close_mosaic or 0),
            **predicted,
        )
        self._write(self.start)
        if self.sample and self.rank == 0 and not os.environ.get(POINTER_ENV):
            from yoloprof.probes.telemetry import TelemetrySampler

            gpus = [trainer.device.index or 0] if cuda else []
            path = folder / "telemetry-node0.jsonl"
            self.sampler = TelemetrySampler(path, TELEMETRY_S, gpus, root_pid=os.getpid()).start()
        pointer = os.environ.get(POINTER_ENV)
        if pointer and int(os.environ.get("LOCAL_RANK", "0")) == 0:  # each node's yoloprof train samples its run
            tmp = Path(pointer).with_suffix(".tmp")
            tmp.write_text(str(Path(trainer.save_dir).resolve()))
            tmp.replace(pointer)  # read whole or not at all

    # -- each epoch --------------------------------------------------------------------------------
    def on_epoch_start(self, trainer) -> None:
        from yoloprof.probes import injected_costs

        injected_costs.set_epoch(trainer.epoch)  # tests only: costs from a chosen epoch
        _reset_peak(self.device)
        self._steps.clear()
        self._t_epoch = time.perf_counter()
        self.probe.epoch_start()

    def on_train_epoch_end(self, trainer) -> None:
        self.probe.flush(block=True)  # the last step's events: validation would wait for them next
        self._t_train_end = time.perf_counter()
        self._open = True

    def on_fit_epoch_end(self, trainer) -> None:
        if not self._open:
            return  # Ultralytics' final validation also calls this, after the last epoch
        self._open = False
        record = summarize(
            self.rank, trainer.epoch, self._steps, self._t_epoch, self._t_train_end, trainer, self.start.world_size
        )
        if len(self._metrics_t) >= 1:  # rank 0: the epoch as results.csv times it (between its rows)
            t = self._metrics_t
            record.epoch_s = t[-1] - (t[-2] if len(t) > 1 else 0.0)
        record.peak_mem_mib = _peak(self.device)
        self._write(record)
        if self.rank == 0:  # the other ranks wrote their epoch as their steps ended, before this validation
            others = other_ranks(self.file.parent, self.rank, record.epoch)
            print(live_line(record, self.start, others), file=sys.stderr, flush=True)

    def on_train_end(self, trainer) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None

    def _write(self, record) -> None:
        with open(self.file, "a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def summarize(
    rank: int, epoch: int, steps: list[StepSample], t0: float, t1: float, trainer, world_size: int = 2
) -> RunEpoch:
    """An epoch's steps -> its line: the steady steps' means (each epoch's first step carries the loader's
    start and is kept apart). One rank has no AllReduce: what follows its last gradient is backward's tail."""
    steady = steps[1:]
    ddp = world_size > 1

    def avg(name: str) -> Optional[float]:
        vals = [getattr(s, name) for s in steady if getattr(s, name) is not None]
        return mean(vals) if vals else None

    step_ms = [s.step_ms for s in steady]
    busy = [s.step_ms - s.data_wait_ms - ((s.comm_wait_ms or 0.0) if ddp else 0.0) for s in steady]
    return RunEpoch(
        rank=rank,
        epoch=int(epoch),
        steps=len(steps),
        images=sum(s.images for s in steps),
        train_s=t1 - t0,
        step_ms_mean=mean(step_ms) if step_ms else None,
        step_ms_p50=quantile(step_ms, 0.5) if step_ms else None,
        step_ms_p90=quantile(step_ms, 0.9) if step_ms else None,
        busy_ms_p50=quantile(busy, 0.5) if busy else None,
        data_wait_ms_mean=avg("data_wait_ms"),
        comm_wait_ms_mean=avg("comm_wait_ms") if ddp else None,
        forward_ms_mean=avg("forward_ms"),
        backward_ms_mean=avg("backward_ms"),
        optimizer_ms_mean=avg("optimizer_ms"),
        first_step_ms=steps[0].step_ms if steps else None,
        end_s=time.perf_counter() - t1,
        epoch_s=getattr(trainer, "epoch_time", None),
        peak_mem_mib=None,
        t_end_s=time.time(),
        timing=steps[-1].timing if steps else "host",
    )


def other_ranks(folder: Path, rank: int, epoch: int) -> list[RunEpoch]:
    """The other ranks' lines for this epoch in this node's folder (the tail of each file: a few KiB, however
    long the run); a rank not there yet, or on another node without a shared folder, is left out."""
    out = []
    for f in folder.glob("rank*.jsonl"):
        if f == folder / f"rank{rank}.jsonl":
            continue
        try:
            with open(f, "rb") as fh:
                fh.seek(max(fh.seek(0, os.SEEK_END) - 8192, 0))
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("kind") == "epoch" and data.get("epoch") == epoch:
                out.append(RunEpoch(**data))
                break
    return out


def live_line(e: RunEpoch, start: RunStart, others: Optional[list[RunEpoch]] = None) -> str:
    """Rank 0's line beside Ultralytics' progress: the epoch, its rate, where its steps went, the bound, the
    prediction. others: the other ranks' lines for the epoch, for the straggler (rank 0 alone cannot see one)."""
    from yoloprof.analysis.ranking import INPUT_FRAC, STRAGGLER_SKEW

    parts = [f"yoloprof: epoch {e.epoch + 1}/{start.epochs}"]
    if e.epoch_s is not None:
        parts.append(f"{e.epoch_s:.1f} s")
    if start.predicted_epoch_s is not None:
        band = (
            f", {start.predicted_low_s:.1f}-{start.predicted_high_s:.1f}"
            if start.predicted_low_s is not None and start.predicted_high_s is not None
            else ""
        )
        parts[-1] += f" (predicted {start.predicted_epoch_s:.1f} s{band})"
    if e.train_s > 0:
        parts.append(f"{e.images * start.world_size / e.train_s:.1f} img/s")
    if e.step_ms_mean:
        wait, comm = (e.data_wait_ms_mean or 0) / e.step_ms_mean, (e.comm_wait_ms_mean or 0) / e.step_ms_mean
        parts.append(f"data wait {100 * wait:.0f}%")
        if e.comm_wait_ms_mean is not None:
            parts.append(f"exposed AllReduce {100 * comm:.0f}%")
        slow = straggler([e, *(others or [])])
        if slow is not None and slow[1] > STRAGGLER_SKEW:
            parts.append(f"bound: straggler (rank {slow[0]}, its own work +{100 * slow[1]:.0f}%)")
        elif wait >= INPUT_FRAC:
            parts.append("bound: input")
        elif comm >= 0.10:  # a wait in AllReduce with no slower rank seen: the link (or a rank not seen)
            parts.append("bound: communication" if others else "bound: communication or a slower rank")
        else:
            parts.append("bound: compute")
    left = start.epochs - e.epoch - 1
    if e.epoch_s is not None and left > 0:
        parts.append(f"ETA {left * e.epoch_s / 60:.1f} min")
    return ", ".join(parts)


def straggler(rows: list[RunEpoch]) -> Optional[tuple[int, float]]:
    """(the rank whose own work most exceeds the others' median, by how much), as run_drift measures it."""
    from statistics import median

    best = None
    for r in rows:
        rest = [x.busy_ms_p50 for x in rows if x is not r and x.busy_ms_p50]
        if r.busy_ms_p50 and rest:
            excess = r.busy_ms_p50 / median(rest) - 1
            if best is None or excess > best[1]:
                best = (r.rank, excess)
    return best


def _attach(trainer, probe, rank: int) -> None:
    """The trial's marks on the trainer Ultralytics built (worker.trainer.ScanMixin sets the same ones)."""
    from torch.nn.parallel import DistributedDataParallel
    from ultralytics.utils.torch_utils import unwrap_model

    from yoloprof.probes import comm, injected_costs
    from yoloprof.worker.trainer import _TimedScaler

    first = next(p for p in unwrap_model(trainer.model).parameters() if p.requires_grad)
    first.register_post_accumulate_grad_hook(lambda p: probe.mark("grad_end"))
    trainer.scaler = _TimedScaler(
        trainer.scaler, lambda: probe.mark("fwd_end", once=True), lambda: probe.mark("bwd_end")
    )
    preprocess, optimizer_step = trainer.preprocess_batch, trainer.optimizer_step

    def timed_preprocess(batch):
        batch = preprocess(batch)
        probe.set_images(batch["img"].shape[0])
        probe.mark("h2d_end")
        return batch

    def timed_optimizer_step():
        probe.mark("opt_start")
        optimizer_step()
        probe.mark("opt_end")

    trainer.preprocess_batch, trainer.optimizer_step = timed_preprocess, timed_optimizer_step
    if isinstance(trainer.model, DistributedDataParallel):
        comm.attach(trainer.model, probe.clock, probe.bucket_launched, rank)
    injected_costs.attach(trainer, rank)  # tests only: YOLOPROF_TEST_COST


def _reset_peak(device) -> None:
    """This epoch's peak from here: the allocator's counter on GPU, the kernel's high-water mark on CPU (no
    cache emptied: plain training would not)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak(device) -> Optional[float]:
    from yoloprof.probes import memory

    return memory.peak(device).peak_mib
