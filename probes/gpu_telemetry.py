"""GPU readings through NVML (pynvml, from nvidia-ml-py).

NVML numbers GPUs physically; CUDA numbers them as CUDA_VISIBLE_DEVICES orders and hides them,
so every reading is mapped back to the CUDA index the scan uses. Real GPUs refuse some fields
(power on some boards, NVLink on PCIe cards): such a field is None, listed in `unsupported` and
not asked again, never reported as zero.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Optional

from yoloprof.records import GpuSample

try:
    import pynvml
except ImportError:  # open_gpus says "not measured"; the rest of yoloprof runs without it
    pynvml = None

MIB = 2**20
ALL_LINKS = 0xFFFFFFFF  # NVLink throughput scopeId: the sum over every link (a bare field id reads link 0 only)
PERMANENT = ("NotSupported", "NoPermission", "FunctionNotFound")  # NVMLError_* that will not change: ask once
RETRIES = 3  # consecutive failures of other kinds before a field is given up as unsupported
PCIE_EVERY_S = 1.0  # nvmlDeviceGetPcieThroughput blocks ~20 ms a call: one GPU per read, each at most this often

# (pynvml constant suffix, readable name); "ClocksEventReason" in new pynvml, "ClocksThrottleReason" before
THROTTLE_BITS = [
    ("GpuIdle", "idle"),
    ("ApplicationsClocksSetting", "applications_clocks"),
    ("SwPowerCap", "sw_power_cap"),
    ("HwSlowdown", "hw_slowdown"),
    ("SyncBoost", "sync_boost"),
    ("SwThermalSlowdown", "sw_thermal"),
    ("HwThermalSlowdown", "hw_thermal"),
    ("HwPowerBrakeSlowdown", "hw_power_brake"),
    ("DisplayClockSetting", "display_clocks"),
    ("BoardLimit", "board_limit"),
    ("Reliability", "reliability"),
]


class MappingError(ValueError):
    """CUDA_VISIBLE_DEVICES names something the sampler cannot map to an NVML device."""


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _visible(visible: str, count: int, nvml: Any) -> tuple[list[int], str]:
    """CUDA_VISIBLE_DEVICES -> physical indices; like CUDA, the list ends at the first invalid entry."""
    physical: list[int] = []
    uuids: Optional[list[str]] = None
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            return physical, "an empty entry ends the list"
        if entry.upper().startswith("MIG"):
            raise MappingError(f"MIG instance {entry!r} in CUDA_VISIBLE_DEVICES: MIG is not supported by the sampler")
        if entry.lstrip("+-").isdigit():
            if not 0 <= int(entry) < count:
                return physical, f"entry {entry!r} is not one of the {count} GPUs NVML sees"
            physical.append(int(entry))
            continue
        if uuids is None:
            uuids = [_str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
        prefix = entry if entry.upper().startswith("GPU-") else "GPU-" + entry
        hits = [i for i, u in enumerate(uuids) if u.lower().startswith(prefix.lower())]
        if len(hits) > 1:
            raise MappingError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(hits)} GPUs")
        if not hits:
            return physical, f"entry {entry!r} matches no GPU UUID"
        physical.append(hits[0])
    return physical, ""


def _check_order(environ: Mapping[str, str], count: int, nvml: Any) -> None:
    """CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID; NVML by PCI bus.

    The two agree when all GPUs are the same model (ties go by bus id), not on a mixed machine.
    """
    if environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID" or count < 2:
        return
    names = {_str(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)}
    if len(names) > 1:
        raise MappingError(
            f"mixed GPU models ({', '.join(sorted(names))}) are numbered fastest first by CUDA: "
            "set CUDA_DEVICE_ORDER=PCI_BUS_ID or name the GPUs by UUID"
        )


def visible_physical(environ: Mapping[str, str], nvml: Any = pynvml) -> tuple[list[int], str]:
    """Physical NVML indices in CUDA's order as CUDA_VISIBLE_DEVICES leaves them, and why the list ends early."""
    count = nvml.nvmlDeviceGetCount()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return (list(range(count)), "") if visible is None else _visible(visible, count, nvml)


def resolve_nvml_indices(cuda_indices: list[int], environ: Mapping[str, str], nvml: Any = pynvml) -> list[int]:
    """CUDA index (as this process sees it) -> physical NVML index. NVML must be initialised."""
    count = nvml.nvmlDeviceGetCount()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    physical, why = visible_physical(environ, nvml)
    if visible is None or any(e.strip().lstrip("+-").isdigit() for e in visible.split(",")):
        _check_order(environ, count, nvml)  # integer indices are in CUDA's order; UUIDs are not
    out = []
    for i in cuda_indices:
        if not 0 <= i < len(physical):
            raise MappingError(
                f"CUDA device {i} is not visible (CUDA_VISIBLE_DEVICES={visible!r}: "
                f"{len(physical)} visible{'; ' + why if why else ''})"
            )
        out.append(physical[i])
    return out


def throttle_names(mask: int, nvml: Any = pynvml) -> list[str]:
    """Clock event (throttle) bitmask -> readable names; a bit pynvml does not name shows as hex."""
    names, known = [], 0
    for suffix, name in THROTTLE_BITS:
        bit = getattr(nvml, f"nvmlClocksEventReason{suffix}", 0)
        bit = bit or getattr(nvml, f"nvmlClocksThrottleReason{suffix}", 0)
        known |= bit
        if mask & bit:
            names.append(name)
    rest = mask & ~known
    return names + [hex(1 << b) for b in range(64) if rest >> b & 1]


class GpuReader:
    """NVML handles for the scan's GPUs; read() returns one GpuSample per GPU, in CUDA order."""

    def __init__(self, cuda_indices: list[int], environ: Optional[Mapping[str, str]] = None, nvml: Any = None):
        self.nvml = nvml if nvml is not None else pynvml
        self.nvml.nvmlInit()
        try:
            if self.nvml.nvmlDeviceGetCount() == 0:
                raise MappingError("NVML sees no GPU")
            self.gpus = list(cuda_indices)
            self.nvml_indices = resolve_nvml_indices(self.gpus, os.environ if environ is None else environ, self.nvml)
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in self.nvml_indices]
        except BaseException:
            self.nvml.nvmlShutdown()
            raise
        self.unsupported: set[str] = set()  # GpuSample fields a device refused
        self._skip: set[tuple[int, str]] = set()  # (gpu, query) not to ask again
        self._fails: dict[tuple[int, str], int] = {}
        self._links: dict[int, Optional[list[int]]] = {}  # gpu -> None: ask the all-links scope; else link ids
        self._active: dict[int, list[int]] = {}  # gpu -> its active NVLink links
        self._nvlink_prev: dict[int, tuple[float, float, float]] = {}
        self._pcie_next = {gpu: 0.0 for gpu in self.gpus}  # t_s when a GPU's PCIe is next due
        errors = [getattr(self.nvml, f"NVMLError_{e}", None) for e in PERMANENT]
        self._permanent = tuple(e for e in errors if isinstance(e, type))

    def _ask(self, gpu: int, query: str, fields: tuple[str, ...], fn: Callable[[], Any]) -> Any:
        """fn(), or None when the device refuses: NotSupported at once, other NVML errors after RETRIES."""
        key = (gpu, query)
        if key in self._skip:
            return None
        try:
            value = fn()
        except self.nvml.NVMLError as exc:
            self._fails[key] = self._fails.get(key, 0) + 1
            if isinstance(exc, self._permanent) or self._fails[key] >= RETRIES:
                self._skip.add(key)
                self.unsupported.update(fields)
            return None
        self._fails.pop(key, None)
        return value

    def _active_links(self, h: Any) -> list[int]:
        links = []
        for link in range(getattr(self.nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                if self.nvml.nvmlDeviceGetNvLinkState(h, link):
                    links.append(link)
            except self.nvml.NVMLError:
                continue  # no such link on this device
        return links

    def _nvlink_kib(self, gpu: int, h: Any) -> tuple[float, float]:
        """Cumulative NVLink data KiB (tx, rx) over all links: the all-links scope, else a sum per link."""
        n = self.nvml
        tx_rx = (n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)
        if gpu not in self._links:
            active = self._active_links(h)
            if not active:
                raise n.NVMLError(n.NVML_ERROR_NOT_SUPPORTED)  # no active NVLink: None, not 0 MiB/s
            self._links[gpu], self._active[gpu] = None, active
        links = self._links[gpu]
        ids = [(f, ALL_LINKS) for f in tx_rx] if links is None else [(f, link) for link in links for f in tx_rx]
        vals = n.nvmlDeviceGetFieldValues(h, ids)
        failed = next((v.nvmlReturn for v in vals if v.nvmlReturn != 0), 0)
        if failed and links is None:  # a driver without the all-links scope: ask link by link from now on
            self._links[gpu] = self._active[gpu]
            return self._nvlink_kib(gpu, h)
        if failed:
            raise n.NVMLError(failed)
        return float(sum(v.value.ullVal for v in vals[0::2])), float(sum(v.value.ullVal for v in vals[1::2]))

    def _nvlink(self, gpu: int, h: Any, t_s: float) -> tuple[Optional[float], Optional[float]]:
        """MiB/s since the previous read (None on the first read, or when the counter went back)."""
        got = self._ask(gpu, "nvlink", ("nvlink_tx_mib_s", "nvlink_rx_mib_s"), lambda: self._nvlink_kib(gpu, h))
        if got is None:
            return None, None
        prev, self._nvlink_prev[gpu] = self._nvlink_prev.get(gpu), (t_s, *got)
        if prev is None or t_s <= prev[0] or got[0] < prev[1] or got[1] < prev[2]:
            return None, None
        dt = t_s - prev[0]
        return (got[0] - prev[1]) / 1024 / dt, (got[1] - prev[2]) / 1024 / dt

    def _reasons(self, h: Any) -> int:
        n = self.nvml
        fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or n.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(fn(h))

    def _pcie_turn(self, t_s: float) -> Optional[int]:
        """The GPU whose PCIe throughput this read asks for, if any is due (the longest waiting)."""
        due = [
            (nxt, k)
            for k, (gpu, nxt) in enumerate(self._pcie_next.items())
            if t_s >= nxt and not {(gpu, "pcie_tx"), (gpu, "pcie_rx")} <= self._skip
        ]
        if not due:
            return None
        gpu = self.gpus[min(due)[1]]
        self._pcie_next[gpu] = t_s + PCIE_EVERY_S
        return gpu

    def _sample(self, gpu: int, h: Any, t_s: float, pcie: bool) -> GpuSample:
        n = self.nvml

        def ask(query, fields, fn, per=1):  # per: NVML units in one of ours (dividing keeps 350123 mW 350.123 W)
            v = self._ask(gpu, query, fields, fn)
            return None if v is None else float(v) / per

        util = self._ask(gpu, "util", ("sm_util_pct", "mem_util_pct"), lambda: n.nvmlDeviceGetUtilizationRates(h))
        mem = self._ask(gpu, "memory", ("mem_used_mib", "mem_total_mib"), lambda: n.nvmlDeviceGetMemoryInfo(h))
        reasons = self._ask(gpu, "throttle", ("throttle_reasons",), lambda: self._reasons(h))
        nv_tx, nv_rx = self._nvlink(gpu, h, t_s)
        return GpuSample(
            t_s=t_s,
            gpu=gpu,
            sm_util_pct=float(util.gpu) if util is not None else None,
            mem_util_pct=float(util.memory) if util is not None else None,
            mem_used_mib=mem.used / MIB if mem is not None else None,
            mem_total_mib=mem.total / MIB if mem is not None else None,
            power_w=ask("power", ("power_w",), lambda: n.nvmlDeviceGetPowerUsage(h), 1000),  # mW
            energy_j=ask("energy", ("energy_j",), lambda: n.nvmlDeviceGetTotalEnergyConsumption(h), 1000),  # mJ
            sm_clock_mhz=ask("sm_clock", ("sm_clock_mhz",), lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            mem_clock_mhz=ask("mem_clock", ("mem_clock_mhz",), lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            temp_c=ask("temp", ("temp_c",), lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            throttle_reasons=throttle_names(reasons, n) if reasons is not None else None,
            pcie_tx_mib_s=ask(
                "pcie_tx", ("pcie_tx_mib_s",), lambda: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES), 1024
            )  # KB/s
            if pcie
            else None,
            pcie_rx_mib_s=ask(
                "pcie_rx", ("pcie_rx_mib_s",), lambda: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES), 1024
            )
            if pcie
            else None,
            nvlink_tx_mib_s=nv_tx,
            nvlink_rx_mib_s=nv_rx,
        )

    def read(self, t_s: Optional[float] = None) -> list[GpuSample]:
        """One sample per GPU, in CUDA order; a field the device refuses is None, never the read.

        PCIe throughput is in the samples of one GPU per read, each GPU's at most every PCIE_EVERY_S.
        """
        t_s = time.time() if t_s is None else t_s
        turn = self._pcie_turn(t_s)
        return [self._sample(gpu, h, t_s, gpu == turn) for gpu, h in zip(self.gpus, self.handles, strict=True)]

    def mem_used_mib(self) -> list[Optional[float]]:
        """NVML's used memory of each GPU now, in CUDA order; None where the device will not say."""
        out: list[Optional[float]] = []
        for h in self.handles:
            try:
                out.append(self.nvml.nvmlDeviceGetMemoryInfo(h).used / MIB)
            except Exception:  # noqa: BLE001 - a field this device will not give
                out.append(None)
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down is best effort
            pass


def open_gpus(cuda_indices: list[int], environ: Optional[Mapping[str, str]] = None) -> tuple[Optional[GpuReader], str]:
    """(reader, "ok"), or (None, "not measured: <reason>"); never raises."""
    if not cuda_indices:
        return None, "not measured: no GPU in this run"
    try:
        import pynvml as nvml  # here, not the module-level name, so a broken install is seen at each call
    except ImportError as exc:
        return None, f"not measured: pynvml cannot be imported ({exc})"
    try:
        return GpuReader(cuda_indices, os.environ if environ is None else environ, nvml), "ok"
    except MappingError as exc:
        return None, f"not measured: {exc}"
    except getattr(nvml, "NVMLError_LibraryNotFound", ()) as exc:
        return None, f"not measured: the NVML library is not installed, no NVIDIA driver? ({exc})"
    except (nvml.NVMLError, OSError) as exc:
        return None, f"not measured: NVML is not available ({type(exc).__name__}: {exc})"
