"""A trial's processes and GPU memory are gone before the next trial starts (NVML patched with autospec)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from unittest import mock

import psutil
import pynvml
import pytest

from yoloprof.probes.gpu_release import ReleaseWatch
from yoloprof.scan import launch
from yoloprof.analysis.aggregate import LaunchOutcome, aggregate
from yoloprof.records import Knobs, TrialSpec

GIB = 2**30


class Gpu:
    """Memory used and compute processes, as a script of NVML answers, one per poll."""

    def __init__(self, used_gib: list[float], pids: list[list[int]]):
        self.used_gib, self.pids, self.polls = used_gib, pids, 0

    def memory(self):
        v = self.used_gib[min(self.polls, len(self.used_gib) - 1)]
        return types.SimpleNamespace(used=int(v * GIB), total=80 * GIB, free=int((80 - v) * GIB))

    def processes(self):
        found = self.pids[min(self.polls, len(self.pids) - 1)]
        self.polls += 1
        return [types.SimpleNamespace(pid=p, usedGpuMemory=GIB) for p in found]


@pytest.fixture
def gpus():
    names = (
        "nvmlInit",
        "nvmlShutdown",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetComputeRunningProcesses",
    )
    devices: list[Gpu] = []
    with mock.patch.multiple(pynvml, autospec=True, **{n: mock.DEFAULT for n in names}) as m:
        m["nvmlDeviceGetCount"].side_effect = lambda: len(devices)
        m["nvmlDeviceGetHandleByIndex"].side_effect = lambda i: devices[i]
        m["nvmlDeviceGetName"].side_effect = lambda h: "NVIDIA H100 80GB HBM3"
        m["nvmlDeviceGetMemoryInfo"].side_effect = lambda h: h.memory()
        m["nvmlDeviceGetComputeRunningProcesses"].side_effect = lambda h: h.processes()
        yield devices


def test_the_wait_lasts_until_pids_leave_and_memory_returns(gpus):
    # baseline 1 GiB; the dead rank 4242 is listed for 2 more polls and its 20 GiB freed after 4
    gpus += [Gpu([1, 21, 21, 21, 21, 1.1], [[], [4242], [4242], [], []]), Gpu([1], [[]])]
    watch = ReleaseWatch([0, 1], environ={})
    assert watch.baseline_mib == [pytest.approx(1024), pytest.approx(1024)]
    waited, held = watch.wait({4242}, timeout_s=10, poll_s=0.01)
    assert held is None and gpus[0].polls == 5  # 2 polls with the pid listed, 2 more until the memory fell
    assert watch.pending({4242}) is None


def test_memory_never_released_becomes_a_note_not_a_hang(gpus):
    gpus += [Gpu([1, 30], [[]])]
    watch = ReleaseWatch([0], environ={})
    start = time.monotonic()
    waited, held = watch.wait(set(), timeout_s=0.3, poll_s=0.05)
    assert 0.3 <= waited < 2 and time.monotonic() - start < 2
    assert held == "GPU 0 still uses 29696 MiB more than before the trial"
    spec = TrialSpec("t1", Knobs(8, 2, True, True, "off", "default"), 1, "cuda", [0], "m", "/d", 64, "SGD", 1, 1, {})
    r = aggregate(spec, [], LaunchOutcome(0, release_note=f"GPU memory not released 0 s after the trial ended: {held}"))
    assert any("the next trial may have started with less memory" in n for n in r.notes)


def test_no_nvml_waits_for_nothing():
    watch = ReleaseWatch([])
    assert watch.wait({1, 2}) == (0.0, None)


def test_wait_gone_waits_for_a_process_that_exits_late():
    # a group whose member takes ~1 s to exit after SIGTERM, as a rank tearing down its CUDA context does
    code = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), exit(0))); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    assert launch.group_alive(proc.pid)
    gone_s = launch.wait_gone(proc.pid, timeout_s=10)
    assert gone_s is not None and gone_s > 0.5
    proc.wait(timeout=5)
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


def test_run_trial_waits_for_the_group_and_the_gpus_before_returning(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        launch, "torchrun_command", lambda spec, path, port, rendezvous=None: [sys.executable, "-c", "pass"]
    )
    monkeypatch.setattr(launch, "wait_gone", lambda pgid, **kw: calls.append(("gone", pgid)) or 0.25)

    class Watch:
        def __init__(self, gpus, environ=None):
            calls.append(("baseline", tuple(gpus)))

        def wait(self, pids):
            calls.append(("release", pids))
            return 1.5, "process(es) 77 still on the GPU"

        def close(self):
            calls.append(("close",))

    monkeypatch.setattr("yoloprof.probes.gpu_release.ReleaseWatch", Watch)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rank0.jsonl").write_text(
        '{"kind": "info", "rank": 0, "local_rank": 0, "world_size": 1, "pid": 77, "hostname": "h", "device": "cuda:0", '
        '"device_name": "H100", "backend": null, "batch_per_rank": 8, "accumulate": 8, "workers_requested": 2, '
        '"workers_effective": 2, "pin_memory_effective": true, "amp_effective": true, "dataset_images": 16, '
        '"batches_per_epoch": 2, "ddp_bucket_cap_mb": null, "torch_threads": 1, "t_start_s": 0}\n'
    )
    spec = TrialSpec("t", Knobs(8, 2, True, True, "off", "default"), 1, "cuda", [3], "m", "/d", 64, "SGD", 1, 1, {})
    outcome = launch.run_trial(spec, tmp_path / "t", cache_dir=tmp_path / "cache")
    assert [c[0] for c in calls] == ["baseline", "gone", "release", "close"]
    assert calls[0] == ("baseline", (3,)) and calls[2] == ("release", {77})
    assert outcome.release_s == pytest.approx(1.75)
    assert outcome.release_note == "GPU memory not released 2 s after the trial ended: process(es) 77 still on the GPU"
