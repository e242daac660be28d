"""What the input pipeline, the compute and the link can do alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401
from yoloprof.records.kinds import Backend, Device, Timing


# ---------------------------------------------------------------------------------------------
# Ceilings: what the input pipeline, the model's compute and the link can do alone (ceilings/*.json)


@dataclass
class AllReducePoint:
    size_bytes: int
    time_us: float  # per AllReduce: mean over timed iterations, slowest rank
    algbw_gbs: float  # size / time (GB/s, 1e9 bytes)
    busbw_gbs: float  # algbw x 2(n-1)/n, comparable with nccl-tests
    iters: int
    is_bucket: bool = False  # one of the model's own DDP bucket sizes
    # GPU only (None on CPU and in older records): the host's time to enqueue one op in the timed window,
    # slowest rank. Close to time_us, the window was timed by Python's enqueue rate rather than the link.
    enqueue_us: Optional[float] = None


@dataclass
class AllReduceCeiling:
    backend: Backend
    world_size: int
    nccl: str  # preset name ("default" on gloo)
    device: Device
    dtype: str
    timing: Timing
    points: list[AllReducePoint]
    status: str = "ok"
    error: Optional[str] = None
    nnodes: int = 1  # nodes the ranks spanned: over 1, the AllReduce crossed the inter-node link


@dataclass
class LoaderPoint:
    workers: int  # asked, per rank
    workers_effective: int  # after Ultralytics' cap
    ranks: int  # loaders run at once, one per rank, as in training
    batch_per_rank: int
    batches: int  # timed batches per rank
    img_per_s_rank: Optional[float]  # median rank
    img_per_s_machine: Optional[float]  # all ranks together
    cpu_pct: Optional[float]  # CPU of all loader processes and their workers (100 = one core)
    status: str = "ok"
    error: Optional[str] = None
    # Recorded since the probe loads as a trial's rank does; None / [] in older records (unknown: they pinned
    # whenever a GPU was there, fed cuda:0 from every rank and had no per-rank shard).
    pin_memory: Optional[bool] = None  # asked, as the trials' pin_memory knob
    pin_memory_effective: Optional[bool] = None  # after Ultralytics' `nd > 0 and pin_memory`
    batches_per_epoch: Optional[int] = None  # per rank: the rank's shard (DistributedSampler) over batch_per_rank
    devices: list[str] = field(default_factory=list)  # per rank, the device its loader fed ("cuda:N" CUDA index, "cpu")
    # Recorded since the probe times each batch and reads cold too; None in older records (not measured).
    cache: Optional[str] = None  # the Ultralytics cache it loaded with; None: the ceiling's `cache`
    # warm: the window that follows the warm-up, files as the page cache held them (95% batch-means interval,
    # all ranks' block rates summed: yoloprof.analysis.intervals.summed_throughput)
    img_per_s_machine_ci_low: Optional[float] = None
    img_per_s_machine_ci_high: Optional[float] = None
    resident_frac_warm: Optional[float] = None  # of the files' pages in the page cache when the warm window began
    # cold: the same loaders after every file they read was evicted from the page cache (fadvise DONTNEED),
    # timed within one pass of the sampler, so no file is read twice; None with `cold_error` where not measured
    img_per_s_rank_cold: Optional[float] = None
    img_per_s_machine_cold: Optional[float] = None
    img_per_s_machine_cold_ci_low: Optional[float] = None
    img_per_s_machine_cold_ci_high: Optional[float] = None
    cold_batches: Optional[int] = None  # timed per rank
    cold_error: Optional[str] = None  # why the cold rate is n/a (eviction refused or ignored, too few batches...)
    evicted_files: Optional[int] = None
    evicted_bytes: Optional[int] = None  # what the loaders read from: the images (and any .npy cache beside them)
    resident_frac_evicted: Optional[float] = None  # of those pages still in the page cache after the eviction (mincore)


@dataclass
class LoaderCeiling:
    data: str
    imgsz: int
    cache: str
    points: list[LoaderPoint]


@dataclass
class ComputePoint:
    batch: int  # per rank (one device)
    amp: Union[bool, str]  # as Knobs.amp: True (fp16), "bf16", False
    status: Literal["ok", "oom", "error", "timeout"]
    img_per_s: Optional[float] = None  # one device, no data loading
    step_ms_p50: Optional[float] = None
    peak_mem_mib: Optional[float] = None
    mem_source: Optional[str] = None
    trial_id: Optional[str] = None
    error: Optional[str] = None
    # The batch that ran: below `batch` where the dataset holds fewer images (Ultralytics caps the batch at
    # the dataset's size); None: not recorded (older records), read as `batch`
    batch_effective: Optional[int] = None

    @property
    def batch_ran(self) -> int:
        """What memory and speed were measured at: the batch that ran where recorded, else the one asked."""
        return self.batch_effective if self.batch_effective is not None else self.batch

    @property
    def capped(self) -> bool:
        return self.batch_effective is not None and self.batch_effective < self.batch


@dataclass
class ComputeCeiling:
    device: str
    device_name: str
    device_mem_total_mib: Optional[float]
    points: list[ComputePoint]
    max_batch_fit: dict[str, int] = field(
        default_factory=dict
    )  # "amp"/"bf16"/"fp32" -> largest batch within the margin
    mem_margin_frac: float = 0.10
    note: Optional[str] = None
