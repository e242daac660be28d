"""GPU and CPU samples taken while a trial runs, and their summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from yoloprof.records.base import SCHEMA_VERSION  # noqa: F401


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
    # NVML's used memory on each GPU (order of `gpus`) before the trial's launch started: the baseline of
    # what its ranks hold. A pool's trials share the reading taken before the pool launched. None: not read.
    mem_used_before_launch_mib: Optional[list[Optional[float]]] = None


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
