"""The doctor's cheap readings: the GPUs as NVML sees them, the links between them, /dev/shm, open files.

No subprocess and no CUDA context: the scan takes these readings before every run, so they must
cost milliseconds. NVML numbers GPUs physically; each one is mapped to the CUDA index it has under
CUDA_VISIBLE_DEVICES (gpu_telemetry's mapping), so "torch sees 0 of NVML's 4 GPUs" can be told
apart from "CUDA_VISIBLE_DEVICES hides them". A reading NVML refuses is None, never a guess.
"""

from __future__ import annotations

import os
import resource
from itertools import combinations
from typing import Any, Callable, Mapping, Optional

import psutil

from yoloprof.probes.gpu_telemetry import MIB, MappingError, resolve_nvml_indices, visible_physical
from yoloprof.records import DoctorReport, Environment, GpuLink, NvmlGpu

SHM_PATH = "/dev/shm"
# nvmlDeviceGetTopologyCommonAncestor level -> nvidia-smi topo's name for it
TOPOLOGY = {
    "INTERNAL": "internal",
    "SINGLE": "PIX",
    "MULTIPLE": "PXB",
    "HOSTBRIDGE": "PHB",
    "NODE": "NODE",
    "SYSTEM": "SYS",
}


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cuda_version(v: Optional[int]) -> Optional[str]:
    """NVML's CUDA version integer -> "12.2" (12020 = 12 * 1000 + 2 * 10)."""
    return None if not v else f"{v // 1000}.{v % 1000 // 10}"


def shm_mib(
    path: str = SHM_PATH, statvfs: Callable[[str], Any] = os.statvfs
) -> tuple[Optional[float], Optional[float]]:
    """(size, free) of the shared-memory mount in MiB; (None, None) where there is none."""
    try:
        st = statvfs(path)
    except OSError:
        return None, None
    return st.f_blocks * st.f_frsize / MIB, st.f_bavail * st.f_frsize / MIB


def nofile() -> tuple[Optional[int], Optional[int]]:
    """RLIMIT_NOFILE (soft, hard); None for unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return tuple(None if v == resource.RLIM_INFINITY else int(v) for v in (soft, hard))  # type: ignore[return-value]


def torch_cuda_error() -> Optional[str]:
    """Why torch.cuda would not start (its own first line), without starting it where it would."""
    import torch

    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - the message is the finding
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _link(nvml: Any, ha: Any, hb: Any, a: int, b: int) -> GpuLink:
    nv = _ask(nvml, lambda: nvml.nvmlDeviceGetP2PStatus(ha, hb, nvml.NVML_P2P_CAPS_INDEX_NVLINK))
    level = _ask(nvml, lambda: nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
    names = {getattr(nvml, f"NVML_TOPOLOGY_{k}", None): v for k, v in TOPOLOGY.items()}
    return GpuLink(a, b, None if nv is None else nv == nvml.NVML_P2P_STATUS_OK, names.get(level))


def _ask(nvml: Any, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except nvml.NVMLError:  # NotSupported on this board or driver: n/a
        return None


def _read(environ: Mapping[str, str], nvml: Any) -> dict:
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    physical: list[int] = []
    visible: Optional[int] = None
    try:
        physical, why = visible_physical(environ, nvml)
        visible = len(physical)
        resolve_nvml_indices(list(range(visible)), environ, nvml)  # mixed models: CUDA's order is not NVML's
    except MappingError as exc:  # MIG, an ambiguous UUID, or mixed models in CUDA's fastest-first order
        physical, why = [], str(exc)
    gpus = []
    for i, h in enumerate(handles):
        mem = _ask(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        name, uuid = (_ask(nvml, lambda q=q: _str(q(h))) for q in (nvml.nvmlDeviceGetName, nvml.nvmlDeviceGetUUID))
        cuda = physical.index(i) if i in physical else None
        gpus.append(NvmlGpu(i, cuda, name, None if mem is None else mem.total / MIB, uuid))
    return {
        "driver": _ask(nvml, lambda: _str(nvml.nvmlSystemGetDriverVersion())),
        "driver_cuda": cuda_version(_ask(nvml, nvml.nvmlSystemGetCudaDriverVersion)),
        "nvml_gpus": gpus,
        "mapping_note": why or None,
        "cuda_visible_count": visible,
        "links": [
            _link(nvml, handles[pa], handles[pb], a, b) for (a, pa), (b, pb) in combinations(enumerate(physical), 2)
        ],
    }


def nvml_view(environ: Mapping[str, str], nvml: Any = None) -> dict:
    """DoctorReport's NVML fields; nvml_status says "not measured: <why>" where NVML cannot be asked."""
    out: dict = {
        "nvml_status": "ok",
        "driver": None,
        "driver_cuda": None,
        "nvml_gpus": [],
        "mapping_note": None,
        "cuda_visible_count": None,
        "links": [],
    }
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            return {**out, "nvml_status": f"not measured: pynvml cannot be imported ({exc})"}
    try:
        nvml.nvmlInit()
    except (nvml.NVMLError, OSError) as exc:
        return {**out, "nvml_status": f"not measured: NVML is not available ({type(exc).__name__}: {exc})"}
    try:
        return {**out, **_read(environ, nvml)}
    except nvml.NVMLError as exc:
        return {**out, "nvml_status": f"not measured: {type(exc).__name__}: {exc}"}
    finally:
        nvml.nvmlShutdown()


def collect(
    env: Environment,
    *,
    device_asked: Optional[str],
    environ: Optional[Mapping[str, str]] = None,
    nvml: Any = None,
    shm_path: str = SHM_PATH,
) -> DoctorReport:
    """Everything but the collective check; ranks and workers are filled in once the scan is planned."""
    environ = os.environ if environ is None else environ
    shm_total, shm_free = shm_mib(shm_path)
    soft, hard = nofile()
    mem = psutil.virtual_memory()
    return DoctorReport(
        device="cuda" if env.gpus and device_asked != "cpu" else "cpu",
        device_asked=device_asked,
        ranks=0,
        workers_per_rank=None,
        torch=env.torch,
        torch_cuda=env.cuda,
        torch_cuda_error=None if env.gpus else torch_cuda_error(),
        torch_gpus=list(env.gpus),
        nccl=env.nccl,
        cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
        cpu_count=env.cpu_count,
        ram_total_mib=mem.total / MIB,
        ram_available_mib=mem.available / MIB,
        shm_total_mib=shm_total,
        shm_free_mib=shm_free,
        nofile_soft=soft,
        nofile_hard=hard,
        **nvml_view(environ, nvml),
    )
