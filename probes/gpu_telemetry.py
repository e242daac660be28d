"""GPU readings through NVML (pynvml, from nvidia-ml-py).

NVML numbers GPUs physically; CUDA numbers them as CUDA_VISIBLE_DEVICES orders and hides them,
so every reading is mapped back to the CUDA index the scan uses. Real GPUs answer NotSupported for
some fields (power on some boards, NVLink on PCIe cards): such a field is None, asked once, and
listed as unsupported, never reported as zero.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Optional

from yoloprof.records import GpuSample

MIB = 2**20


class MappingError(ValueError):
    """CUDA_VISIBLE_DEVICES names something the sampler cannot map to an NVML device."""


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def resolve_nvml_indices(cuda_indices: list[int], environ: Mapping[str, str], nvml: Any) -> list[int]:
    """CUDA index (as this process sees it) -> physical NVML index."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    count = nvml.nvmlDeviceGetCount()
    if visible is None or visible.strip() == "":
        physical = list(range(count))
    else:
        physical = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry:
                continue
            if entry.startswith("MIG-"):
                raise MappingError("MIG instances are not supported by the NVML sampler")
            if entry.lstrip("-").isdigit():
                if int(entry) < 0:
                    break  # CUDA stops at the first invalid index
                physical.append(int(entry))
                continue
            uuids = [_str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            hits = [i for i, u in enumerate(uuids) if u.startswith(entry) or u.startswith("GPU-" + entry)]
            if len(hits) != 1:
                raise MappingError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(hits)} GPUs")
            physical.append(hits[0])
    out = []
    for i in cuda_indices:
        if not 0 <= i < len(physical):
            raise MappingError(f"CUDA device {i} is not visible (CUDA_VISIBLE_DEVICES={visible!r})")
        if physical[i] >= count:
            raise MappingError(f"CUDA_VISIBLE_DEVICES names GPU {physical[i]}, NVML sees {count}")
        out.append(physical[i])
    return out


def throttle_names(mask: int, nvml: Any) -> list[str]:
    table = [
        ("nvmlClocksEventReasonGpuIdle", "idle"),
        ("nvmlClocksEventReasonApplicationsClocksSetting", "applications_clocks"),
        ("nvmlClocksEventReasonSwPowerCap", "sw_power_cap"),
        ("nvmlClocksEventReasonHwSlowdown", "hw_slowdown"),
        ("nvmlClocksEventReasonSyncBoost", "sync_boost"),
        ("nvmlClocksEventReasonSwThermalSlowdown", "sw_thermal"),
        ("nvmlClocksEventReasonHwThermalSlowdown", "hw_thermal"),
        ("nvmlClocksEventReasonHwPowerBrakeSlowdown", "hw_power_brake"),
        ("nvmlClocksEventReasonDisplayClockSetting", "display_clocks"),
    ]
    names = []
    for const, name in table:
        bit = getattr(nvml, const, None) or getattr(nvml, const.replace("Event", "Throttle"), None)
        if bit and mask & int(bit):
            names.append(name)
    return names


class GpuReader:
    def __init__(self, cuda_indices: list[int], nvml_indices: list[int], nvml: Any):
        self.nvml, self.gpus, self.nvml_indices = nvml, list(cuda_indices), list(nvml_indices)
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in nvml_indices]
        self.unsupported: set[str] = set()  # "power_w (GPU 1)": fields a device answered NotSupported
        self._gpu = -1
        self._nvlink_prev: dict[int, tuple[float, float, float]] = {}

    def _ask(self, field: str, fn: Callable[[], Any]) -> Any:
        key = f"{field} (GPU {self._gpu})"
        if key in self.unsupported:
            return None
        try:
            return fn()
        except self.nvml.NVMLError:
            self.unsupported.add(key)  # NotSupported, NoPermission, ...: this device will not answer it
            return None

    def _nvlink(self, k: int, h: Any, t_s: float) -> tuple[Optional[float], Optional[float]]:
        n = self.nvml

        def counters():
            vals = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                                                  n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX])  # fmt: skip
            if any(v.nvmlReturn != 0 for v in vals):
                raise n.NVMLError(n.NVML_ERROR_NOT_SUPPORTED)
            return float(vals[0].value.ullVal), float(vals[1].value.ullVal)  # cumulative KiB

        got = self._ask("nvlink", counters)
        if got is None:
            return None, None
        prev = self._nvlink_prev.get(k)
        self._nvlink_prev[k] = (t_s, *got)
        if prev is None or t_s <= prev[0]:
            return None, None
        dt = t_s - prev[0]
        return (got[0] - prev[1]) / 1024 / dt, (got[1] - prev[2]) / 1024 / dt

    def read(self, t_s: Optional[float] = None) -> list[GpuSample]:
        n, out = self.nvml, []
        t_s = time.time() if t_s is None else t_s
        for k, (gpu, h) in enumerate(zip(self.gpus, self.handles)):
            self._gpu = gpu
            util = self._ask("utilization", lambda: n.nvmlDeviceGetUtilizationRates(h))
            mem = self._ask("memory", lambda: n.nvmlDeviceGetMemoryInfo(h))
            power = self._ask("power_w", lambda: n.nvmlDeviceGetPowerUsage(h))
            energy = self._ask("energy_j", lambda: n.nvmlDeviceGetTotalEnergyConsumption(h))
            reasons = self._ask("throttle_reasons", lambda: (
                n.nvmlDeviceGetCurrentClocksEventReasons(h) if hasattr(n, "nvmlDeviceGetCurrentClocksEventReasons")
                else n.nvmlDeviceGetCurrentClocksThrottleReasons(h)))  # fmt: skip
            tx = self._ask("pcie", lambda: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES))
            rx = self._ask("pcie", lambda: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES))
            nv_tx, nv_rx = self._nvlink(k, h, t_s)
            sm = self._ask("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))
            memclk = self._ask("mem_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM))
            temp = self._ask("temp_c", lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
            out.append(GpuSample(
                t_s=t_s, gpu=gpu,
                sm_util_pct=float(util.gpu) if util is not None else None,
                mem_util_pct=float(util.memory) if util is not None else None,
                mem_used_mib=mem.used / MIB if mem is not None else None,
                mem_total_mib=mem.total / MIB if mem is not None else None,
                power_w=power / 1e3 if power is not None else None,
                energy_j=energy / 1e3 if energy is not None else None,
                sm_clock_mhz=float(sm) if sm is not None else None,
                mem_clock_mhz=float(memclk) if memclk is not None else None,
                temp_c=float(temp) if temp is not None else None,
                throttle_reasons=throttle_names(int(reasons), n) if reasons is not None else None,
                pcie_tx_mib_s=tx / 1024 if tx is not None else None,
                pcie_rx_mib_s=rx / 1024 if rx is not None else None,
                nvlink_tx_mib_s=nv_tx, nvlink_rx_mib_s=nv_rx,
            ))  # fmt: skip
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down is best effort
            pass


def open_gpus(cuda_indices: list[int], environ: Optional[Mapping[str, str]] = None) -> tuple[Optional[GpuReader], str]:
    """(reader, "ok"), or (None, "not measured: <reason>")."""
    if not cuda_indices:
        return None, "not measured: no GPU in this run"
    try:
        import pynvml
    except ImportError as exc:
        return None, f"not measured: pynvml cannot be imported ({exc})"
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        return None, f"not measured: NVML is not available ({exc})"
    try:
        indices = resolve_nvml_indices(cuda_indices, os.environ if environ is None else environ, pynvml)
        return GpuReader(cuda_indices, indices, pynvml), "ok"
    except (MappingError, pynvml.NVMLError) as exc:
        pynvml.nvmlShutdown()
        return None, f"not measured: {exc}"
