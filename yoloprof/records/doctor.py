"""`yoloprof doctor`: what the machine looks like to torch and NVML, and the findings drawn from it.

Collected in probes/system_check.py and probes/collective_check.py, judged in yoloprof/analysis/doctor.py.
A value that could not be read is None ("n/a"), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from yoloprof.records.kinds import Backend, Device
from yoloprof.records.scan import GpuInfo


@dataclass
class NvmlGpu:
    nvml_index: int  # physical, as nvidia-smi numbers it
    cuda_index: Optional[int]  # as this process numbers it under CUDA_VISIBLE_DEVICES; None: hidden from CUDA
    name: Optional[str]
    mem_total_mib: Optional[float]
    uuid: Optional[str]


@dataclass
class GpuLink:
    """The path between two visible GPUs (CUDA indices), as NCCL will find it."""

    gpu_a: int
    gpu_b: int
    nvlink: Optional[bool]  # NVML's NVLink P2P status; None: the driver would not say
    pcie: Optional[str]  # nvidia-smi topo's level: internal, PIX, PXB, PHB, NODE, SYS


@dataclass
class CollectiveCheck:
    """One run of a few small AllReduces across every rank, with one set of extra variables."""

    backend: Backend
    world_size: int
    env: dict[str, str]  # added to the inherited environment, e.g. {"NCCL_P2P_DISABLE": "1"}
    status: Literal["ok", "hang", "error"]  # hang: killed at timeout_s; error: exited, or a wrong sum
    timeout_s: float
    wall_s: Optional[float]
    phases: list[str] = field(default_factory=list)  # where each rank was last: start, init, all_reduce, done
    error: Optional[str] = None


@dataclass
class DoctorReport:
    device: Device  # what a scan would run on
    device_asked: Optional[str]  # --device as given; "cpu": the user chose CPU
    ranks: int
    workers_per_rank: Optional[int]  # the most DataLoader workers a rank would start
    torch: str
    torch_cuda: Optional[str]  # the CUDA torch was built for; None: a CPU-only build
    torch_cuda_error: Optional[str]  # why torch.cuda would not start, when it would not
    torch_gpus: list[GpuInfo]
    nccl: Optional[str]
    nvml_status: str  # "ok" or "not measured: <why>"
    driver: Optional[str]
    driver_cuda: Optional[str]  # the newest CUDA the driver runs, "12.2"
    nvml_gpus: list[NvmlGpu]
    cuda_visible_devices: Optional[str]
    mapping_note: Optional[str]  # why the CUDA_VISIBLE_DEVICES list ends early, or cannot be matched to NVML's GPUs
    cuda_visible_count: Optional[int]  # NVML's GPUs that CUDA_VISIBLE_DEVICES leaves visible
    links: list[GpuLink]
    cpu_count: int
    ram_total_mib: Optional[float]
    ram_available_mib: Optional[float]
    shm_total_mib: Optional[float]
    shm_free_mib: Optional[float]
    nofile_soft: Optional[int]  # RLIMIT_NOFILE; None: unlimited or unreadable
    nofile_hard: Optional[int]
    collectives: list[CollectiveCheck] = field(default_factory=list)


@dataclass
class Finding:
    severity: Literal["error", "warn", "ok"]  # error: a scan would break; warn: it would be slow or misleading
    topic: str  # torch, gpus, nccl, collective, shm, nofile, cores, ram, topology
    what: str
    fix: Optional[str] = None
