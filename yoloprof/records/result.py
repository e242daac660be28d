"""What the scan concludes from a trial, and the ranking of all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from yoloprof.records.telemetry import TelemetrySummary
from yoloprof.records.trial import Knobs
from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401
from yoloprof.records.kinds import TrialStatus


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
    status: TrialStatus
    knobs: Knobs
    world_size: int
    device: str
    img_per_s: Optional[float] = None
    img_per_s_p10: Optional[float] = None  # per-step spread of the global rate
    img_per_s_p90: Optional[float] = None
    # 95% interval of img_per_s within this run (batch means over its steady steps, yoloprof.analysis.intervals);
    # None with a method saying why where it could not be computed (too few steps), None without one in old records
    img_per_s_ci_low: Optional[float] = None
    img_per_s_ci_high: Optional[float] = None
    img_per_s_ci_method: Optional[str] = None
    repeat_of: Optional[str] = None  # a confirmation run of the same configuration as this trial id
    step_ms_p50: Optional[float] = None
    step_ms_p90: Optional[float] = None
    data_wait_frac: Optional[float] = None
    data_wait_frac_ci: Optional[list[float]] = None  # [low, high], 95%, batch means (median rank's bounds)
    comm_ms_p50: Optional[float] = None
    comm_wait_ms_p50: Optional[float] = None
    comm_frac: Optional[float] = None
    comm_frac_ci: Optional[list[float]] = None  # [low, high], 95%, batch means (median rank's bounds)
    peak_mem_mib: Optional[float] = None
    device_mem_total_mib: Optional[float] = None
    mem_overhead_mib: Optional[float] = None  # per rank beyond the allocator (context, NCCL, DDP buckets); GPU only
    gpu_util_pct: Optional[float] = None  # mean SM utilisation over the measured steps
    telemetry: Optional[TelemetrySummary] = None
    rank_skew: Optional[float] = None  # median per-step excess of one rank's own work over another's, relative
    slow_rank: Optional[int] = None  # the pair behind rank_skew
    fast_rank: Optional[int] = None
    breakdown: Optional[Breakdown] = None
    ranks: list[RankStat] = field(default_factory=list)
    bucket_sizes_bytes: list[int] = field(default_factory=list)
    bucket_allreduce_ms_p50: list[float] = field(default_factory=list)  # per bucket, median rank and step
    measured_steps: int = 0  # steady-state steps every rank recorded (epoch-boundary steps left out)
    epoch_boundary_steps: int = 0  # measured steps that started an epoch, left out of the figures above
    epoch_end_ms_p50: Optional[float] = None  # end-of-epoch work a boundary step carried (slowest rank)
    epoch_boundary_ms_p50: Optional[float] = None  # a boundary step's time over the steady median step
    batches_per_epoch: Optional[int] = None
    setup_s: Optional[float] = None  # the slowest rank's trainer set-up to its first step (a run pays it once)
    # The warm-up steps' time beyond as many steady steps, slowest rank: a one-time cost a run pays on its first
    # steps (torch.compile's compilation, cuDNN's algorithm search, the allocator's growth)
    warmup_extra_s: Optional[float] = None
    warmup_steps_timed: int = 0  # warm-up steps behind warmup_extra_s (compile may recompile past the first)
    workers_effective: Optional[int] = None
    amp_effective: Optional[bool] = None
    # The batch per rank that ran (yoloprof.records.trial.batch_that_runs over the ranks' info lines): below
    # knobs.batch // world_size where the dataset, or each rank's shard of it, holds fewer images than a batch.
    # None: not recorded (records written before it, or no rank got as far as its set-up)
    batch_per_rank_effective: Optional[int] = None
    accumulate: Optional[int] = None
    # The optimizer the trial ran: read back from its ranks (RankInfo.optimizer_effective), else its spec's name
    # (records from before the read-back, or no rank got as far as its set-up); None in results from before both
    optimizer: Optional[str] = None
    wall_s: Optional[float] = None
    error: Optional[str] = None
    stderr_tail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    @property
    def batch_effective(self) -> Optional[int]:
        """The global batch that ran (per rank x world size); None where not recorded."""
        if self.batch_per_rank_effective is None:
            return None
        return self.batch_per_rank_effective * max(self.world_size, 1)

    @property
    def batch_ran(self) -> int:
        """The global batch that ran where recorded, else the one asked (records written before it)."""
        return self.batch_effective if self.batch_effective is not None else self.knobs.batch

    @property
    def batch_capped(self) -> bool:
        """It ran a smaller batch than it asked (a dataset, or a rank's shard of it, smaller than a batch)."""
        return self.batch_effective is not None and self.batch_effective < self.knobs.batch


@dataclass
class Verdict:
    trial_id: str
    position: Optional[int]  # 1 = best; None for trials that did not finish
    bottleneck: Optional[str]  # input | compute | communication | memory | straggler
    evidence: str
    label: Optional[str] = None  # a finer name where the evidence shows one, e.g. "input (CPU-starved)"
    bottlenecks: list[str] = field(default_factory=list)  # every bound the evidence cannot tell apart, primary first
    tied_with_best: bool = False  # its configuration is not beyond the noise of the fastest one
    img_per_s: Optional[float] = None  # its configuration's combined figure: the mean over its runs
    img_per_s_ci_low: Optional[float] = None  # 95% interval of that mean (run-to-run spread where measured)
    img_per_s_ci_high: Optional[float] = None
    uncertainty: Optional[str] = None  # how that interval was computed
    runs: list[str] = field(default_factory=list)  # trial ids of its configuration, the original first
    repeat_of: Optional[str] = None  # this trial repeats that one's configuration


@dataclass
class Ranking:
    verdicts: list[Verdict]
    best_trial_id: Optional[str]  # the recommended trial (best.yaml): the cheapest of those tied with the fastest
    recommended_trial_id: Optional[str] = None
    fastest_trial_id: Optional[str] = None  # first run of the configuration with the highest combined img/s
    tied: list[str] = field(default_factory=list)  # first trial ids of the configurations tied with the fastest
    recommendation_reason: Optional[str] = None
    run_to_run_rel: Optional[float] = None  # pooled relative spread of repeated runs of one configuration
    run_to_run_df: int = 0  # its degrees of freedom: sum over repeated configurations of (runs - 1)
    run_to_run_configs: int = 0  # how many configurations were repeated
