"""The trial's "epoch" mode: what an epoch adds to its steps, timed with Ultralytics' own code.

After its steps with mosaic the trainer closes mosaic as `_do_train` does entering the close_mosaic
epochs and trains on, reopens it and trains on again (see EpochPlan), then runs the epoch end part by part in `_do_train`'s order, EPOCH_PASSES times,
each part between barriers so every rank measures the same span (yoloprof.scan.epoch_job).
"""

from __future__ import annotations

import itertools
import math
import time
from copy import copy
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import unwrap_model

from yoloprof.records import TrialSpec

# "epoch" mode: each epoch-end part is timed EPOCH_PASSES times (the first pays start-up), and validation
# over at least VAL_MIN_IMAGES images (all ranks together) per pass, the whole split when it is smaller.
EPOCH_PASSES = 2
VAL_MIN_IMAGES = {"cpu": 64, "cuda": 512}


class EpochPlan(NamedTuple):
    """Step indices of an "epoch" trial: warm-up + measured steps with mosaic; close_mosaic, the loader
    restarted (re-warmed for as many steps as the first warm-up, at least one), measured steps without it;
    mosaic reopened, re-warmed, measured again. The mosaic phases on both sides of the other cancel a drift
    of the machine's speed that is linear over the job, which one phase after the other would read as
    mosaic's effect (seen: 14% within a minute on a shared 2-core VM)."""

    off: int  # the first step without mosaic
    steady_off: int  # the first measured step without mosaic
    back: int  # the first step with mosaic again
    steady_back: int  # the first measured step of it
    total: int


def epoch_plan(spec: TrialSpec) -> EpochPlan:
    rewarm = max(spec.warmup_steps, 1)
    off = spec.warmup_steps + spec.measured_steps
    back = off + rewarm + spec.measured_steps
    return EpochPlan(off, off + rewarm, back, back + rewarm, back + rewarm + spec.measured_steps)


class _CappedLoader:
    """The first `batches` batches of a validation loader per pass (all of Ultralytics' loader otherwise),
    counting images and timing the batch loop. The persistent iterator goes on where a pass stopped, so
    the next pass validates the next batches."""

    def __init__(self, loader, batches: int):
        self._loader, self.batches = loader, batches
        self.images, self.loop_s = 0, 0.0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        self.images, start = 0, time.perf_counter()
        epoch = iter(self._loader)
        try:
            for batch in itertools.islice(epoch, self.batches):
                self.images += int(batch["img"].shape[0])
                yield batch
        finally:
            epoch.close()
            self.loop_s = time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._loader, name)


class EpochEndMixin:
    """Mixed into the trial trainer (ScanMixin on any task's Ultralytics trainer): needs its probe, epoch_parts and
    Ultralytics' state. Validation is the task's own validator (trainer.validator)."""

    def _close_mosaic_now(self):
        """What `_do_train` does entering the close_mosaic epochs, here mid-epoch: the epoch's batch
        generator is already running and reads `iterator` per batch, so the fresh iterator (new workers,
        the same epoch's sampler order) is made at once instead of lazily."""
        dataset = self.train_loader.dataset
        self._mosaic_was = getattr(dataset, "mosaic", None)
        self._close_dataloader_mosaic()
        self._restart_loader()
        self.epoch_parts.mosaic_off_step = self.probe.steps_started

    def _reopen_mosaic_now(self):
        """Mosaic back as the trial had it (the dataset's transforms rebuilt from the trainer's own arguments),
        for the job's last mosaic phase; the loader restarts as on closing."""
        dataset = self.train_loader.dataset
        if self._mosaic_was is not None:
            dataset.mosaic = self._mosaic_was
        if hasattr(dataset, "close_mosaic") and hasattr(dataset, "build_transforms"):
            dataset.transforms = dataset.build_transforms(hyp=copy(self.args))
        self._restart_loader()
        self.epoch_parts.mosaic_back_step = self.probe.steps_started

    def _restart_loader(self):
        self.train_loader.reset()
        if hasattr(self.train_loader, "_get_iterator"):
            self.train_loader.iterator = self.train_loader._get_iterator()

    def _span(self, fn: Callable[[], None]) -> float:
        """Seconds of fn between two barriers: every rank measures the same span, the slowest rank's."""
        ddp = dist.is_initialized() and self.world_size > 1
        cuda = self.device.type == "cuda"
        if ddp:
            dist.barrier()
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(self.device)
        if ddp:
            dist.barrier()
        return time.perf_counter() - start

    def _end_before_val(self):  # _do_train: criterion update, lr for loggers, callbacks, EMA attributes
        criterion = getattr(unwrap_model(self.model), "criterion", None)
        if hasattr(criterion, "update"):
            criterion.update()
        self.lr = {f"lr/pg{ir}": x["lr"] for ir, x in enumerate(self.optimizer.param_groups)}
        self.run_callbacks("on_train_epoch_end")
        if RANK in {-1, 0}:
            self.ema.update_attr(self.model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])

    def _val(self):  # _do_train's validation block, run whatever `val=` says
        self._clear_memory(None if self.device.type == "mps" else 0.5)
        self.metrics, self.fitness = self.validate()

    def _end_after_val(self):  # NaN check (a broadcast under DDP), metrics csv, early-stopping bookkeeping
        if self._handle_nan_recovery(self.epoch):
            raise RuntimeError("the loss or fitness is NaN/Inf: Ultralytics would redo the epoch")
        self.nan_recovery_attempts = 0
        if RANK in {-1, 0}:
            self.save_metrics(metrics={**self.label_loss_items(self.tloss), **self.metrics, **self.lr})
            self.stop |= self.stopper(self.epoch + 1, self.fitness)

    def _save(self):
        if RANK in {-1, 0} and self.save_model():
            self.run_callbacks("on_model_save")

    def _final(self, plots: bool):
        """What `_do_train` does once after its last epoch: final_eval (strip last.pt and best.pt, validate best.pt
        stand-alone, with plots as the run has them), then plot_metrics (results.png) when plots are on."""
        from yoloprof.worker.ddp import cpu_validator

        self.args.plots = plots
        try:
            if self.device.type == "cpu" and self.world_size > 1:
                with cpu_validator():
                    self.final_eval()
            else:
                self.final_eval()
            if RANK in {-1, 0} and plots:
                self.plot_metrics()
        finally:
            self.args.plots = self.validator.args.plots = False  # trials never plot

    def _end_last(self):  # callbacks, memory clean-up, the stop flag's broadcast
        self.run_callbacks("on_fit_epoch_end")
        self._clear_memory(None if self.device.type == "mps" else 0.5)
        if RANK != -1:
            flag = [self.stop if RANK == 0 else None]
            dist.broadcast_object_list(flag, 0)
            self.stop = flag[0]

    def _time_epoch_end(self):
        """Ultralytics' epoch end, part by part in `_do_train`'s order, EPOCH_PASSES times; validation over a
        capped loader (see VAL_MIN_IMAGES), checkpoints into this trial's folder."""
        rec, loader = self.epoch_parts, self.test_loader
        per_pass = loader.batch_size * max(self.world_size, 1)
        want = math.ceil(VAL_MIN_IMAGES.get(self.device.type, 64) / per_pass)
        rec.val_batches, rec.val_capped = min(want, len(loader)), want < len(loader)
        rec.val_images_total = len(loader.dataset)
        capped = _CappedLoader(loader, rec.val_batches)
        self.validator.dataloader = capped
        self.args.save = True  # trials train with save=False; the checkpoint is one of the parts timed here
        try:
            for _ in range(EPOCH_PASSES):
                end = self._span(self._end_before_val)
                rec.val_s.append(self._span(self._val))
                rec.val_loop_s.append(capped.loop_s)
                rec.val_images.append(capped.images)
                end += self._span(self._end_after_val)
                rec.save_s.append(self._span(self._save))
                rec.end_s.append(end + self._span(self._end_last))
            plots = bool(self.spec.overrides.get("plots", True))  # the run's plots: the user's, else Ultralytics'
            rec.final_plots = plots
            rec.final_s = self._span(lambda: self._final(plots))
            rec.final_val_loop_s, rec.final_val_images = capped.loop_s, capped.images
        finally:
            self.validator.dataloader = loader
