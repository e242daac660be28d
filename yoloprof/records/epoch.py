"""What an epoch and a run hold beyond their steady steps (measured), and what they will cost (predicted).

EpochCosts is measured once per scan per world size (yoloprof.scan.epoch_job, the worker's "epoch"
mode): Ultralytics' own validation, checkpoint saving and epoch-end work, timed on the scan's ranks.
EpochPrediction is computed from a TrialResult, the EpochCosts of its world size and the RunPlan
(yoloprof.analysis.epoch): pure arithmetic over records, so `yoloprof report` can re-price a scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401
from yoloprof.records.trial import Knobs


@dataclass
class EpochPart:
    """One epoch-end part, timed `len(s)` times (seconds each, slowest rank)."""

    s: list[float] = field(default_factory=list)

    @property
    def estimate(self) -> Optional[float]:
        """The later passes: the first one pays for start-up a real epoch has paid already."""
        later = self.s[1:] or self.s
        return sum(later) / len(later) if later else None

    @property
    def low(self) -> Optional[float]:
        return min(self.s) if self.s else None

    @property
    def high(self) -> Optional[float]:
        return max(self.s) if self.s else None


@dataclass
class EpochCosts:
    """Measured on `world_size` ranks with `knobs`; every time is the slowest rank's, in seconds."""

    world_size: int
    device: str
    knobs: Knobs
    status: Literal["ok", "error", "timeout", "skipped"]
    error: Optional[str] = None
    # validation as `yolo train` runs it at each epoch end (every rank validates its shard), over a subset of
    # the val split where it is large: each pass's time is scaled by val_images_total / val_images_timed
    val: EpochPart = field(default_factory=EpochPart)
    val_images_total: int = 0
    val_images_timed: int = 0
    save: EpochPart = field(default_factory=EpochPart)  # save_model(): last.pt (and best.pt when it improves)
    end: EpochPart = field(default_factory=EpochPart)  # EMA attributes, metrics csv, memory clearing, stop broadcast
    # the first step of an epoch beyond a steady step (the loader's restart, sampler reshuffle), ms
    boundary_ms: Optional[float] = None
    # once per run: trainer set-up to the first step (dataset scan, caching, model, DDP), seconds
    setup_s: Optional[float] = None
    # once per run: a fresh process's start to the trainer's construction (interpreter, torch and Ultralytics
    # imports), seconds, the slowest rank's
    startup_s: Optional[float] = None
    # once per run, after the last epoch: final_eval (strip last.pt and best.pt, validate best.pt with the run's plots)
    # and plot_metrics, seconds, the slowest rank's, its validation scaled to the whole split as `val` is
    final_s: Optional[float] = None
    final_plots: Optional[bool] = None
    # the last close_mosaic epochs: steady img/s without mosaic over with it, measured in one run back to back
    no_mosaic_ratio: Optional[float] = None
    no_mosaic_ratio_ci: Optional[list[float]] = None  # [low, high], 95%
    notes: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION


@dataclass
class RankEpochParts:
    """What one rank of an "epoch" trial measured (kind "epoch_parts" in rank<r>.jsonl), seconds per pass.

    Every span lies between two barriers, so each rank measures the span of the slowest; the scan side
    (yoloprof.analysis.epoch_costs) still takes the largest over ranks."""

    rank: int
    setup_s: Optional[float] = None  # trainer construction to the first training step's start
    startup_s: Optional[float] = None  # the rank process's start to the trainer's construction (interpreter, imports)
    mosaic_off_step: Optional[int] = None  # the first step trained after close_mosaic
    mosaic_back_step: Optional[int] = None  # the first step with mosaic reopened (its last phase)
    end_s: list[float] = field(default_factory=list)
    val_s: list[float] = field(default_factory=list)  # the whole validate() of each pass, over the timed batches
    val_loop_s: list[float] = field(default_factory=list)  # of which the batch loop: the part that grows with images
    val_images: list[int] = field(default_factory=list)  # images this rank validated in each pass
    val_capped: bool = False  # the loader was cut at val_batches per rank: a subset of the split was timed
    val_batches: int = 0  # batches per rank and pass
    val_images_total: int = 0  # the whole val split
    save_s: list[float] = field(default_factory=list)
    # once after the last epoch: final_eval (strip the checkpoints, validate best.pt) and the plots, one pass
    final_s: Optional[float] = None
    final_plots: Optional[bool] = None  # whether the run plots (the user's plots=, else Ultralytics' True)
    final_val_loop_s: Optional[float] = None  # its validation's batch loop, over the capped loader
    final_val_images: Optional[int] = None


@dataclass
class RunPlan:
    """The training run the prediction is for: from --epochs / --cfg, else Ultralytics' defaults."""

    epochs: int = 100
    close_mosaic: int = 10
    warmup_epochs: float = 3.0
    nbs: int = 64
    val: bool = True
    save: bool = True
    gpu_hour_price: Optional[float] = None  # per GPU-hour (per rank-hour on CPU ranks)
    currency: str = "USD"
    source: str = "Ultralytics defaults"  # where epochs etc. came from: "--epochs", "your config", ...


@dataclass
class EpochPrediction:
    """One trial's predicted epoch and run; every figure has a 95% band (low/high), None where unmeasured."""

    trial_id: str
    epoch_s: Optional[float] = None
    epoch_s_low: Optional[float] = None
    epoch_s_high: Optional[float] = None
    steps_s: Optional[float] = None  # the epoch's training steps at the trial's steady rate
    boundary_s: Optional[float] = None
    val_s: Optional[float] = None
    save_s: Optional[float] = None
    end_s: Optional[float] = None
    run_h: Optional[float] = None
    run_h_low: Optional[float] = None
    run_h_high: Optional[float] = None
    no_mosaic_epoch_s: Optional[float] = None  # an epoch of the last close_mosaic ones
    once_s: Optional[float] = None  # set-up, warm-up's extra optimizer steps, the final validation
    compile_s: Optional[float] = None  # torch.compile's one-time cost on the first steps (in once_s)
    startup_s: Optional[float] = None  # the process's start to the trainer (in once_s)
    final_s: Optional[float] = None  # after the last epoch: final validation of best.pt and plots (in once_s)
    cost_epoch: Optional[float] = None
    cost_run: Optional[float] = None
    energy_epoch_kwh: Optional[float] = None
    energy_run_kwh: Optional[float] = None
    parts_missing: list[str] = field(default_factory=list)  # what the figure could not include, and why
    # A dataset larger than the memory the machine can spare (yoloprof.analysis.dataset_fit): the steps run at
    # the lower of the trial's rate and the loaders' cold rate; None where the data fit or that rate is n/a
    cold_img_per_s: Optional[float] = None  # the cold input rate the steps were priced against
    epoch_s_warm: Optional[float] = None  # the epoch at the trial's own (warm) rate, for comparison
