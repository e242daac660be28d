"""`yoloprof doctor`: NVML patched (autospec), /dev/shm sizes faked, the collective check run for real on gloo."""

from __future__ import annotations

import dataclasses
import json
import os
import types
from unittest import mock

import psutil
import pynvml
import pytest

from fake_nvml import UUIDS, patched
from yoloprof.probes import collective_check, environment, system_check
from yoloprof import cli
from yoloprof.scan import collective, preflight
from yoloprof.analysis import doctor
from yoloprof.search import plan
from yoloprof.errors import UsageError
from yoloprof.records import CollectiveCheck, DoctorReport, Environment, GpuInfo, NvmlGpu, from_dict, to_dict

A100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", 81920.0)


def env(n_gpus: int, cpu_count: int = 32, cuda: str = "13.0") -> Environment:
    return Environment(
        "h",
        "linux",
        "3.11",
        cpu_count,
        64000.0,
        "2.14.1+cu130",
        "8.4.190",
        cuda,
        "2.30.7",
        None,
        [dataclasses.replace(A100, index=i) for i in range(n_gpus)],
        [],
        {},
    )


def report(**over) -> DoctorReport:
    """A healthy 2-GPU machine; each test spoils one thing."""
    base = DoctorReport(
        device="cuda",
        device_asked=None,
        ranks=2,
        workers_per_rank=8,
        torch="2.14.1+cu130",
        torch_cuda="13.0",
        torch_cuda_error=None,
        torch_gpus=[A100, dataclasses.replace(A100, index=1)],
        nccl="2.30.7",
        nvml_status="ok",
        driver="580.65.06",
        driver_cuda="13.0",
        nvml_gpus=[NvmlGpu(i, i, A100.name, 81920.0, UUIDS[i]) for i in (0, 1)],
        cuda_visible_devices=None,
        mapping_note=None,
        cuda_visible_count=2,
        links=[],
        cpu_count=32,
        ram_total_mib=256000.0,
        ram_available_mib=200000.0,
        shm_total_mib=65536.0,
        shm_free_mib=65536.0,
        nofile_soft=65536,
        nofile_hard=65536,
    )
    return dataclasses.replace(base, **over)


def by_topic(r: DoctorReport, topic: str):
    return [f for f in doctor.findings(r) if f.topic == topic]


# --- readings: NVML patched -------------------------------------------------------------------


def test_nvml_readings_map_cuda_indices_and_links():
    levels = {(0, 1): pynvml.NVML_TOPOLOGY_SINGLE, (2, 3): pynvml.NVML_TOPOLOGY_HOSTBRIDGE}
    with patched(nvlink={(0, 1)}, levels=levels, refuse={(1, 3)}) as m:
        r = system_check.collect(env(4), device_asked=None, environ={})
        hidden = system_check.collect(env(2), device_asked=None, environ={"CUDA_VISIBLE_DEVICES": "GPU-cccc,0"})
    assert m["nvmlShutdown"].call_count == m["nvmlInit"].call_count == 2
    assert (r.nvml_status, r.driver, r.driver_cuda, r.cuda_visible_count) == ("ok", "535.104.05", "12.2", 4)
    assert [(g.nvml_index, g.cuda_index, g.name, g.mem_total_mib, g.uuid) for g in r.nvml_gpus[:1]] == [
        (0, 0, "NVIDIA A100-SXM4-80GB", 81920.0, UUIDS[0])
    ]
    links = {(x.gpu_a, x.gpu_b): (x.nvlink, x.pcie) for x in r.links}
    assert links == {
        (0, 1): (True, "PIX"),
        (0, 2): (False, "SYS"),
        (0, 3): (False, "SYS"),
        (1, 2): (False, "SYS"),
        (1, 3): (None, None),
        (2, 3): (False, "PHB"),
    }  # (1, 3) refused: n/a, not a guess
    # CUDA 0 is physical GPU 2 (by UUID prefix), CUDA 1 is GPU 0; GPUs 1 and 3 are hidden from CUDA
    assert [g.cuda_index for g in hidden.nvml_gpus] == [1, None, 0, None] and hidden.cuda_visible_count == 2
    assert [(x.gpu_a, x.gpu_b, x.pcie) for x in hidden.links] == [(0, 1, "SYS")]
    warn, ok = by_topic(dataclasses.replace(r, ranks=4), "topology")
    assert warn.severity == "warn" and warn.what.startswith("GPUs 0-2, 0-3, 1-2 talk across CPU sockets (SYS)")
    assert ok.what == "GPU links: 0-1 NVLink, 0-2 SYS, 0-3 SYS, 1-2 SYS, 1-3 n/a, 2-3 PHB"


def test_no_nvml_is_not_measured_and_mixed_models_are_noted():
    with patched() as m:
        m["nvmlInit"].side_effect = pynvml.NVMLError_LibraryNotFound()
        r = system_check.collect(env(0), device_asked=None, environ={})
    assert r.nvml_status.startswith("not measured: NVML is not available") and r.nvml_gpus == [] and r.driver is None
    assert doctor.torch_blind(r) is None  # nothing seen anywhere: CPU ranks, no error
    with patched(count=2) as m:
        m["nvmlDeviceGetName"].side_effect = lambda h: ["NVIDIA A100", "NVIDIA L4"][h.index]
        r = system_check.collect(env(2), device_asked=None, environ={})
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in r.mapping_note and [g.cuda_index for g in r.nvml_gpus] == [None, None]
    (warn,) = [f for f in by_topic(r, "gpus") if f.severity == "warn"]
    assert "cannot be matched to torch's 2 GPUs" in warn.what


def test_shm_and_open_files_readings():
    fake = types.SimpleNamespace(f_blocks=16384, f_bavail=4096, f_frsize=4096)  # 64 MiB, 16 MiB free
    assert system_check.shm_mib("/dev/shm", lambda path: fake) == (64.0, 16.0)
    assert system_check.shm_mib("/no/such/mount") == (None, None)
    soft, hard = system_check.nofile()
    assert soft == os.sysconf("SC_OPEN_MAX") and (hard is None or hard >= soft)
    assert [system_check.cuda_version(v) for v in (12020, 13000, 11080, 12090, None)] == [
        "12.2",
        "13.0",
        "11.8",
        "12.9",
        None,
    ]


# --- item 7: torch blind to the GPUs NVML sees --------------------------------------------------


@pytest.mark.parametrize(
    "driver_cuda,tag",
    [
        ("11.4", None),
        ("11.8", "cu118"),
        ("12.0", "cu118"),
        ("12.2", "cu121"),
        ("12.5", "cu124"),
        ("12.6", "cu126"),
        ("12.8", "cu128"),
        ("12.9", "cu129"),
        ("13.0", "cu130"),
        ("13.2", "cu130"),
        (None, None),
    ],
)
def test_install_line_picks_the_newest_wheel_the_driver_runs(driver_cuda, tag):
    assert doctor.torch_wheel(driver_cuda) == tag


def test_torch_blind_to_gpus_is_an_error_with_the_install_line():
    with patched(count=2, driver="535.104.05", cuda=12020):
        r = system_check.collect(env(0), device_asked=None, environ={})
        cpu = system_check.collect(env(0), device_asked="cpu", environ={})
    f = doctor.torch_blind(r)
    assert f.severity == "error" and r.device == "cpu"
    assert "NVML sees 2 GPUs but torch 2.14.1+cu130 (built for CUDA 13.0) sees none" in f.what
    assert "driver 535.104.05 runs CUDA up to 12.2, older than torch's CUDA 13.0" in f.what
    assert 'make install TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu121"' in f.fix
    with pytest.raises(UsageError, match="535.104.05.*12.2.*13.0.*whl/cu121"):
        doctor.gate(r)
    doctor.gate(cpu)  # --device cpu: the user chose CPU
    assert doctor.torch_blind(dataclasses.replace(r, driver_cuda="11.4")).fix.startswith("update the NVIDIA driver")
    cpu_build = doctor.torch_blind(dataclasses.replace(r, torch_cuda=None))
    assert "a CPU-only build" in cpu_build.what and "whl/cu121" in cpu_build.fix
    new_driver = doctor.torch_blind(
        dataclasses.replace(r, driver_cuda="13.0", torch_cuda_error="no CUDA-capable device")
    )
    assert "torch says: no CUDA-capable device" in new_driver.what and "--gpus all" in new_driver.fix


def test_cuda_visible_devices_hiding_every_gpu_is_named():
    with patched(count=2):
        r = system_check.collect(env(0), device_asked=None, environ={"CUDA_VISIBLE_DEVICES": ""})
    f = doctor.torch_blind(r)
    assert f.what.startswith("CUDA_VISIBLE_DEVICES='' hides all 2 GPUs") and "unset CUDA_VISIBLE_DEVICES" in f.fix


# --- findings on records ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "free,ranks,workers,severity,words",
    [
        (60.0, 1, 1, "error", "Docker's default is 64 MiB"),
        (900.0, 1, 2, "warn", "less than the 1024 MiB"),  # at least 1 GiB whatever the plan
        (4096.0, 8, 8, "warn", "less than the 8192 MiB 8 rank(s) x 8 workers"),
        (8192.0, 8, 8, "ok", "/dev/shm: 8.0 GiB free"),
        (60.0, 2, 0, None, None),  # no workers: /dev/shm is not used
        (None, 2, 8, None, None),  # not measured: no finding
    ],
)
def test_shm_thresholds(free, ranks, workers, severity, words):
    found = by_topic(report(shm_free_mib=free, ranks=ranks, workers_per_rank=workers), "shm")
    if severity is None:
        assert found == []
        return
    (f,) = found
    assert f.severity == severity and words in f.what
    if severity != "ok":
        assert f.fix.startswith("docker run --shm-size=8g (or --ipc=host)")


def test_open_files_cores_and_ram():
    (f,) = by_topic(report(nofile_soft=1024, nofile_hard=1048576), "nofile")
    assert f.severity == "warn" and "below the 1536" in f.what and f.fix.startswith("ulimit -n 65536")
    (f,) = by_topic(report(nofile_soft=1024, nofile_hard=4096), "nofile")
    assert "raise the hard limit (4096)" in f.fix and "--ulimit nofile=65536:65536" in f.fix
    assert by_topic(report(nofile_soft=4096), "nofile")[0].severity == "ok"
    (f,) = by_topic(report(ranks=8, cpu_count=16), "cores")
    assert (
        f.severity == "warn" and "16 CPU cores for 8 GPUs (2.0 per GPU)" in f.what and "at most 2 DataLoader" in f.what
    )
    assert by_topic(report(ranks=8, cpu_count=32), "cores") == []
    (f,) = by_topic(report(device="cpu", ranks=4, cpu_count=2), "cores")
    assert f.fix == "--nproc 2"
    (f,) = by_topic(report(ranks=8, ram_available_mib=16000.0), "ram")
    assert "15.6 GiB RAM available for 8 ranks" in f.what
    assert doctor.ultralytics_workers(16, 8) == 2 and doctor.ultralytics_workers(128, 4) == 8


def check(status, env_=None, phases=("done", "done"), error=None):
    return CollectiveCheck("nccl", 2, env_ or {}, status, 60.0, 3.5 if status == "ok" else 60.0, list(phases), error)


def test_collective_findings_name_the_setting_that_works():
    (f,) = by_topic(report(collectives=[check("ok")]), "collective")
    assert f.severity == "ok" and f.what == "nccl AllReduce across 2 GPUs: ok in 3.5 s, start-up included"
    hang = check("hang", phases=("all_reduce", "all_reduce"), error="no answer within 60 s")
    (f,) = by_topic(report(collectives=[hang, check("ok", collective_check.P2P_OFF)]), "collective")
    assert f.severity == "error" and "hangs (no answer within 60 s; the ranks met, the first AllReduce never" in f.what
    assert "works with NCCL_P2P_DISABLE=1" in f.what and f.fix.startswith(
        "export NCCL_P2P_DISABLE=1 before yoloprof scan"
    )
    never_met = check("hang", collective_check.P2P_OFF, phases=("init", "all_reduce"), error="no answer within 60 s")
    (f,) = by_topic(report(collectives=[hang, never_met]), "collective")
    assert "the ranks never met: init, all_reduce) (also with NCCL_P2P_DISABLE=1)" in f.what
    assert "NCCL_DEBUG=INFO" in f.fix
    assert by_topic(report(), "collective") == []  # not run: no finding
    assert [f.severity for f in doctor.findings(report(collectives=[hang, never_met], shm_free_mib=600.0))][:2] == [
        "error",
        "warn",
    ]  # errors first


def test_record_round_trips():
    with patched(nvlink={(0, 1)}):
        r = system_check.collect(env(2), device_asked="cuda", environ={})
    r = dataclasses.replace(r, collectives=[check("hang", phases=("init", "init"), error="x"), check("ok")])
    assert from_dict(DoctorReport, json.loads(json.dumps(to_dict(r)))) == r


# --- the collective check: retries, and real gloo runs ------------------------------------------


def test_nccl_retries_with_p2p_disabled_only_when_needed(monkeypatch, tmp_path):
    answers = iter(["hang", "ok"])
    calls = []

    def once(world, backend, timeout_s, extra, folder, visible):
        calls.append((extra, visible))
        return check(next(answers), extra)

    monkeypatch.setattr(collective, "_once", once)
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    out = collective.run(2, backend="nccl", timeout_s=5, gpus=["3", "1"], work_dir=tmp_path)
    assert [c.status for c in out] == ["hang", "ok"] and calls == [({}, "3,1"), ({"NCCL_P2P_DISABLE": "1"}, "3,1")]
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")  # already set by the user: nothing else to try
    answers, calls[:] = iter(["hang"]), []
    assert [c.status for c in collective.run(2, backend="nccl", timeout_s=5)] == ["hang"] and len(calls) == 1


def test_scan_runs_the_collective_on_gpus_only(monkeypatch):
    runs = mock.Mock(return_value=[check("hang", error="no answer within 60 s"), check("ok", collective_check.P2P_OFF)])
    monkeypatch.setattr(collective, "run", runs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    console = mock.Mock()
    cpu = plan.Hardware("cpu", 2, [], 2, 0)
    preflight.before_scan(report(device="cpu", torch_gpus=[], nvml_gpus=[]), cpu, 2, console)
    runs.assert_not_called()  # a CPU scan starts no extra process
    with pytest.raises(
        UsageError, match="works with NCCL_P2P_DISABLE=1: peer-to-peer .*; fix: export NCCL_P2P_DISABLE=1"
    ):
        preflight.before_scan(report(), plan.Hardware("cuda", 2, [0, 2], 32, 3), 8, console)
    assert runs.call_args.kwargs == {"backend": "nccl", "timeout_s": 60.0, "gpus": ["4", "6"]}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_gloo_collective_for_real_and_a_hang_caught(tmp_path, monkeypatch):
    (ok,) = collective.run(2, backend="gloo", timeout_s=60, work_dir=tmp_path / "ok")
    assert (ok.status, ok.phases, ok.error, ok.env) == ("ok", ["done", "done"], None, {}) and ok.wall_s < 60
    monkeypatch.setenv(collective_check.HANG_ENV, "p2p")  # rank 1 stalls unless NCCL_P2P_DISABLE=1
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    hang, retry = collective.run(
        2, backend="gloo", timeout_s=25, work_dir=tmp_path / "hang", settings=[{}, collective_check.P2P_OFF]
    )
    assert (hang.status, hang.phases, hang.error) == ("hang", ["all_reduce", "all_reduce"], "no answer within 25 s")
    assert 25 <= hang.wall_s < 40  # 25 s: the ranks reach all_reduce first (torch imports) on a busy machine
    assert (retry.status, retry.env, retry.phases) == ("ok", {"NCCL_P2P_DISABLE": "1"}, ["done", "done"])
    pids = [json.loads((tmp_path / "hang" / "try0" / f"rank{r}.json").read_text())["pid"] for r in (0, 1)]
    assert not any(alive(p) for p in pids)  # the hung ranks were ended with their process group
    assert not [p for p in psutil.Process().children(recursive=True) if "collective_check" in " ".join(p.cmdline())]


# --- the command --------------------------------------------------------------------------------


def test_doctor_command_small_shm_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(system_check, "shm_mib", lambda *a, **k: (64.0, 60.0))  # Docker's default
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: env(0, cpu_count=2))
    out = tmp_path / "doctor.json"
    code = cli.main(["doctor", "--device", "cpu", "--nproc", "1", "--json", str(out)])  # one rank: no collective
    got = capsys.readouterr()
    assert code == 2, got.err
    (line,) = got.err.strip().splitlines()
    assert line.startswith("yoloprof: error: /dev/shm has 60 MiB free of 64 MiB") and "--shm-size=8g" in line
    assert "Traceback" not in got.err and "not run (one rank)" in got.out
    saved = json.loads(out.read_text())
    assert saved["report"]["shm_free_mib"] == 60.0 and saved["findings"][0]["severity"] == "error"


def test_doctor_command_torch_blind_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: env(0))
    with patched(count=2, driver="470.182.03", cuda=11040):
        code = cli.main(["doctor", "--gpus", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "driver 470.182.03 runs CUDA up to 11.4" in err and "update the NVIDIA driver" in err


@pytest.mark.slow
def test_doctor_command_on_cpu_runs_gloo(capsys, tmp_path):
    out = tmp_path / "d.json"
    assert cli.main(["doctor", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gloo AllReduce across 2 CPU ranks: ok in" in printed and "2 CPU ranks with gloo" in printed
    saved = from_dict(DoctorReport, json.loads(out.read_text())["report"])
    assert saved.device == "cpu" and saved.ranks == 2 and [c.status for c in saved.collectives] == ["ok"]
