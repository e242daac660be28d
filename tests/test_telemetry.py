"""Telemetry: NVML driven through a patched pynvml (autospec), CPU on a real process tree, and the summary."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
import types
from unittest import mock

import psutil
import pynvml
import pytest

from yoloprof.probes import cpu_telemetry, gpu_telemetry, telemetry
from yoloprof.records import CpuSample, GpuSample, TelemetryHeader
from yoloprof.analysis.telemetry import read_telemetry, summarize

UUIDS = ["GPU-8f3c1111-0000", "GPU-8f3c2222-0000", "GPU-1b2e3333-0000", "GPU-c0de4444-0000"]
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
MW, MJ = 350_123, 7_000_500  # NVML answers in mW and mJ


class FakeDevice:
    """One GPU as NVML shows it; `refuses` lists the queries it answers NotSupported."""

    def __init__(self, index, refuses=(), links=(0, 1, 2, 3), all_links_scope=True, name="NVIDIA H100 80GB HBM3"):
        self.index, self.refuses, self.links, self.name = index, set(refuses), links, name
        self.all_links_scope = all_links_scope
        self.calls: dict[str, int] = {}
        self.link_kib = {link: [0, 0] for link in links}  # cumulative NVLink data KiB (tx, rx) per link

    def answer(self, query, value):
        self.calls[query] = self.calls.get(query, 0) + 1
        if query in self.refuses:
            raise pynvml.NVMLError_NotSupported()
        return value() if callable(value) else value

    def field_values(self, ids):
        """Honours scopeId like real NVML: a link id, or UINT_MAX for the sum over all links."""
        self.calls["nvlink"] = self.calls.get("nvlink", 0) + 1
        out = []
        for fid, scope in ids:
            k = 0 if fid == pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX else 1
            every = scope == gpu_telemetry.ALL_LINKS
            if "nvlink" in self.refuses or (every and not self.all_links_scope):
                ret, v = NOT_SUPPORTED, 0
            else:
                ret, v = 0, sum(c[k] for c in self.link_kib.values()) if every else self.link_kib[scope][k]
            value = types.SimpleNamespace(ullVal=v)
            out.append(types.SimpleNamespace(fieldId=fid, scopeId=scope, nvmlReturn=ret, value=value))
        return out


PATCHED = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetNvLinkState",
)


@pytest.fixture
def nvml():
    """pynvml with every function the reader calls patched (autospec keeps the real signatures)."""
    devices = [
        FakeDevice(0),
        FakeDevice(1, refuses={"power", "energy", "pcie", "nvlink"}),
        FakeDevice(2, all_links_scope=False),
        FakeDevice(3, links=()),
    ]
    with mock.patch.multiple(pynvml, autospec=True, **{name: mock.DEFAULT for name in PATCHED}) as m:
        m["nvmlDeviceGetCount"].side_effect = lambda: len(devices)
        m["nvmlDeviceGetHandleByIndex"].side_effect = lambda i: devices[i]
        m["nvmlDeviceGetUUID"].side_effect = lambda h: UUIDS[h.index]
        m["nvmlDeviceGetName"].side_effect = lambda h: h.name
        m["nvmlDeviceGetUtilizationRates"].side_effect = lambda h: h.answer(
            "util", types.SimpleNamespace(gpu=90 + h.index, memory=40)
        )
        m["nvmlDeviceGetMemoryInfo"].side_effect = lambda h: h.answer(
            "memory", types.SimpleNamespace(used=3 * 2**30 + 512 * 2**20, total=80 * 2**30)
        )
        m["nvmlDeviceGetPowerUsage"].side_effect = lambda h: h.answer("power", MW)
        m["nvmlDeviceGetTotalEnergyConsumption"].side_effect = lambda h: h.answer("energy", MJ)
        m["nvmlDeviceGetClockInfo"].side_effect = lambda h, c: 1980 if c == pynvml.NVML_CLOCK_SM else 2619
        m["nvmlDeviceGetTemperature"].side_effect = lambda h, s: h.answer("temp", 61)
        reasons = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        m["nvmlDeviceGetCurrentClocksEventReasons"].return_value = reasons
        m["nvmlDeviceGetCurrentClocksThrottleReasons"].return_value = pynvml.nvmlClocksThrottleReasonGpuIdle
        m["nvmlDeviceGetPcieThroughput"].side_effect = lambda h, c: h.answer(
            "pcie", 1536 if c == pynvml.NVML_PCIE_UTIL_TX_BYTES else 512
        )  # KB/s

        def link_state(h, link):
            h.calls["link_state"] = h.calls.get("link_state", 0) + 1
            if link not in h.links:
                raise pynvml.NVMLError_NotSupported()
            return 1

        m["nvmlDeviceGetNvLinkState"].side_effect = link_state
        m["nvmlDeviceGetFieldValues"].side_effect = lambda h, ids: h.field_values(ids)
        m["devices"] = devices
        yield m


@pytest.mark.parametrize(
    "environ,cuda,expected",
    [
        ({}, [0, 1, 2, 3], [0, 1, 2, 3]),
        ({"CUDA_VISIBLE_DEVICES": "3,1"}, [0, 1], [3, 1]),
        ({"CUDA_VISIBLE_DEVICES": " 3, 1 "}, [1], [1]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-1b2e3333-0000,GPU-8f3c1111-0000"}, [0, 1], [2, 0]),  # full UUIDs
        ({"CUDA_VISIBLE_DEVICES": "GPU-c0de,8F3C2"}, [1, 0], [1, 3]),  # prefixes, with or without "GPU-"
        ({"CUDA_VISIBLE_DEVICES": "2,-1,3"}, [0], [2]),  # CUDA ignores everything from an invalid entry on
    ],
)
def test_cuda_indices_map_to_physical_nvml_indices(nvml, environ, cuda, expected):
    assert gpu_telemetry.resolve_nvml_indices(cuda, environ, pynvml) == expected


@pytest.mark.parametrize(
    "environ,cuda,words",
    [
        ({"CUDA_VISIBLE_DEVICES": "MIG-GPU-8f3c1111-0000/1/0"}, [0], "MIG is not supported"),
        ({"CUDA_VISIBLE_DEVICES": "3,1"}, [2], "CUDA device 2 is not visible"),
        ({"CUDA_VISIBLE_DEVICES": "7"}, [0], "not one of the 4 GPUs"),
        ({"CUDA_VISIBLE_DEVICES": "2,-1,3"}, [1], "CUDA device 1 is not visible"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-ffff"}, [0], "matches no GPU UUID"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-8f3c"}, [0], "matches 2 GPUs"),
        ({"CUDA_VISIBLE_DEVICES": ""}, [0], "0 visible"),
    ],
)
def test_unmappable_devices_are_not_measured(nvml, environ, cuda, words):
    reader, status = gpu_telemetry.open_gpus(cuda, environ)
    assert reader is None and status.startswith("not measured:") and words in status
    assert pynvml.nvmlShutdown.call_count == pynvml.nvmlInit.call_count == 1  # NVML let go again


def test_mixed_models_need_bus_order_or_uuids(nvml):
    nvml["devices"][3].name = "NVIDIA A100"
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in gpu_telemetry.open_gpus([0], {})[1]
    bus_order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "3"}
    assert gpu_telemetry.resolve_nvml_indices([0], bus_order) == [3]
    assert gpu_telemetry.resolve_nvml_indices([0], {"CUDA_VISIBLE_DEVICES": "GPU-c0de"}) == [3]


def test_no_gpu_at_all(nvml):
    nvml["nvmlDeviceGetCount"].side_effect = lambda: 0
    assert gpu_telemetry.open_gpus([0], {}) == (None, "not measured: NVML sees no GPU")
    assert gpu_telemetry.open_gpus([], {}) == (None, "not measured: no GPU in this run")


def test_readings_exact_units_and_cuda_order(nvml):
    reader, status = gpu_telemetry.open_gpus([0, 1], {"CUDA_VISIBLE_DEVICES": "2,0"})
    assert status == "ok" and reader.nvml_indices == [2, 0]
    a, b = reader.read(100.0)
    assert (a.t_s, a.gpu, b.gpu) == (100.0, 0, 1)
    assert a.sm_util_pct == 92.0 and b.sm_util_pct == 90.0 and a.mem_util_pct == 40.0  # NVML 2 is CUDA 0
    assert a.mem_used_mib == 3584.0 and a.mem_total_mib == 81920.0  # bytes -> MiB
    assert a.power_w == 350.123 and a.energy_j == 7000.5  # mW -> W, mJ -> J
    assert a.pcie_tx_mib_s == 1.5 and a.pcie_rx_mib_s == 0.5  # KB/s -> MiB/s
    assert a.sm_clock_mhz == 1980.0 and a.mem_clock_mhz == 2619.0 and a.temp_c == 61.0
    assert a.throttle_reasons == ["sw_power_cap", "hw_thermal"]
    assert reader.unsupported == set()
    reader.close()
    pynvml.nvmlShutdown.assert_called_once()


def test_pcie_is_asked_for_one_gpu_per_read_and_each_once_a_second(nvml):
    reader, _ = gpu_telemetry.open_gpus([0, 1, 2], {})  # each PCIe call blocks ~20 ms on a real GPU
    got = [[s.gpu for s in reader.read(t) if s.pcie_tx_mib_s is not None] for t in (0.0, 0.1, 0.2, 0.3, 1.0, 1.05)]
    assert got == [[0], [], [2], [], [0], []]  # GPU 1 refuses PCIe: asked once (at 0.1 s), then passed over
    assert pynvml.nvmlDeviceGetPcieThroughput.call_count == 2 * 4  # tx and rx


def test_nvlink_is_a_rate_over_all_links(nvml):
    reader, _ = gpu_telemetry.open_gpus([0, 2], {})
    dev0, dev2 = nvml["devices"][0], nvml["devices"][2]
    first = reader.read(10.0)
    assert all(s.nvlink_tx_mib_s is None for s in first)  # a counter: no rate before two reads
    for dev in (dev0, dev2):
        dev.link_kib[0][0] += 1024 * 3  # 3 MiB sent on link 0
        dev.link_kib[3][0] += 1024  # and 1 MiB on link 3
        dev.link_kib[2][1] += 2048  # 2 MiB received on link 2
    a, c = reader.read(10.5)
    # the all-links scope on device 0; device 2 refuses it and is summed link by link
    assert (a.nvlink_tx_mib_s, a.nvlink_rx_mib_s) == (8.0, 4.0)
    assert (c.nvlink_tx_mib_s, c.nvlink_rx_mib_s) == (8.0, 4.0)
    assert reader.unsupported == set()


def test_refused_fields_are_none_listed_and_asked_once(nvml):
    reader, _ = gpu_telemetry.open_gpus([0, 1, 3], {})
    for t in (1.0, 2.0, 3.0):
        ok, refusing, no_links = reader.read(t)
    assert ok.power_w == 350.123 and ok.nvlink_tx_mib_s == 0.0  # the healthy GPU: an idle link is a real 0
    assert refusing.power_w is None and refusing.energy_j is None and refusing.pcie_tx_mib_s is None
    assert refusing.pcie_rx_mib_s is None and refusing.nvlink_tx_mib_s is None and refusing.nvlink_rx_mib_s is None
    assert refusing.sm_util_pct == 91.0  # the rest of the device still answers
    assert no_links.nvlink_tx_mib_s is None and no_links.power_w == 350.123  # a PCIe card: None, never 0 MiB/s
    assert reader.unsupported == {
        "power_w",
        "energy_j",
        "pcie_tx_mib_s",
        "pcie_rx_mib_s",
        "nvlink_tx_mib_s",
        "nvlink_rx_mib_s",
    }
    dev1, dev3 = nvml["devices"][1], nvml["devices"][3]
    assert dev1.calls["power"] == dev1.calls["energy"] == 1 and dev1.calls["pcie"] == 2  # once each: tx, rx
    assert dev1.calls["nvlink"] == 2  # in the first read only: the all-links scope, then link by link
    assert dev1.calls["util"] == 3
    assert dev3.calls["link_state"] == pynvml.NVML_NVLINK_MAX_LINKS and "nvlink" not in dev3.calls  # looked once


def test_other_nvml_errors_are_retried_then_given_up(nvml):
    calls = iter(
        [
            pynvml.NVMLError_Unknown(),
            60,
            pynvml.NVMLError_Timeout(),
            pynvml.NVMLError_Unknown(),
            pynvml.NVMLError_Unknown(),
            99,
        ]
    )

    def temp(h, sensor):
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    nvml["nvmlDeviceGetTemperature"].side_effect = temp
    reader, _ = gpu_telemetry.open_gpus([0], {})
    temps = [reader.read(float(t))[0].temp_c for t in range(6)]
    assert temps == [None, 60.0, None, None, None, None]  # three failures in a row: given up, 99 never asked
    assert reader.unsupported == {"temp_c"} and next(calls) == 99


def test_throttle_bitmask_decoding(nvml):
    n = pynvml
    mask = (
        n.nvmlClocksEventReasonGpuIdle
        | n.nvmlClocksEventReasonSwThermalSlowdown
        | n.nvmlClocksEventReasonHwPowerBrakeSlowdown
        | n.nvmlClocksEventReasonSyncBoost
        | 0x8000
    )
    assert gpu_telemetry.throttle_names(mask) == ["idle", "sync_boost", "sw_thermal", "hw_power_brake", "0x8000"]
    assert gpu_telemetry.throttle_names(0) == []
    old = types.SimpleNamespace(
        nvmlClocksThrottleReasonHwSlowdown=0x8, nvmlClocksThrottleReasonDisplayClockSetting=0x100
    )
    assert gpu_telemetry.throttle_names(0x108, old) == ["hw_slowdown", "display_clocks"]  # an older pynvml
    with mock.patch.object(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None):  # a pynvml without it
        reader, _ = gpu_telemetry.open_gpus([0], {})
        assert reader.read(1.0)[0].throttle_reasons == ["idle"]


def test_no_nvml_library_is_reported_not_zeroed(nvml):
    pynvml.nvmlInit.side_effect = pynvml.NVMLError_LibraryNotFound()
    reader, status = gpu_telemetry.open_gpus([0])
    assert reader is None and status.startswith("not measured: the NVML library is not installed")
    pynvml.nvmlInit.side_effect = pynvml.NVMLError_DriverNotLoaded()
    assert gpu_telemetry.open_gpus([0])[1].startswith("not measured: NVML is not available")
    pynvml.nvmlInit.side_effect = OSError("libnvidia-ml.so.1: cannot open shared object file")
    assert "cannot open shared object" in gpu_telemetry.open_gpus([0])[1]
    pynvml.nvmlShutdown.assert_not_called()


def test_no_pynvml_module():
    with mock.patch.dict(sys.modules, {"pynvml": None}):
        reader, status = gpu_telemetry.open_gpus([0])
    assert reader is None and status.startswith("not measured: pynvml cannot be imported")


TREE = """
import subprocess, sys, time
role = sys.argv[1]
def spawn(r, *args):  # every process carries the mark, as torchrun's command line and forked workers do
    return subprocess.Popen([sys.executable, __file__, r, *args, "-m", "yoloprof.worker"])
if role == "wrapper":
    spawn("torchrun", "-m", "torch.distributed.run").wait()
elif role == "torchrun":
    spawn("rank").wait()
elif role == "rank":
    zombie, busy = spawn("brief"), spawn("busy")  # "brief" exits and is never reaped: a zombie
    busy.wait()
elif role == "busy":
    sleeper, t = spawn("sleeper"), time.time()
    while time.time() - t < 3.0:
        pass
    sleeper.wait()
elif role == "sleeper":
    time.sleep(2.9)
"""


def test_the_cores_are_read_over_the_interval_since_the_reader_began_in_any_thread():
    """The sampler makes its reader in one thread and reads it in another. psutil.cpu_percent keeps its
    baseline per thread, so that first read said every core was idle ([0.0, 0.0], seen as an epoch's only
    sample); the reader keeps its own. A read too soon after the last (under a 10 ms tick's worth) is
    empty, not idle."""
    reader = cpu_telemetry.CpuReader(None)
    assert reader.read().cpu_pct_per_core == []  # at once: no interval yet

    def busy_then_read(box):
        t = time.monotonic()
        while time.monotonic() - t < 0.3:  # keep this core busy
            pass
        box.append(reader.read().cpu_pct_per_core)

    box = []
    th = threading.Thread(target=busy_then_read, args=(box,))
    th.start()
    th.join()
    (cores,) = box
    assert len(cores) == psutil.cpu_count() and sum(cores) > 50, cores  # one core's worth, at least
    assert reader.read().cpu_pct_per_core == []  # again too soon after that one


def test_busy_pct_is_psutils_formula():
    T = collections.namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    a = T(100, 0, 50, 800, 50, 0, 0, 0, 10, 0)
    b = T(160, 0, 70, 880, 70, 0, 0, 0, 30, 0)  # +60 user (20 of it guest), +20 system, +80 idle, +20 iowait
    assert cpu_telemetry.busy_pct(a, b) == round(100 * 80 / 180, 1)  # total 200 - 20 guest; busy 180 - 100
    assert cpu_telemetry.busy_pct(a, a) == 0.0


def test_cpu_reader_on_a_real_process_tree(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    root = subprocess.Popen([sys.executable, str(script), "wrapper", "-m", "yoloprof.worker"])  # a shell, say
    try:
        reader = cpu_telemetry.CpuReader(root.pid)
        deadline, steady = time.time() + 5, 0
        while steady < 3 and time.time() < deadline:  # the tree is starting: wait for it to settle
            steady = steady + 1 if reader.read().loader_workers == 2 else 0
            time.sleep(0.05)
        walks = mock.patch.object(psutil.Process, "children", autospec=True, side_effect=psutil.Process.children)
        with walks as children:
            for _ in range(4):
                time.sleep(0.1)
                reader.read()
        assert children.call_count <= 1  # reads between walks look only at the processes already known
        time.sleep(0.3)
        s = reader.read()
        # the rank's busy child and its own child are workers; the zombie is not; torchrun is no rank
        assert s.loader_workers == 2 and s.loader_cpu_pct > 10 and s.loader_rss_mib > 0, s  # busy, even under load
        assert 0 < s.ranks_rss_mib < s.loader_rss_mib and s.ranks_cpu_pct < 30, s
        assert len(s.cpu_pct_per_core) >= 1 and max(s.cpu_pct_per_core) > 0 and s.mem_available_mib > 0
        assert cpu_telemetry.CpuReader(None).read().loader_workers == 0  # not attached yet
        while root.poll() is None:  # processes exit between reads: no error, fewer workers
            n = reader.read().loader_workers
            assert n <= 2
            time.sleep(0.05)
        gone = reader.read()
        assert gone.loader_workers == 0 and gone.loader_cpu_pct == 0.0 and gone.ranks_rss_mib == 0.0
    finally:
        root.kill()
        root.wait()


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sampler_writes_a_header_then_samples_and_survives_a_failing_reader(tmp_path, nvml):
    path = tmp_path / "telemetry.jsonl"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
        t_begin = time.time()
        with telemetry.TelemetrySampler(path, interval_s=0.05, gpus=[0, 1], environ=environ) as s:
            s.attach(child.pid)  # the trial starts after the sampler
            time.sleep(0.6)
            s.gpu.read = mock.Mock(side_effect=RuntimeError("driver went away"))
            time.sleep(0.6)
        t_end = time.time()
    finally:
        child.kill()
        child.wait()
    header, gpu, cpu, notes = read_telemetry(path)
    assert header.gpu_status == "ok" and header.interval_s == 0.05 and header.gpus == [0, 1]
    assert header.nvml_indices == [0, 1] and t_begin <= header.t_start_s <= cpu[0].t_s
    # What the sampler guarantees, whatever the machine's load: samples of both GPUs before the failure, times
    # in order and inside the sampler's life, and, over many samples, an interval near the period (a loaded
    # machine delays single samples; it does not halve the rate)
    assert {x.gpu for x in gpu} == {0, 1} and len(cpu) >= 2
    for series in ([x.t_s for x in cpu], [x.t_s for x in gpu if x.gpu == 0]):
        assert series == sorted(series) and t_begin <= series[0] and series[-1] <= t_end
    t = [x.t_s for x in cpu]
    gaps = sorted(b - a for a, b in zip(t, t[1:]))
    assert 0.045 <= gaps[len(gaps) // 2] < 0.1  # the median interval: on schedule
    assert notes == [
        "not supported by the GPU: energy_j, nvlink_rx_mib_s, nvlink_tx_mib_s, pcie_rx_mib_s, pcie_tx_mib_s, power_w",
        "gpu telemetry stopped: RuntimeError: driver went away",
    ]
    kinds = [x["kind"] for x in lines(path)]
    assert kinds[0] == "header" and kinds.count("error") == 1 and kinds[-1] == "unsupported"
    assert kinds.index("error") < max(i for i, k in enumerate(kinds) if k == "cpu")  # the CPU went on
    pynvml.nvmlShutdown.assert_called_once()


def test_sampler_without_gpus_says_why_and_survives_a_failing_cpu_reader(tmp_path):
    path = tmp_path / "t.jsonl"
    reads = [CpuSample(1.0, [5.0], 0, 0, 0, 0, 0, 1.0), OSError("proc went away")]
    with (
        mock.patch.object(cpu_telemetry.CpuReader, "read", side_effect=reads),
        telemetry.TelemetrySampler(path, interval_s=0.05, gpus=[]),
    ):
        deadline = time.monotonic() + 30  # until the second read has failed, however slow the machine
        while '"kind": "error"' not in (path.read_text() if path.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
    header, gpu, cpu, notes = read_telemetry(path)
    assert header.gpu_status == "not measured: no GPU in this run" and header.nvml_indices == [] and gpu == []
    assert len(cpu) == 1 and notes == ["cpu telemetry stopped: OSError: proc went away"]
    assert [x["kind"] for x in lines(path)] == ["header", "cpu", "error"]


def test_sampler_never_raises_into_the_scan(tmp_path):
    (tmp_path / "file").write_text("")
    s = telemetry.TelemetrySampler(tmp_path / "file" / "t.jsonl", interval_s=0.05)
    with s:
        pass
    assert "telemetry not written" in s.error
    telemetry.TelemetrySampler(tmp_path / "t.jsonl").stop()  # stop without start


def test_read_telemetry_tolerates_a_cut_file_and_no_file(tmp_path):
    assert read_telemetry(tmp_path / "missing.jsonl") == (None, [], [], [])
    path = tmp_path / "t.jsonl"
    header = {
        "kind": "header",
        "interval_s": 0.1,
        "gpus": [0],
        "nvml_indices": [0],
        "gpu_status": "ok",
        "unsupported": ["power_w"],
    }
    path.write_text(
        json.dumps(header)
        + "\n"
        + json.dumps({"kind": "gpu", "t_s": 1.0, "gpu": 0, "sm_util_pct": 50})
        + "\n"
        + '{"kind": "cpu", "t_s": 1.0, "cpu_pct_per'
    )
    header, gpu, cpu, notes = read_telemetry(path)
    assert header.gpus == [0] and gpu[0].sm_util_pct == 50.0 and cpu == []
    assert notes == ["not supported by the GPU: power_w"]


def g(t, gpu, util, energy=None, power=None, used=1000.0, reasons=None):
    return GpuSample(
        t_s=t,
        gpu=gpu,
        sm_util_pct=util,
        energy_j=energy,
        power_w=power,
        mem_used_mib=used,
        sm_clock_mhz=1000.0 + gpu,
        throttle_reasons=reasons,
    )


def test_summary_over_the_measured_window():
    header = TelemetryHeader(0.1, [0, 1], [0, 1], "ok")
    gpu = [
        g(0.0, 0, 0.0, 0.0, reasons=["hw_slowdown"]),
        g(0.0, 1, 0.0, power=900.0),  # before the window
        g(1.0, 0, 40.0, 100.0),
        g(1.0, 1, 60.0, power=200.0),
        g(2.0, 0, 100.0, 400.0, used=5000.0, reasons=["sw_power_cap"]),
        g(2.0, 1, 80.0, power=300.0),
        g(3.0, 0, 90.0, 500.0),
        g(3.0, 1, 50.0, power=300.0, reasons=["idle", "hw_thermal"]),
        g(3.5, 0, 0.0, 9000.0, used=9999.0),
        g(3.5, 1, 0.0, power=900.0),
    ]  # after it
    cpu = [
        CpuSample(0.5, [0.0, 0.0], 0, 0.0, 5000.0, 0.0, 0.0, 100.0),  # outside
        CpuSample(1.5, [95.0, 99.0], 4, 180.0, 800.0, 150.0, 900.0, 9000.0),
        CpuSample(2.5, [95.0, 50.0], 4, 120.0, 900.0, 150.0, 900.0, 8000.0),
    ]
    s = summarize(header, gpu, cpu, 1.0, 3.0, images=100)
    assert s.gpu_status == "ok" and s.samples == 8
    assert s.gpu_util_mean_pct == pytest.approx(70.0)  # (40 + 60 + 100 + 80 + 90 + 50) / 6
    assert s.gpu_util_p10_pct == pytest.approx(54.0)  # per-time means 50, 90, 70: 50 + 0.2 x (70 - 50)
    # GPU 0 by its counter: 500 - 100 = 400 J; GPU 1 by integrated power: 250 + 300 = 550 J
    assert s.energy_j == pytest.approx(950.0) and s.energy_j_per_img == pytest.approx(9.5)
    assert s.power_w_mean == pytest.approx(800 / 3) and s.sm_clock_mhz_mean == pytest.approx(1000.5)
    assert s.gpu_mem_used_peak_mib == 5000.0 and s.throttle_reasons == ["hw_thermal", "idle", "sw_power_cap"]
    assert s.cpu_util_mean_pct == pytest.approx((97.0 + 72.5) / 2) and s.cpu_busy_cores_frac == 0.5
    assert s.loader_cpu_pct_mean == 150.0 and s.loader_rss_peak_mib == 900.0 and s.mem_available_min_mib == 8000.0


def test_summary_energy_none_when_a_gpu_has_neither_counter_nor_power():
    header = TelemetryHeader(0.1, [0, 1], [0, 1], "ok")
    gpu = [g(1.0, 0, 50.0, 100.0), g(2.0, 0, 50.0, 160.0), g(1.0, 1, 50.0), g(2.0, 1, 50.0)]
    s = summarize(header, gpu, [], 0.0, 9.0, images=0)
    assert s.energy_j is None and s.energy_j_per_img is None and s.power_w_mean is None
    s = summarize(header, gpu[:2], [], 0.0, 9.0, images=0)
    assert s.energy_j == 60.0 and s.energy_j_per_img is None  # no images: no per-image figure
    assert s.cpu_util_mean_pct is None and s.loader_rss_peak_mib is None and s.cpu_busy_cores_frac is None


def test_summary_without_telemetry_is_none_not_zero():
    s = summarize(None, [], [], 0.0, 1.0, images=10)
    assert s.gpu_status == "not measured: no telemetry file" and s.samples == 0 and s.throttle_reasons == []
    assert all(
        getattr(s, f) is None
        for f in (
            "gpu_util_mean_pct",
            "gpu_util_p10_pct",
            "gpu_mem_used_peak_mib",
            "power_w_mean",
            "energy_j",
            "energy_j_per_img",
            "sm_clock_mhz_mean",
            "cpu_util_mean_pct",
            "cpu_busy_cores_frac",
            "loader_cpu_pct_mean",
            "loader_rss_peak_mib",
            "mem_available_min_mib",
        )
    )
    no_gpu = TelemetryHeader(0.1, [], [], "not measured: no GPU in this run")
    cpu_only = summarize(no_gpu, [], [CpuSample(0.5, [10.0, 30.0], 0, 0.0, 0.0, 5.0, 50.0, 700.0)], 0.0, 1.0, images=10)
    assert cpu_only.gpu_util_mean_pct is None and cpu_only.energy_j is None and cpu_only.cpu_util_mean_pct == 20.0
