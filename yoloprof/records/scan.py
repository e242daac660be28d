"""The scan as a whole: scan.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from yoloprof.records.epoch import RunPlan
from yoloprof.records.search import Decision
from yoloprof.records.trial import TrialSpec
from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401


# ---------------------------------------------------------------------------------------------
# The scan as a whole (scan.json)


@dataclass
class GpuInfo:
    index: int  # CUDA index as the scan process sees it
    name: str
    mem_total_mib: Optional[float]
    capability: Optional[list[int]] = None  # CUDA compute capability [major, minor]; bf16 needs 8.0 (Ampere) or later


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
    # What torch.compile's inductor backend needs (Ultralytics checks the same, then trains uncompiled):
    cxx_compiler: Optional[str] = None  # the host C++ compiler (CPU kernels); None: none found, or not looked for
    # (looked for only by a CPU scan that asks for compile: finding it imports inductor, seconds)
    triton: Optional[str] = None  # Triton's version (CUDA kernels); None: not installed


@dataclass
class DatasetInfo:
    data: str
    train_images: int
    val_images: int
    classes: list[str]
    synthetic: bool
    image_size: Optional[str] = None  # "640x480" for the synthetic set
    task: str = "detect"  # the Ultralytics task the scan reads it for: detect, segment, pose, obb, classify
    # the image files' bytes on disk, per split (what an epoch reads through the page cache); None in older
    # records, or where a listed image could not be stat'ed
    train_bytes: Optional[int] = None
    val_bytes: Optional[int] = None


@dataclass
class MemoryBudget:
    """The memory the machine can spare for the dataset's pages and cache=ram copies when the scan began: the
    smaller of psutil's available memory and what the scan's cgroup limit leaves, unless --mem-limit replaces both.
    Kept in scan.json, so `yoloprof report` decides whether the dataset fits as the scan did."""

    available_mib: float  # what the fit test used
    source: Literal["psutil", "cgroup", "override"]
    psutil_available_mib: Optional[float] = None
    cgroup_limit_mib: Optional[float] = None  # the scan's cgroup memory limit; None: no limit applies
    cgroup_spare_mib: Optional[float] = None  # that limit - the cgroup's usage + its reclaimable file pages
    override: Optional[str] = None  # --mem-limit (or YOLOPROF_MEM_LIMIT) as given


@dataclass
class OptimizerPlan:
    """The optimizer the scan was asked for, and the planned run that resolves Ultralytics' `auto` for each trial
    (yoloprof.analysis.optimizer). Kept in scan.json so --resume and the report resolve it as the scan did,
    whatever `yoloprof report --epochs` later re-prices."""

    asked: str = "auto"  # "auto" (Ultralytics' default) or an optimizer name, as the user gave it
    source: str = "Ultralytics' default"  # where `asked` came from: "--optimizer", "your config", or the default
    images: int = 0  # the images an epoch of the planned run trains on (the train split, after a config's fraction)
    epochs: int = 100  # the planned run's epochs when the scan started (--epochs, the config's, else 100)
    nbs: int = 64  # the nominal batch size (the config's nbs, else Ultralytics' 64)


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
    optimizer: str  # what the user asked: "auto" (Ultralytics' default) or a name; each trial's spec names its own
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
    strategy: Literal["grid", "auto"] = (
        "grid"  # grid: the product of the knob lists; "auto": ceilings, then coordinate descent
    )
    budget_s: Optional[float] = None  # auto: the wall time the scan may spend, ceilings included
    precision: Optional[float] = None  # a trial measures until its images/s interval is within +-precision
    max_steps: Optional[int] = None
    decisions: list[Decision] = field(default_factory=list)  # auto: every choice with its reason
    run_plan: RunPlan = field(default_factory=RunPlan)  # the training run the epoch and cost figures predict
    train_cfg: Optional[str] = None  # --cfg: the user's Ultralytics training config (absolute path)
    train_cfg_args: dict[str, Any] = field(default_factory=dict)  # its arguments as read, held in every trial
    nnodes: int = 1  # nodes the scan spans (--nnodes); world_size counts the ranks of all of them
    rdzv_endpoint: Optional[str] = None  # node 0's HOST:PORT on several nodes
    task: str = "detect"  # the model's Ultralytics task (records from before tasks were detect)
    # how `optimizer` resolves per trial; None in scans from before it (their optimizer was a name, pinned)
    optimizer_plan: Optional[OptimizerPlan] = None
    memory: Optional[MemoryBudget] = None  # what the dataset-fits-in-memory test used; None in older scans
    schema: int = SCHEMA_VERSION
