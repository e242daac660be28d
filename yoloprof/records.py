"""The typed record chain: TrialSpec -> rank records -> TrialResult -> Ranking -> report.

Every record is a dataclass that round-trips through JSON (`to_dict` / `from_dict`), so a scan
folder can be re-analysed and re-rendered without the hardware it was measured on. Units live in
field names. A value that could not be measured is None ("n/a"), never a made-up number.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1

T = typing.TypeVar("T")


class RecordError(ValueError):
    """A saved record that cannot be read back (corrupt, truncated, or from another schema)."""


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_decode(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _decode(item, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict) -> T:
    """Build a record from its dict, ignoring unknown keys so older readers survive newer fields."""
    if not isinstance(data, dict):
        raise RecordError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _decode(hints[f.name], data[f.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise RecordError(f"{cls.__name__}: {exc}") from None


def to_dict(record: Any) -> dict:
    return dataclasses.asdict(record)


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temp file + rename) so an interrupted scan never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(payload) if dataclasses.is_dataclass(payload) else payload
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, cls: type[T] | None = None) -> Any:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path} cannot be read ({exc}); the file is corrupt or truncated") from None
    return from_dict(cls, data) if cls is not None else data


# ---------------------------------------------------------------------------------------------
# What a trial is


@dataclass(frozen=True)
class Knobs:
    """The settings a scan varies. `batch` is global (all ranks together), as in `yolo train`."""

    batch: int
    workers: int
    amp: bool
    pin_memory: bool
    cache: str  # "off" | "ram" | "disk"
    nccl: str  # an NCCL preset name from yoloprof.plan.NCCL_PRESETS


@dataclass
class TrialSpec:
    trial_id: str
    knobs: Knobs
    world_size: int
    device: str  # "cpu" or "cuda"
    gpus: list[int]  # CUDA indices as the scan process sees them; empty on CPU
    model: str
    data: str  # absolute path of the data yaml
    imgsz: int
    optimizer: str
    warmup_steps: int
    measured_steps: int
    env: dict[str, str]  # variables set for this trial only (NCCL preset, OMP_NUM_THREADS)
    mode: str = "train"  # "train", or "compute": one static batch on the device, no data loading
    overrides: dict[str, Any] = field(default_factory=dict)  # extra Ultralytics arguments (compute probe: nbs)
    schema: int = SCHEMA_VERSION

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.measured_steps


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
    """One training iteration on one rank. Phase times sum to step_ms together with other_ms."""

    rank: int
    step: int  # 0-based iteration index within the trial, identical on every rank
    epoch: int
    warmup: bool
    t_end_s: float  # wall clock (time.time) at the end of the step, shared with telemetry
    images: int
    step_ms: float  # end of previous step to end of this one, host clock
    data_wait_ms: float  # blocked waiting for the next batch, host clock
    h2d_ms: Optional[float]
    forward_ms: Optional[float]  # forward pass and loss
    backward_ms: Optional[float]  # backward compute until the last gradient is ready
    comm_wait_ms: Optional[float]  # after the last gradient, waiting for AllReduce (exposed comm)
    optimizer_ms: Optional[float]  # 0.0 on steps where gradients only accumulate
    other_ms: Optional[float]  # bookkeeping, logging, epoch ends: step_ms minus the phases
    optimizer_stepped: bool
    comm_ms: Optional[float] = None  # first bucket launch to last bucket done; None without DDP
    buckets: list[BucketSample] = field(default_factory=list)
    timing: str = "host"  # "host" or "cuda_event" for the device phases


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
    backend: Optional[str]  # "gloo", "nccl", or None without a process group
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


@dataclass
class RankEnd:
    rank: int
    status: str  # "ok" | "error" | "oom"
    peak_mem_mib: Optional[float]
    mem_source: str  # "cuda_reserved" | "rss"
    peak_mem_allocated_mib: Optional[float] = None
    device_mem_total_mib: Optional[float] = None
    last_step: Optional[int] = None
    error: Optional[str] = None
    t_end_s: float = 0.0


@dataclass
class RankRecords:
    """Everything one rank wrote, parsed."""

    rank: int
    info: Optional[RankInfo]
    steps: list[StepSample]
    end: Optional[RankEnd]


# ---------------------------------------------------------------------------------------------
# Telemetry sampled while a trial runs (trials/<id>/telemetry.jsonl: a header, then samples)


@dataclass
class TelemetryHeader:
    interval_s: float
    gpus: list[int]  # CUDA indices as the scan sees them
    nvml_indices: list[int]  # the physical NVML index of each, same order (CUDA_VISIBLE_DEVICES may reorder)
    gpu_status: str  # "ok", or "not measured: <reason>"
    unsupported: list[str] = field(default_factory=list)  # GpuSample fields the device answered NotSupported
    t_start_s: float = 0.0


@dataclass
class GpuSample:
    """One NVML reading of one GPU. None: the device does not support the field."""

    t_s: float  # time.time(), the clock of StepSample.t_end_s
    gpu: int
    sm_util_pct: Optional[float] = None
    mem_util_pct: Optional[float] = None
    mem_used_mib: Optional[float] = None
    mem_total_mib: Optional[float] = None
    power_w: Optional[float] = None
    energy_j: Optional[float] = None  # cumulative counter since the driver loaded
    sm_clock_mhz: Optional[float] = None
    mem_clock_mhz: Optional[float] = None
    temp_c: Optional[float] = None
    throttle_reasons: Optional[list[str]] = None
    pcie_tx_mib_s: Optional[float] = None
    pcie_rx_mib_s: Optional[float] = None
    nvlink_tx_mib_s: Optional[float] = None
    nvlink_rx_mib_s: Optional[float] = None


@dataclass
class CpuSample:
    t_s: float
    cpu_pct_per_core: list[float]
    loader_workers: int  # DataLoader worker processes alive under the trial
    loader_cpu_pct: float  # their CPU, summed (100 = one core busy)
    loader_rss_mib: float
    ranks_cpu_pct: float  # the rank processes' own CPU, summed
    ranks_rss_mib: float
    mem_available_mib: float


@dataclass
class TelemetrySummary:
    """Telemetry over a trial's measured steps; None where not measured (see gpu_status)."""

    gpu_status: str
    gpu_util_mean_pct: Optional[float] = None
    gpu_util_p10_pct: Optional[float] = None
    gpu_mem_used_peak_mib: Optional[float] = None
    power_w_mean: Optional[float] = None
    energy_j: Optional[float] = None
    energy_j_per_img: Optional[float] = None
    sm_clock_mhz_mean: Optional[float] = None
    throttle_reasons: list[str] = field(default_factory=list)
    cpu_util_mean_pct: Optional[float] = None  # all cores, 100 = every core busy
    cpu_busy_cores_frac: Optional[float] = None  # share of samples with every core above 90%
    loader_cpu_pct_mean: Optional[float] = None
    loader_rss_peak_mib: Optional[float] = None
    mem_available_min_mib: Optional[float] = None
    samples: int = 0


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


@dataclass
class AllReduceCeiling:
    backend: str  # "nccl" | "gloo"
    world_size: int
    nccl: str  # preset name ("default" on gloo)
    device: str  # "cuda" | "cpu"
    dtype: str
    timing: str  # "cuda_event" | "host"
    points: list[AllReducePoint]
    status: str = "ok"
    error: Optional[str] = None


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


@dataclass
class LoaderCeiling:
    data: str
    imgsz: int
    cache: str
    points: list[LoaderPoint]


@dataclass
class ComputePoint:
    batch: int  # per rank (one device)
    amp: bool
    status: str  # ok | oom | error | timeout
    img_per_s: Optional[float] = None  # one device, no data loading
    step_ms_p50: Optional[float] = None
    peak_mem_mib: Optional[float] = None
    mem_source: Optional[str] = None
    trial_id: Optional[str] = None
    error: Optional[str] = None


@dataclass
class ComputeCeiling:
    device: str
    device_name: str
    device_mem_total_mib: Optional[float]
    points: list[ComputePoint]
    max_batch_fit: dict[str, int] = field(default_factory=dict)  # "amp"/"fp32" -> largest batch within the margin
    mem_margin_frac: float = 0.10
    note: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# What the parent concludes


@dataclass
class Breakdown:
    """Mean milliseconds per step by phase (median across ranks)."""

    data_wait_ms: float
    h2d_ms: Optional[float]
    forward_ms: Optional[float]
    backward_ms: Optional[float]
    comm_wait_ms: Optional[float]
    optimizer_ms: Optional[float]
    other_ms: Optional[float]
    step_ms: float


@dataclass
class RankStat:
    rank: int
    step_ms_p50: float
    busy_ms_p50: float  # step minus data wait and exposed comm: this rank's own work
    data_wait_ms_p50: float
    comm_wait_ms_p50: Optional[float]
    peak_mem_mib: Optional[float]
    breakdown: Optional[Breakdown] = None  # this rank's mean ms per step by phase


@dataclass
class TrialResult:
    trial_id: str
    status: str  # ok | error | timeout | oom | skipped | interrupted
    knobs: Knobs
    world_size: int
    device: str
    img_per_s: Optional[float] = None
    img_per_s_p10: Optional[float] = None  # per-step spread of the global rate
    img_per_s_p90: Optional[float] = None
    step_ms_p50: Optional[float] = None
    step_ms_p90: Optional[float] = None
    data_wait_frac: Optional[float] = None
    comm_ms_p50: Optional[float] = None
    comm_wait_ms_p50: Optional[float] = None
    comm_frac: Optional[float] = None
    peak_mem_mib: Optional[float] = None
    device_mem_total_mib: Optional[float] = None
    gpu_util_pct: Optional[float] = None  # mean SM utilisation over the measured steps
    telemetry: Optional[TelemetrySummary] = None
    rank_skew: Optional[float] = None  # slowest rank's busy time over the fastest's, minus 1
    breakdown: Optional[Breakdown] = None
    ranks: list[RankStat] = field(default_factory=list)
    bucket_sizes_bytes: list[int] = field(default_factory=list)
    bucket_allreduce_ms_p50: list[float] = field(default_factory=list)  # per bucket, median rank and step
    measured_steps: int = 0
    workers_effective: Optional[int] = None
    amp_effective: Optional[bool] = None
    accumulate: Optional[int] = None
    wall_s: Optional[float] = None
    error: Optional[str] = None
    stderr_tail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION


@dataclass
class Verdict:
    trial_id: str
    position: Optional[int]  # 1 = best; None for trials that did not finish
    bottleneck: Optional[str]  # input | compute | communication | memory | straggler
    evidence: str
    label: Optional[str] = None  # a finer name where the evidence shows one, e.g. "input (CPU-starved)"


@dataclass
class Ranking:
    verdicts: list[Verdict]
    best_trial_id: Optional[str]


# ---------------------------------------------------------------------------------------------
# The scan as a whole (scan.json)


@dataclass
class GpuInfo:
    index: int  # CUDA index as the scan process sees it
    name: str
    mem_total_mib: Optional[float]


@dataclass
class Environment:
    hostname: str
    platform: str
    python: str
    cpu_count: int
    ram_total_mib: Optional[float]
    torch: str
    ultralytics: str
    cuda: Optional[str]
    nccl: Optional[str]
    driver: Optional[str]
    gpus: list[GpuInfo]
    ultralytics_cfg_keys: list[str]  # what `ultralytics.cfg.get_cfg` accepts in this install
    env_vars: dict[str, str]  # allow-listed variables only (see yoloprof.environment)


@dataclass
class DatasetInfo:
    data: str
    train_images: int
    val_images: int
    classes: list[str]
    synthetic: bool
    image_size: Optional[str] = None  # "640x480" for the synthetic set


@dataclass
class ScanMeta:
    yoloprof_version: str
    created_s: float
    command: list[str]
    device: str
    world_size: int
    gpus: list[int]
    model: str
    imgsz: int
    optimizer: str
    warmup_steps: int
    measured_steps: int
    dataset: DatasetInfo
    axes: dict[str, list[Any]]
    dropped: list[str]  # knob values the plan left out, each with its reason
    trial_ids: list[str]
    environment: Environment
    trial_deviations: list[str]  # how a trial differs from plain `yolo train` with the same config
    specs: list[TrialSpec] = field(default_factory=list)  # the plan, in order: what --resume runs
    baselines: dict[str, str] = field(default_factory=dict)  # "Ultralytics defaults" / "your settings" -> trial id
    schema: int = SCHEMA_VERSION
