"""Telemetry: NVML driven through a patched pynvml (autospec), CPU on a real process tree, and the summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from unittest import mock

import pynvml
import pytest

from probes import cpu_telemetry, gpu_telemetry, telemetry
from yoloprof.records import CpuSample, GpuSample, TelemetryHeader
from yoloprof.telemetry import read_telemetry, summarize

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000", "GPU-dddd4444-0000"]


class FakeDevice:
    def __init__(self, index, *, power=True, nvlink=True):
        self.index, self.power, self.nvlink = index, power, nvlink
        self.calls = {}
        self.nvlink_kib = 0

    def count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1


@pytest.fixture
def nvml():
    """pynvml with every function we call patched (autospec keeps the real signatures)."""
    devices = [FakeDevice(0), FakeDevice(1, power=False, nvlink=False), FakeDevice(2), FakeDevice(3)]
    with mock.patch.multiple(pynvml, autospec=True, **{name: mock.DEFAULT for name in (
        "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
        "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperature",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetFieldValues")}) as m:  # fmt: skip
        m["nvmlDeviceGetCount"].return_value = 4
        m["nvmlDeviceGetHandleByIndex"].side_effect = lambda i: devices[i]
        m["nvmlDeviceGetUUID"].side_effect = lambda h: UUIDS[h.index]
        m["nvmlDeviceGetUtilizationRates"].side_effect = lambda h: types.SimpleNamespace(gpu=90 + h.index, memory=40)
        m["nvmlDeviceGetMemoryInfo"].side_effect = lambda h: types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

        def power(h):
            h.count("power")
            if not h.power:
                raise pynvml.NVMLError_NotSupported()
            return 350_000  # mW

        def energy(h):
            h.count("energy")
            if not h.power:
                raise pynvml.NVMLError_NotSupported()
            return 7_000_000  # mJ

        def fields(h, ids):
            h.count("nvlink")
            h.nvlink_kib += 2048
            ok = 0 if h.nvlink else pynvml.NVML_ERROR_NOT_SUPPORTED
            return [types.SimpleNamespace(nvmlReturn=ok, value=types.SimpleNamespace(ullVal=h.nvlink_kib)) for _ in ids]

        m["nvmlDeviceGetPowerUsage"].side_effect = power
        m["nvmlDeviceGetTotalEnergyConsumption"].side_effect = energy
        m["nvmlDeviceGetFieldValues"].side_effect = fields
        m["nvmlDeviceGetClockInfo"].side_effect = lambda h, c: 1980 if c == pynvml.NVML_CLOCK_SM else 2619
        m["nvmlDeviceGetTemperature"].return_value = 61
        m["nvmlDeviceGetCurrentClocksEventReasons"].return_value = (
            pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown)
        m["nvmlDeviceGetPcieThroughput"].side_effect = lambda h, c: 2048 if c == pynvml.NVML_PCIE_UTIL_TX_BYTES else 1024
        m["devices"] = devices
        yield m


@pytest.mark.parametrize("visible,cuda,expected", [
    (None, [0, 1, 2, 3], [0, 1, 2, 3]),
    ("3,1", [0, 1], [3, 1]),
    ("GPU-cccc3333-0000,GPU-aaaa1111-0000", [0, 1], [2, 0]),
    ("GPU-dddd,bbbb2222", [1, 0], [1, 3]),  # UUID prefixes, with or without "GPU-"
])  # fmt: skip
def test_cuda_indices_map_to_physical_nvml_indices(nvml, visible, cuda, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert gpu_telemetry.resolve_nvml_indices(cuda, environ, pynvml) == expected


@pytest.mark.parametrize("visible,cuda,words", [
    ("MIG-1234", [0], "MIG"), ("3,1", [2], "not visible"), ("GPU-zzzz", [0], "matches 0 GPUs"), ("7", [0], "NVML sees 4"),
])  # fmt: skip
def test_unmappable_devices_are_not_measured(nvml, visible, cuda, words):
    reader, status = gpu_telemetry.open_gpus(cuda, {"CUDA_VISIBLE_DEVICES": visible})
    assert reader is None and status.startswith("not measured:") and words in status


def test_readings_units_and_not_supported_fields(nvml):
    reader, status = gpu_telemetry.open_gpus([0, 1], {"CUDA_VISIBLE_DEVICES": "2,1"})
    assert status == "ok" and reader.nvml_indices == [2, 1]
    first = reader.read(100.0)
    second = reader.read(100.5)
    a, b = second
    assert (a.gpu, b.gpu) == (0, 1)
    assert a.sm_util_pct == 92.0 and a.mem_util_pct == 40.0  # NVML device 2 answers for CUDA device 0
    assert a.mem_used_mib == 3072.0 and a.mem_total_mib == 81920.0
    assert a.power_w == 350.0 and a.energy_j == 7000.0
    assert a.pcie_tx_mib_s == 2.0 and a.pcie_rx_mib_s == 1.0
    assert a.sm_clock_mhz == 1980.0 and a.mem_clock_mhz == 2619.0 and a.temp_c == 61.0
    assert a.throttle_reasons == ["sw_power_cap", "hw_thermal"]
    assert first[0].nvlink_tx_mib_s is None and a.nvlink_tx_mib_s == pytest.approx(2048 / 1024 / 0.5)  # a rate
    # device 1 supports neither power, energy nor NVLink: None, never 0, and asked only once
    assert b.power_w is None and b.energy_j is None and b.nvlink_rx_mib_s is None
    assert reader.unsupported == {"power_w (GPU 1)", "energy_j (GPU 1)", "nvlink (GPU 1)"}
    dev1 = nvml["devices"][1]
    assert dev1.calls == {"power": 1, "energy": 1, "nvlink": 1}
    reader.close()
    pynvml.nvmlShutdown.assert_called()


def test_no_nvml_library_is_reported_not_zeroed(nvml):
    pynvml.nvmlInit.side_effect = pynvml.NVMLError_LibraryNotFound()
    reader, status = gpu_telemetry.open_gpus([0])
    assert reader is None and status.startswith("not measured: NVML is not available")


def test_no_pynvml_module():
    with mock.patch.dict(sys.modules, {"pynvml": None}):
        reader, status = gpu_telemetry.open_gpus([0])
    assert reader is None and "pynvml cannot be imported" in status


def test_cpu_reader_finds_the_ranks_workers_on_a_real_process_tree():
    busy = "import time\nt=time.time()\nwhile time.time()-t<3: pass\n"
    rank = f"import subprocess,sys; subprocess.Popen([sys.executable,'-c',{busy!r}]).wait()"
    launcher = f"import subprocess,sys; subprocess.Popen([sys.executable,'-c',{rank!r},'-m','yoloprof.worker']).wait()"
    root = subprocess.Popen([sys.executable, "-c", launcher])  # stands in for torchrun: rank -> busy worker
    try:
        reader = cpu_telemetry.CpuReader(root.pid)
        wrapper = cpu_telemetry.CpuReader(None)
        time.sleep(0.5)
        reader.read()
        time.sleep(1.0)
        s = reader.read()
        assert s.loader_workers == 1 and s.loader_cpu_pct > 50  # the busy child is a worker of the rank
        assert s.ranks_rss_mib > 0 and len(s.cpu_pct_per_core) >= 1 and s.mem_available_mib > 0
        assert wrapper.read().loader_workers == 0
        root.wait(timeout=10)
        gone = reader.read()  # processes that exited between reads do not break it
        assert gone.loader_workers == 0
    finally:
        root.kill()


def test_sampler_writes_a_header_then_samples_and_survives_a_failing_reader(tmp_path, nvml):
    path = tmp_path / "telemetry.jsonl"
    with telemetry.TelemetrySampler(path, interval_s=0.05, gpus=[0], environ={}) as s:
        time.sleep(0.3)
        s.gpu.read = mock.Mock(side_effect=RuntimeError("driver went away"))
        time.sleep(0.2)
    header, gpu, cpu, notes = read_telemetry(path)
    assert header.gpu_status == "ok" and header.interval_s == 0.05 and header.gpus == [0]
    assert len(gpu) >= 3 and len(cpu) >= 5
    assert [x.t_s for x in cpu] == sorted(x.t_s for x in cpu)
    assert notes == ["gpu sampling stopped: RuntimeError: driver went away"]
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds[0] == "header" and kinds.count("error") == 1


def test_sampler_without_gpus_says_why(tmp_path):
    path = tmp_path / "t.jsonl"
    with telemetry.TelemetrySampler(path, interval_s=0.05, gpus=[]):
        time.sleep(0.12)
    header, gpu, cpu, _ = read_telemetry(path)
    assert header.gpu_status == "not measured: no GPU in this run" and gpu == [] and cpu


def g(t, gpu, util, energy=None, power=None, used=1000.0):
    return GpuSample(t_s=t, gpu=gpu, sm_util_pct=util, energy_j=energy, power_w=power, mem_used_mib=used)


def test_summary_over_the_measured_window():
    header = TelemetryHeader(0.1, [0, 1], [0, 1], "ok")
    gpu = [g(0.0, 0, 0.0, 0.0), g(0.0, 1, 0.0, 0.0),  # before the window: excluded
           g(1.0, 0, 80.0, 100.0), g(1.0, 1, 60.0, None, power=200.0),
           g(2.0, 0, 100.0, 400.0, used=5000.0), g(2.0, 1, 40.0, None, power=300.0),
           g(3.0, 0, 90.0, 500.0), g(3.0, 1, 50.0, None, power=300.0)]  # fmt: skip
    cpu = [CpuSample(1.5, [95.0, 99.0], 4, 180.0, 800.0, 150.0, 900.0, 9000.0),
           CpuSample(2.5, [95.0, 50.0], 4, 120.0, 900.0, 150.0, 900.0, 8000.0)]  # fmt: skip
    s = summarize(header, gpu, cpu, 1.0, 3.0, images=100)
    assert s.gpu_util_mean_pct == pytest.approx((80 + 60 + 100 + 40 + 90 + 50) / 6)
    assert s.gpu_util_p10_pct == pytest.approx(70 + 0.2 * 0)  # per-time means 70, 70, 70
    # GPU 0 by its counter: 500 - 100 = 400 J; GPU 1 by integrated power: 250 + 300 = 550 J
    assert s.energy_j == pytest.approx(950.0) and s.energy_j_per_img == pytest.approx(9.5)
    assert s.gpu_mem_used_peak_mib == 5000.0
    assert s.cpu_util_mean_pct == pytest.approx((97.0 + 72.5) / 2) and s.cpu_busy_cores_frac == 0.5
    assert s.loader_cpu_pct_mean == 150.0 and s.loader_rss_peak_mib == 900.0 and s.mem_available_min_mib == 8000.0
    assert s.samples == 8


def test_summary_without_telemetry_is_none_not_zero():
    s = summarize(None, [], [], 0.0, 1.0, images=10)
    assert s.gpu_status.startswith("not measured") and s.gpu_util_mean_pct is None and s.energy_j_per_img is None
    assert s.cpu_util_mean_pct is None and s.samples == 0
