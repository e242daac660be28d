"""Records of a watched training run (`yoloprof train`): per rank and per epoch, its steps summarised.

A 300-epoch run is not kept step by step: each rank appends one RunEpoch line per epoch to
RUN_DIR/yoloprof/rank<r>.jsonl (about 1 KiB), flushed as the epoch ends, so a killed run keeps every
finished epoch. The run folder is Ultralytics' own; yoloprof adds the `yoloprof/` folder in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class RunStart:
    """A rank's first line: who it is and what the run was predicted to do (from the scan of its config)."""

    rank: int
    world_size: int
    device: str  # "cpu" or "cuda:N"
    pid: int
    t_start_s: float  # wall clock at the trainer's set-up
    timing: Literal["host", "cuda_event"]  # the clock of the steps' spans
    epochs: int  # the run's planned epochs
    close_mosaic: int  # its last epochs without mosaic
    # the scan's prediction for this configuration (rank 0's line; None: the config did not come from a scan)
    predicted_epoch_s: Optional[float] = None
    predicted_low_s: Optional[float] = None
    predicted_high_s: Optional[float] = None
    predicted_no_mosaic_epoch_s: Optional[float] = None
    prediction_from: Optional[str] = None  # the scan folder and trial
    prediction_missing: list[str] = field(default_factory=list)  # what the scan's epoch figure leaves out
    kind: Literal["start"] = "start"


@dataclass
class RunEpoch:
    """One epoch on one rank. Steps: the spans between Ultralytics' batch callbacks; the first step of each
    epoch is kept apart (its data wait holds the loader's start, the workers' fork on a fresh epoch)."""

    rank: int
    epoch: int  # 0-based, as Ultralytics' trainer.epoch
    steps: int  # training steps timed this epoch, the first one included
    images: int  # images this rank trained on
    train_s: float  # on_train_epoch_start -> on_train_epoch_end (wall): the epoch's steps
    # the steady steps (each epoch's first left out: it carries the loader's start), means in ms
    step_ms_mean: Optional[float]
    step_ms_p50: Optional[float]
    step_ms_p90: Optional[float]
    busy_ms_p50: Optional[float]  # the rank's own work: step minus data wait minus exposed AllReduce
    data_wait_ms_mean: Optional[float]
    comm_wait_ms_mean: Optional[float]  # exposed AllReduce (None: one rank)
    forward_ms_mean: Optional[float]
    backward_ms_mean: Optional[float]
    optimizer_ms_mean: Optional[float]
    first_step_ms: Optional[float]  # the epoch's first step, with its wait for the loader (None: no step)
    end_s: Optional[float]  # on_train_epoch_end -> on_fit_epoch_end: validation, metrics, checkpoint saving
    epoch_s: Optional[float]  # rank 0: between this epoch's results.csv row and the previous one's (the first:
    # since training started), as Ultralytics times them; the other ranks: Ultralytics' epoch_time (its loop)
    peak_mem_mib: Optional[float]  # this epoch's peak: the allocator's reserved memory (GPU), the RSS high-water (CPU)
    t_end_s: float  # wall clock at the epoch's end
    timing: Literal["host", "cuda_event", "cuda_sync", "host_after_device_error"] = "host"
    kind: Literal["epoch"] = "epoch"


@dataclass
class Drift:
    """A change in the run, called at the epoch it began with the figures that show it."""

    kind: Literal["data_wait", "straggler", "memory", "clocks", "slower", "outside_band"]
    epoch: int  # 0-based, the first epoch that shows it
    rank: Optional[int]  # the rank it concerns; None: the whole run
    evidence: str  # one sentence with the numbers


@dataclass
class RunEpochView:
    """One epoch of the run as the report and the live line show it: the slowest rank's figures."""

    epoch: int
    epoch_s: Optional[float]  # rank 0's: as Ultralytics' results.csv times the epoch
    predicted_s: Optional[float]  # the scan's, for this epoch (mosaic or not); None for the first epoch
    train_s: float  # the slowest rank's steps
    end_s: Optional[float]  # rank 0's validation, metrics and saving
    img_per_s: float  # all ranks' images over the slowest rank's train_s
    data_wait_frac: float  # of the slowest rank's step time
    bound: str  # "input", "compute", "straggler"
    rank_train_s: list[float] = field(default_factory=list)
    # telemetry over the epoch's steps (yoloprof train samples it every second, NVML and /proc); None: not measured
    gpu_util_pct: Optional[float] = None  # SM busy, mean over the samples and GPUs
    sm_clock_mhz_min: Optional[float] = None  # the slowest GPU's mean SM clock
    gpu_temp_c_max: Optional[float] = None
    throttle_reasons: list[str] = field(default_factory=list)  # NVML's slowdown reasons seen in the epoch
    cpu_util_pct: Optional[float] = None  # every core, 100 = all busy
    loader_cpu_pct: Optional[float] = None  # the DataLoader workers' CPU, summed (100 = one core)
    telemetry_samples: int = 0


@dataclass
class RunSummary:
    """The run against its prediction: what `yoloprof train` prints at the end and the run report shows."""

    run_dir: str
    world_size: int
    epochs: list[RunEpochView]
    drifts: list[Drift]
    predicted_epoch_s: Optional[float] = None  # the scan's prediction for this configuration
    predicted_low_s: Optional[float] = None
    predicted_high_s: Optional[float] = None
    prediction_from: Optional[str] = None  # the scan folder and trial it came from
    prediction_missing: list[str] = field(default_factory=list)  # what the scan's epoch figure leaves out
    measured_epoch_s: Optional[float] = None  # the median steady epoch (the first left out)
    verdict: str = ""
    telemetry: list[str] = field(default_factory=list)  # per node: what was sampled, or why not
