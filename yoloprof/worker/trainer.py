"""The Ultralytics trainer as a trial runs it: real training, our launcher, our probes.

Only what a measurement needs is changed (ScanMixin, mixed into the model's task's trainer: ScanTrainer
for detect, the others in yoloprof.worker.tasks); the loop, the dataloader, the loss, the optimizer
and DDP are Ultralytics' own, so a trial costs what `yolo train` would cost.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ultralytics.data import build_dataloader
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import unwrap_model

from yoloprof.probes import comm, injected_costs
from yoloprof.probes.steps import StepProbe
from yoloprof.records import TrialSpec
from yoloprof.records.epoch import RankEpochParts
from yoloprof.worker import faults
from yoloprof.worker.ddp import cpu_capable_ddp  # shared with `yoloprof train`'s ranks
from yoloprof.worker.epoch_end import EpochEndMixin, epoch_plan

# A hang is ended by the scan's per-trial timeout; the process group's own timeout is a backstop.
PG_TIMEOUT = timedelta(minutes=30)


# Ultralytics' `_oom_retries >= 3` check (engine/trainer.py) re-raises the OOM instead of halving the batch.
OOM_RETRIES_EXHAUSTED = 3


# The stopping rule (measured until precise) is checked every CHECK_EVERY measured steps past the minimum:
# rank 0 decides from its own steps and broadcasts, so every rank stops on the same step.
CHECK_EVERY = 5


def is_compiled(model) -> bool:
    """Ultralytics returns the plain model where torch.compile cannot run, with only a warning."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return hasattr(inner, "_orig_mod")


def is_channels_last(model) -> bool:
    """The convolution weights are NHWC (Ultralytics converts them on CUDA only)."""
    w = next((p for p in unwrap_model(model).parameters() if p.dim() == 4 and p.shape[1] > 1), None)
    return bool(w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())


class TrialComplete(Exception):
    """Raised on the same step on every rank to end training without validation or saving."""


def process_age_s() -> Optional[float]:
    """Seconds since this process started (the kernel's start time, 10 ms ticks); None where it cannot say."""
    try:
        import psutil

        return max(time.time() - psutil.Process().create_time(), 0.0)
    except Exception:  # noqa: BLE001 - a missing figure, never a failed trial
        return None


def trial_overrides(spec: TrialSpec, project: str) -> dict:
    """Ultralytics arguments of a trial: the user's config plus what a short measurement needs.

    `spec.overrides` (the arguments of the user's --cfg held in every trial, the compute probe's nbs) only
    adds arguments: the knobs and the measurement's own settings below always win over it, so a config
    cannot turn validation back on or change the batch a trial measures."""
    k = spec.knobs
    base = dict(
        model=spec.model,
        data=spec.data,
        imgsz=spec.imgsz,
        batch=k.batch,
        workers=k.workers,
        amp=k.amp,  # True, False or "bf16", as Ultralytics takes it
        deterministic=k.deterministic,
        compile=False if k.compile == "off" else k.compile,
        channels_last=None if k.channels_last else False,  # None: Ultralytics' auto (NHWC on CUDA)
        cache={"off": False, "ram": "ram", "disk": "disk"}[k.cache],
        device=",".join(str(g) for g in spec.gpus) if spec.device == "cuda" else "cpu",
        # auto's pick (TrialSpec.optimizer_iterations): built through auto, as the planned run builds it
        optimizer="auto" if spec.optimizer_iterations is not None else spec.optimizer,
        epochs=1000,  # never reaches the final epoch, which would validate and save
        close_mosaic=0,  # a short run would otherwise train without mosaic
        warmup_epochs=0,  # measure the steady state: full gradient accumulation, final lr
        val=False,
        save=False,
        plots=False,
        project=project,
        name="ultralytics",
        exist_ok=True,
        verbose=False,
    )
    return {**spec.overrides, **base}


class StaticBatchLoader:
    """One real batch, already on the device, served forever: the loop's own compute, no data loading.

    The batch comes from the user's dataloader (real images, real boxes, masks, keypoints, rotated boxes
    or classes: every tensor of the task's batch moves), so the loss costs what it costs in training;
    the loader is closed after that one fetch.
    """

    def __init__(self, loader, device: torch.device):
        batch = next(iter(loader))
        self.batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.dataset, self.batch_size, self.sampler = loader.dataset, loader.batch_size, loader.sampler
        self.num_workers, self.pin_memory, self._len = 0, False, len(loader)
        if hasattr(loader, "close"):
            loader.close()

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for _ in range(self._len):
            yield dict(self.batch)  # preprocess_batch replaces entries; keep ours intact

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class _TimedLoss:
    """Stands in for the scaled loss so the probe sees `backward()` return."""

    def __init__(self, loss: torch.Tensor, after: Callable[[], None]):
        self._loss, self._after = loss, after

    def backward(self, *args, **kwargs):
        self._loss.backward(*args, **kwargs)
        self._after()


class _TimedScaler:
    """The GradScaler as the loop calls it: `scale(loss)` marks the end of forward and loss, `backward()`
    returning the end of backward. The loss exists only here on both of Ultralytics' paths: plain, the
    model's forward computes it; compiled, the loop calls `loss()` after the compiled forward returns."""

    def __init__(self, scaler, loss_ready: Callable[[], None], after_backward: Callable[[], None]):
        self._scaler, self._ready, self._after = scaler, loss_ready, after_backward

    def scale(self, loss):
        self._ready()
        return _TimedLoss(self._scaler.scale(loss), self._after)

    def __getattr__(self, name):
        return getattr(self._scaler, name)


class ScanMixin(EpochEndMixin):
    """What a trial adds to the task's Ultralytics trainer (mixed in before it: `class X(ScanMixin, Trainer)`):
    the probes, pin_memory, CPU DDP over gloo, the compute probe's static batch, stopping on a step."""

    def __init__(
        self,
        spec: TrialSpec,
        probe: StepProbe,
        project: str,
        on_ready: Callable,
        on_step: Callable,
        precise: Optional[Callable[[], bool]] = None,
    ):
        self._constructed = time.perf_counter()  # set-up is timed from here to the first step
        self.startup_s = process_age_s()  # a run pays its process's start once: epoch mode's fresh process reports it
        self.setup_s: Optional[float] = None
        self.epoch_parts: Optional[RankEpochParts] = None
        self.spec, self.probe, self._precise = spec, probe, precise
        self._optimizer_cost = None  # set with the probes (tests only: YOLOPROF_TEST_COST)
        self._on_ready, self._on_step = on_ready, on_step
        # pin_memory has no cfg argument in Ultralytics 8.4: hand it to build_dataloader directly, in the module
        # whose get_dataloader the task's trainer runs (detect's train.py for segment, pose and obb too;
        # classify's own train.py).
        loaders = sys.modules[type(self).get_dataloader.__module__]
        loaders.build_dataloader = functools.partial(build_dataloader, pin_memory=spec.knobs.pin_memory)
        super().__init__(overrides=trial_overrides(spec, project))
        self.args.workers = spec.knobs.workers  # Ultralytics forces 0 on CPU; the scan measures the value asked
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            self.world_size = world  # Ultralytics forces 0 on CPU, which would also zero the loss
        self.ddp = False  # our torchrun already launched every rank
        self.add_callback("on_train_start", lambda t: self._on_ready(self))
        self.add_callback("on_train_epoch_start", lambda t: self._epoch_start())
        self.add_callback("on_train_batch_start", lambda t: self._batch_start())
        self.add_callback("on_train_batch_end", lambda t: self._batch_end())

    # -- process group and model wrapping ------------------------------------------------------
    def _setup_ddp(self):
        pooled = dist.is_initialized()  # a rank pool: the process group outlives the trial
        if self.spec.device == "cuda":
            saved = dist.init_process_group
            if pooled:
                dist.init_process_group = lambda *a, **k: None  # keep Ultralytics' device set-up, skip the init
            try:
                return super()._setup_ddp()
            finally:
                dist.init_process_group = saved
        if not pooled:
            dist.init_process_group("gloo", timeout=PG_TIMEOUT, rank=RANK, world_size=self.world_size)

    def _setup_train(self):
        with cpu_capable_ddp():
            super()._setup_train()
        if self.spec.knobs.compile != "off" and not is_compiled(self.model):
            raise RuntimeError(
                f"compile={self.spec.knobs.compile} was asked, but Ultralytics went on uncompiled: the "
                "inductor backend is unavailable here (a C++ compiler on CPU, Triton on CUDA); its "
                "warning above says why"
            )
        built = type(self.optimizer).__name__
        if built.lower() != self.spec.optimizer.lower():
            raise RuntimeError(
                f"the trial was planned with optimizer {self.spec.optimizer}, but Ultralytics built {built}"
            )
        if self.spec.mode == "compute":
            self.train_loader = StaticBatchLoader(self.train_loader, self.device)
        self._attach_probes()
        rank = RANK if RANK >= 0 else 0
        faults.attach_model_faults(self.model, rank, self.spec.trial_id)
        injected_costs.attach(self, rank)  # tests only: YOLOPROF_TEST_COST
        self._optimizer_cost = injected_costs.sleeper("optimizer", rank)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' own; auto decides for the planned run's iterations (the spec's), not for this trial's
        1000 epochs of whatever data it has, so it picks what `yolo train` will, with auto's lr0 and momentum."""
        if self.spec.optimizer_iterations is not None:
            iterations = self.spec.optimizer_iterations
        return super().build_optimizer(model, name=name, lr=lr, momentum=momentum, decay=decay, iterations=iterations)

    def _attach_probes(self):
        probe = self.probe
        first = next(p for p in unwrap_model(self.model).parameters() if p.requires_grad)
        first.register_post_accumulate_grad_hook(lambda p: probe.mark("grad_end"))
        self.scaler = _TimedScaler(self.scaler, lambda: probe.mark("fwd_end", once=True), lambda: probe.mark("bwd_end"))
        self.comm_state: Optional[comm.CommState] = None
        if isinstance(self.model, DistributedDataParallel):
            self.comm_state = comm.attach(self.model, probe.clock, probe.bucket_launched, probe.rank)

    # -- the loop's boundaries ------------------------------------------------------------------
    def _epoch_start(self):
        # With one rank (RANK -1) Ultralytics answers an OOM in the first epoch by halving the batch and
        # retrying, up to 3 times, and resets its counter before each epoch: a trial would then report
        # `ok` at a batch it never ran. An exhausted counter, set where it sticks, makes the OOM an OOM.
        self._oom_retries = OOM_RETRIES_EXHAUSTED
        self.probe.epoch_start()

    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        self.probe.set_images(batch["img"].shape[0])
        self.probe.mark("h2d_end")
        return batch

    def optimizer_step(self):
        self.probe.mark("opt_start")
        super().optimizer_step()
        if self._optimizer_cost is not None:
            self._optimizer_cost()
        self.probe.mark("opt_end")

    def _batch_start(self):
        if self.probe.steps_started == 0:
            self.setup_s = time.perf_counter() - self._constructed  # every trial: its run's set-up
            if self.spec.mode == "epoch":
                self.epoch_parts = RankEpochParts(rank=max(RANK, 0), setup_s=self.setup_s, startup_s=self.startup_s)
        self.probe.batch_start(self.epoch)
        injected_costs.set_step(self.probe.steps_started - 1)  # tests only: costs on odd steps

    def _batch_end(self):
        self.probe.batch_end()
        self._on_step(self)
        if self.spec.mode == "epoch":
            plan = epoch_plan(self.spec)
            if self.probe.steps_started == plan.off:
                self._close_mosaic_now()
            elif self.probe.steps_started == plan.back:
                self._reopen_mosaic_now()
            if self.probe.steps_started >= plan.total:
                self.probe.flush(block=True)
                self._time_epoch_end()
                raise TrialComplete()
            return
        if self.probe.steps_started >= self.spec.total_steps or self._stop_now():
            self.probe.flush(block=True)
            raise TrialComplete()

    def _stop_now(self) -> bool:
        """Measured until precise: the same answer on every rank, on the same step."""
        spec = self.spec
        past = self.probe.steps_started - spec.warmup_steps - spec.measured_steps
        if spec.precision is None or self._precise is None or past < 0 or past % CHECK_EVERY:
            return False
        stop = bool(self._precise()) if RANK in (-1, 0) else False
        if dist.is_initialized() and self.world_size > 1:
            flag = torch.tensor([int(stop)], device=self.device if spec.device == "cuda" else "cpu")
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        self.probe.restart()  # the check is ours, not training's: the next step starts after it
        return stop


class ScanTrainer(ScanMixin, DetectionTrainer):
    """detect's trial trainer (segment, pose, obb and classify: yoloprof.worker.tasks)."""
