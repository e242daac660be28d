"""What a trial is, and what each of its ranks records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401
from yoloprof.records.kinds import Backend, Cache, Device, Timing


# ---------------------------------------------------------------------------------------------
# What a trial is


def precision_name(amp: Union[bool, str]) -> str:
    """ "amp" (fp16 mixed precision), "bf16" or "fp32": how ids, tables and memory fits name an amp setting."""
    return "bf16" if amp == "bf16" else ("amp" if amp else "fp32")


PRECISIONS = {"amp": True, "bf16": "bf16", "fp32": False}  # name -> the amp value Ultralytics takes


@dataclass(frozen=True)
class Knobs:
    """The settings a scan varies. `batch` is global (all ranks together), as in `yolo train`."""

    batch: int
    workers: int
    amp: Union[bool, str]  # True: fp16 mixed precision (Ultralytics' default), "bf16", False: fp32
    pin_memory: bool
    cache: Cache
    nccl: str  # an NCCL preset name from yoloprof.search.knob_table.NCCL_PRESETS
    # Beyond the five (defaults = Ultralytics' own, so records written before them read as what ran):
    deterministic: bool = True  # torch.use_deterministic_algorithms + cudnn.deterministic
    compile: str = "off"  # "off" or a torch.compile mode: default, reduce-overhead, max-autotune-no-cudagraphs
    channels_last: bool = True  # NHWC on CUDA (Ultralytics' auto); False keeps NCHW. CPU training is NCHW either way

    @property
    def precision(self) -> str:
        return precision_name(self.amp)

    def extras(self) -> list[str]:
        """The knobs beyond the five, where they differ from Ultralytics' defaults ("deterministic off")."""
        out = []
        if not self.deterministic:
            out.append("deterministic off")
        if self.compile != "off":
            out.append(f"compile {self.compile}")
        if not self.channels_last:
            out.append("channels_last off")
        return out


@dataclass
class TrialSpec:
    trial_id: str
    knobs: Knobs
    world_size: int
    device: Device
    gpus: list[int]  # CUDA indices as the scan process sees them; empty on CPU
    model: str
    data: str  # absolute path of the data yaml
    imgsz: int
    optimizer: str  # a name Ultralytics builds (SGD, AdamW, MuSGD, ...), never "auto": the scan resolves that first
    warmup_steps: int
    measured_steps: int
    env: dict[str, str]  # variables set for this trial only (NCCL preset, OMP_NUM_THREADS)
    # "train"; "compute": one static batch on the device, no data loading; "epoch": train with mosaic, then
    # without, then time Ultralytics' epoch end (yoloprof.scan.epoch_job)
    mode: str = "train"
    overrides: dict[str, Any] = field(default_factory=dict)  # extra Ultralytics arguments (compute probe: nbs)
    sync_phases: bool = False  # synchronize the device around every phase (the GPU check's reference run)
    # Measured until precise: measured_steps is then the minimum, max_steps the most a trial may measure, and
    # it stops once the 95% interval of its images/s is within +-precision (yoloprof.analysis.intervals).
    max_steps: Optional[int] = None  # None: exactly measured_steps
    precision: Optional[float] = None  # relative half-width, 0.03 = +-3%
    repeat_of: Optional[str] = None  # a confirmation run of the same configuration as this trial id
    nnodes: int = 1  # nodes the trial spans; world_size is all ranks of all nodes, world_size // nnodes per node
    # `optimizer` is Ultralytics' auto pick for a planned run of this many optimizer iterations at this trial's batch
    # (yoloprof.analysis.optimizer): the trial builds it through auto, with auto's lr0 and momentum, deciding for the
    # planned run instead of its own few steps. None: the optimizer was named (--optimizer, the config), built as named
    optimizer_iterations: Optional[int] = None
    schema: int = SCHEMA_VERSION

    @property
    def nproc_per_node(self) -> int:
        return self.world_size // max(self.nnodes, 1)

    @property
    def total_steps(self) -> int:
        """The most steps the trial may run (warm-up included). An "epoch" trial runs three phases, mosaic on,
        off, on again, the last two re-warmed (yoloprof.worker.epoch_end.EpochPlan)."""
        if self.mode == "epoch":
            return self.warmup_steps + 3 * self.measured_steps + 2 * max(self.warmup_steps, 1)
        return self.warmup_steps + max(self.measured_steps, self.max_steps or 0)

    @property
    def env_key(self) -> tuple:
        """What a rank process is launched with, or fixes once: trials with the same key can share one launch. A compile
        trial gets a launch of its own: the compiler's in-process caches would make a later compile look free."""
        own = (self.trial_id,) if self.knobs.compile != "off" else ()
        # deterministic: Ultralytics sets CUBLAS_WORKSPACE_CONFIG for it, and cuBLAS reads that once per process
        return (
            self.world_size,
            self.device,
            tuple(self.gpus),
            tuple(sorted(self.env.items())),
            self.knobs.deterministic,
        ) + own


def batch_that_runs(batch_per_rank: int, train_images: int, world_size: int) -> int:
    """The batch per rank Ultralytics trains at, asked `batch_per_rank` on a dataset of `train_images`.

    Its build_dataloader caps the batch at the dataset (`batch = min(batch, len(dataset))`), and under
    DDP each rank's DistributedSampler hands it ceil(images / world size) images an epoch, so no step
    holds more than that shard: 512 images on 8 ranks run batch 128 per rank as 64."""
    if train_images <= 0:
        return batch_per_rank
    shard = -(-train_images // max(world_size, 1))
    return max(min(batch_per_rank, shard), 1)


def capped_batch_note(asked_per_rank: int, ran_per_rank: int, train_images: int, world_size: int) -> str:
    """Why a trial ran a smaller batch than it asked (batch_that_runs), in words for its notes."""
    n = max(world_size, 1)
    if n == 1:
        return (
            f"ran at batch {ran_per_rank} per rank, not {asked_per_rank}: Ultralytics caps the batch at the "
            f"dataset's {train_images} images"
        )
    return (
        f"ran at batch {ran_per_rank} per rank ({ran_per_rank * n} in all), not {asked_per_rank} "
        f"({asked_per_rank * n}): each of the {n} ranks loads a shard of {ran_per_rank} of the dataset's "
        f"{train_images} images an epoch (Ultralytics' DistributedSampler), fewer than a batch"
    )


# ---------------------------------------------------------------------------------------------
# What each rank records (one JSON object per line in trials/<id>/rank<r>.jsonl)


@dataclass
class BucketSample:
    """One DDP gradient bucket's AllReduce in one step."""

    index: int
    size_bytes: int
    allreduce_ms: Optional[float]  # launch to completion (CUDA events on GPU)


@dataclass
class StepSample:
    """One training iteration on one rank. data_wait_ms + h2d_ms + forward_ms + backward_ms +
    comm_wait_ms + optimizer_ms + epoch_end_ms + other_ms = step_ms (the parts that were measured).

    On a GPU (timing "cuda_event") every span is on the device's timeline: the host of a rank runs ahead
    of its GPU between training's own synchronisations, so only device time adds up to the step."""

    rank: int
    step: int  # 0-based iteration index within the trial, identical on every rank
    epoch: int
    warmup: bool
    t_end_s: float  # wall clock (time.time) at the end of the step, shared with telemetry
    images: int
    step_ms: float  # end of previous step to end of this one (device timeline on a GPU)
    data_wait_ms: float  # exposed input stall: idle until the batch was handed over (GPU: the device's gap)
    h2d_ms: Optional[float]
    forward_ms: Optional[float]  # forward pass and loss
    backward_ms: Optional[float]  # backward compute until the last gradient is ready
    comm_wait_ms: Optional[float]  # after the last gradient, waiting for AllReduce (exposed comm)
    optimizer_ms: Optional[float]  # 0.0 on steps where gradients only accumulate
    other_ms: Optional[float]  # bookkeeping, logging: step_ms minus every measured part
    optimizer_stepped: bool
    comm_ms: Optional[float] = None  # first bucket launch to last bucket done; None without DDP
    buckets: list[BucketSample] = field(default_factory=list)
    timing: Timing = "host"  # cuda_sync: the GPU check's reference
    host_data_wait_ms: Optional[float] = None  # the host blocked on the loader (on a GPU, not the stall)
    epoch_boundary: bool = False  # the first step of an epoch: not steady state
    epoch_end_ms: Optional[float] = None  # the previous epoch's end-of-epoch work, carried by this step
    mosaic: bool = True  # False: trained after Ultralytics' close_mosaic (the worker's "epoch" mode only)


@dataclass
class RankInfo:
    """Written once per rank when training is set up."""

    rank: int
    local_rank: int
    world_size: int
    pid: int
    hostname: str
    device: str  # e.g. "cpu", "cuda:1"
    device_name: str
    backend: Optional[Backend]  # None without a process group
    batch_per_rank: int
    accumulate: int
    workers_requested: int
    workers_effective: int  # after Ultralytics' cap min(cpu_count // GPUs on the machine, workers, batches)
    pin_memory_effective: bool
    amp_effective: bool
    dataset_images: int
    batches_per_epoch: int
    ddp_bucket_cap_mb: Optional[float]
    torch_threads: int
    t_start_s: float
    # What ran, read back from torch after Ultralytics' set-up (None in records written before these knobs)
    compiled: Optional[bool] = None  # the model is a torch.compile module (Ultralytics falls back silently)
    deterministic_effective: Optional[bool] = None  # torch.are_deterministic_algorithms_enabled()
    channels_last_effective: Optional[bool] = None  # the convolution weights are in NHWC memory format
    node: Optional[int] = None  # the scan's node this rank ran on (0: the one whose telemetry the scan holds)
    optimizer_effective: Optional[str] = None  # type(trainer.optimizer).__name__: the optimizer Ultralytics built


@dataclass
class RankEnd:
    rank: int
    status: Literal["ok", "error", "oom"]
    peak_mem_mib: Optional[float]
    mem_source: Literal["cuda_reserved", "rss"]
    peak_mem_allocated_mib: Optional[float] = None
    device_mem_total_mib: Optional[float] = None
    last_step: Optional[int] = None
    error: Optional[str] = None
    t_end_s: float = 0.0
    setup_s: Optional[float] = None  # trainer construction to the first step: dataset scan, caching, model, DDP


@dataclass
class RankRecords:
    """Everything one rank wrote, parsed."""

    rank: int
    info: Optional[RankInfo]
    steps: list[StepSample]
    end: Optional[RankEnd]
