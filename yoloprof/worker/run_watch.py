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
POINTER_ENV = "YOLOPROF_RUN_POINTER"  # a file where rank 0 writes the run folder for yoloprof train
FOLDER = "yoloprof"  # in Ultralytics' run folder


def watch(model) -> "RunWatch":
    """Attach to a YOLO model before `model.train(...)`: its trainer's ranks write the run's records."""
    w = RunWatch()
    for event, fn in w.callbacks().items():
        model.add_callback(event, fn)
    return w


class RunWatch:
    def __init__(self):
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
        pointer = os.environ.get(POINTER_ENV)
        if pointer and self.rank == 0:
            Path(pointer).write_text(str(Path(trainer.save_dir).resolve()))

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
        record = summarize(self.rank, trainer.epoch, self._steps, self._t_epoch, self._t_train_end, trainer)
        if len(self._metrics_t) >= 1:  # rank 0: the epoch as results.csv times it (between its rows)
            t = self._metrics_t
            record.epoch_s = t[-1] - (t[-2] if len(t) > 1 else 0.0)
        record.peak_mem_mib = _peak(self.device)
        self._write(record)
        if self.rank == 0:
            print(live_line(record, self.start), file=sys.stderr, flush=True)

    def _write(self, record) -> None:
        with open(self.file, "a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def summarize(rank: int, epoch: int, steps: list[StepSample], t0: float, t1: float, trainer) -> RunEpoch:
    """An epoch's steps -> its line: the steady steps' means (each epoch's first step carries the loader's
    start and is kept apart)."""
    steady = steps[1:]

    def avg(name: str) -> Optional[float]:
        vals = [getattr(s, name) for s in steady if getattr(s, name) is not None]
        return mean(vals) if vals else None

    step_ms = [s.step_ms for s in steady]
    busy = [s.step_ms - s.data_wait_ms - (s.comm_wait_ms or 0.0) for s in steady]
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
        comm_wait_ms_mean=avg("comm_wait_ms"),
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


def live_line(e: RunEpoch, start: RunStart) -> str:
    """Rank 0's line beside Ultralytics' progress: the epoch, its rate, where its steps went, the prediction."""
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
        # rank 0 sees its own phases: a wait in AllReduce is the link's, or another rank's that is slower
        parts.append(
            "bound: input"
            if wait >= 0.10
            else "bound: communication or a slower rank"
            if comm >= 0.10
            else "bound: compute"
        )
    left = start.epochs - e.epoch - 1
    if e.epoch_s is not None and left > 0:
        parts.append(f"ETA {left * e.epoch_s / 60:.1f} min")
    return ", ".join(parts)


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
