"""The GPU check's verdicts, on hand-made records (the driver itself needs a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path


from conftest import load_benchmark
from yoloprof.records import Breakdown, ComputePoint, Knobs, TelemetrySummary, TrialResult

gpu_check = load_benchmark("gpu_check", "gpu_check")


def bd(wait, h2d, fwd, bwd, opt):
    return Breakdown(wait, h2d, fwd, bwd, None, opt, 0.0, wait + h2d + fwd + bwd + opt)


def test_phases_agree_within_ten_percent_or_one_millisecond():
    c = gpu_check.compare_phases(bd(0.4, 1.2, 30.0, 61.0, 5.0), bd(1.3, 1.0, 31.0, 60.0, 5.4))
    assert c.ok is True  # 0.9 ms and 0.2 ms are inside 1 ms; 1 ms of 31 and 60 inside 10%
    bad = gpu_check.compare_phases(bd(0.0, 1.0, 30.0, 45.0, 5.0), bd(20.0, 1.0, 30.0, 60.0, 5.0))
    assert bad.ok is False and "data_wait, backward" in bad.detail.replace("_ms", "")
    assert bad.figures["backward_ms"] == dict(events_ms=45.0, synced_ms=60.0, diff_ms=15.0)


def result(tid, util=91.0, power=412.0, used=20000.0, status="ok", gpu_status="ok"):
    t = TelemetrySummary(gpu_status, gpu_util_mean_pct=util, power_w_mean=power, gpu_mem_used_peak_mib=used)
    return TrialResult(
        tid,
        status,
        Knobs(32, 8, True, True, "off", "default"),
        1,
        "cuda",
        telemetry=t,
        peak_mem_mib=18000.0,
        device_mem_total_mib=81559.0,
    )


def test_telemetry_must_be_present_and_plausible():
    assert gpu_check.telemetry_plausible([result("a"), result("b", status="oom", util=None)]).ok is True
    c = gpu_check.telemetry_plausible(
        [
            result("a", power=412000.0),
            result("b", used=9000.0),
            result("c", gpu_status="not measured: NVML is not available"),
        ]
    )
    assert c.ok is False
    assert "a: power 412000.0 W" in c.detail and "b: NVML used 9000 < allocator 18000 MiB" in c.detail
    assert "c: not measured" in c.detail


def test_the_fit_must_run_and_stay_below_the_first_oom():
    pts = [ComputePoint(96, True, "ok"), ComputePoint(192, True, "oom")]
    c = gpu_check.fit_against_oom(96, pts)
    assert c.ok is True and c.figures == dict(fit=96, first_oom=192, ran=[96]) and "fit / OOM = 0.50" in c.detail
    assert gpu_check.fit_against_oom(200, pts + [ComputePoint(200, True, "ok")]).ok is False  # predicted past an OOM
    assert gpu_check.fit_against_oom(96, [ComputePoint(96, True, "ok")]).ok is None  # nothing ran out: no verdict


# -- the driver: stages, estimates, the deadline, results written as they come (no GPU) -------------------

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import zipfile  # noqa: E402

from yoloprof.analysis.aggregate import read_ranks  # noqa: E402
from yoloprof.records import TrialSpec, read_json  # noqa: E402

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CPU_SCAN = Path(__file__).parent / "fixtures" / "cpu-scan"
# Run the script with torch and pynvml unimportable: a dry run that touched CUDA (or NVML) would fail.
NO_CUDA = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['pynvml'] = None; "
    "sys.argv = ['gpu_check.py'] + sys.argv[1:]; runpy.run_path(%r, run_name='__main__')" % str(SCRIPT)
)


def run_script(*args):
    return subprocess.run([sys.executable, "-c", NO_CUDA, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_dry_run_prints_every_stage_with_its_estimate_and_touches_no_cuda():
    r = run_script("--dry-run")
    assert r.returncode == 0, r.stderr
    for i, stage in enumerate(gpu_check.STAGES, 1):
        assert re.search(rf"^ +{i}\. {re.escape(stage.name)} +{stage.estimate_s:.0f} s  \S", r.stdout, re.M), stage.name
    names = [s.name for s in gpu_check.STAGES]
    assert names == ["cuda-start", "doctor", "grid", "phases", "nccl", "oom-fit", "knobs", "watch"]
    total = sum(s.estimate_s for s in gpu_check.STAGES)
    before_watch = total - gpu_check.STAGES[-1].estimate_s
    assert 480 <= before_watch <= gpu_check.BUDGET_S  # about 8 minutes; the watch runs where the others left time
    assert re.search(rf"^  total +{total:.0f} s \(8\.\d min\)$", r.stdout, re.M)
    assert "run only if earlier stages finish sooner: watch" in r.stdout
    assert not list((ROOT / "runs").glob("gpu-check-dry*"))  # nothing written


def test_stages_are_picked_by_name_and_run_in_the_checks_order():
    r = run_script("--dry-run", "--stages", "knobs,grid")
    assert r.returncode == 0, r.stderr
    rows = [ln.split()[1] for ln in r.stdout.splitlines() if ln.strip()[:2] in ("1.", "2.")]
    assert rows == ["grid", "knobs"] and re.search(r"^  total +225 s", r.stdout, re.M)
    bad = run_script("--dry-run", "--stages", "grid,warp")
    assert bad.returncode == 2 and "unknown stage(s) warp" in bad.stderr and "oom-fit" in bad.stderr


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def fake_stage(name, estimate, takes, ok=True, seen=None, clock=None, raises=False):
    def fn(ctx):
        if seen is not None:
            seen.append((name, ctx.stage_deadline - clock.t, sorted(p.name for p in ctx.out.glob("*.json"))))
        clock.t += takes
        if raises:
            raise RuntimeError(f"{name} broke")
        return [gpu_check.Check(f"{name} check", ok, "fine" if ok else "wrong")]

    return gpu_check.Stage(name, estimate, fn, f"the {name} stage")


def test_a_stage_whose_estimate_no_longer_fits_is_skipped_and_says_why(tmp_path):
    clock, seen = FakeClock(), []
    stages = [
        fake_stage("a", 100, 150, seen=seen, clock=clock),
        fake_stage("b", 200, 200, seen=seen, clock=clock),
        fake_stage("c", 200, 10, seen=seen, clock=clock),
        fake_stage("d", 100, 50, seen=seen, clock=clock),
    ]
    ctx = gpu_check.Ctx(out=tmp_path / "out", clock=clock)
    summary = gpu_check.Runner(stages, ctx, budget_s=480, echo=lambda s: None).run()
    by = {r["name"]: r for r in summary["stages"]}
    assert [n for n, *_ in seen] == ["a", "b", "d"]  # c (200 s) did not fit the 130 s left after 350 s; d did
    assert by["c"]["status"] == "skipped" and "200 s does not fit the 130 s left" in by["c"]["reason"]
    assert by["a"]["status"] == by["b"]["status"] == by["d"]["status"] == "pass"
    assert by["b"]["wall_s"] == 200.0 and by["b"]["started_at_s"] == 150.0
    # children may run to twice the estimate (a minute over it at least), never past the budget and its grace
    assert seen[0][1] == 200.0 and seen[1][1] == 350.0 and seen[2][1] == 130.0 + gpu_check.GRACE_S
    assert summary["finished"] and summary["verdict"] == "pass with gaps"  # c was skipped


def test_each_result_is_written_the_moment_its_stage_ends_and_a_raising_stage_is_a_result(tmp_path, capsys):
    clock, seen = FakeClock(), []
    copy = tmp_path / "OUT"
    copy.mkdir()
    stages = [
        fake_stage("first", 10, 5, seen=seen, clock=clock),
        fake_stage("second", 10, 5, seen=seen, clock=clock, raises=True),
        fake_stage("third", 10, 5, ok=False, seen=seen, clock=clock),
    ]
    ctx = gpu_check.Ctx(out=tmp_path / "out", clock=clock)
    summary = gpu_check.Runner(stages, ctx, budget_s=480, copy_to=copy).run()
    assert [s["status"] for s in summary["stages"]] == ["pass", "error", "fail"]
    assert seen[1][2] == ["first.json", "gpu_check.json"]  # when the second ran, the first's result was there
    assert seen[0][1] == 70.0  # a 10 s stage's children get a minute over its estimate
    first = json.loads((tmp_path / "out" / "first.json").read_text())
    assert first["status"] == "pass" and first["checks"][0]["name"] == "first check"
    saved = json.loads((copy / "gpu_check.json").read_text())
    assert saved == json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    second = saved["stages"][1]
    assert second["status"] == "error" and second["error"] == "RuntimeError: second broke"
    assert "Traceback" in (tmp_path / "out" / "second" / "traceback.txt").read_text()
    assert saved["stages"][2]["status"] == "fail" and saved["verdict"] == "fail" and saved["finished"]
    with tarfile.open(copy / "records.tar.gz") as tar:
        assert "out/first.json" in tar.getnames() and "out/second/traceback.txt" in tar.getnames()
    assert sorted(p.name for p in copy.iterdir()) == ["gpu_check.json", "records.tar.gz"]  # few files, no temporaries
    out = capsys.readouterr().out
    assert "[ERR ] second in 5 s (estimate 10 s): RuntimeError: second broke" in out
    assert "[FAIL] third" in out and "[PASS] first" in out


def test_the_main_exits_1_when_a_stage_failed(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(
        gpu_check, "STAGES", [fake_stage("x", 10, 1, clock=clock), fake_stage("y", 10, 1, ok=False, clock=clock)]
    )
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--out", str(tmp_path / "o"), "--device", "cpu", "--stages", "x"]) == 0
    assert gpu_check.main(["--out", str(tmp_path / "o"), "--device", "cpu"]) == 1


def test_a_long_log_keeps_its_tail_and_images_stay_out_of_the_records(tmp_path):
    out = tmp_path / "gpu-check"
    (out / "grid" / "scan" / "trials" / "t1" / "compile-cache").mkdir(parents=True)
    (out / "grid" / "scan" / "trials" / "t1" / "rank0.log").write_bytes(b"x" * 300_000 + b"the end\n")
    (out / "grid" / "scan" / "trials" / "t1" / "rank0.jsonl").write_text("{}\n")
    (out / "grid" / "scan" / "trials" / "t1" / "compile-cache" / "k.json").write_text("{}")
    (out / "grid" / "img.jpg").write_bytes(b"jpeg")
    gpu_check.pack_records(out, tmp_path / "r.tar.gz")
    with tarfile.open(tmp_path / "r.tar.gz") as tar:
        names = tar.getnames()
        log = tar.extractfile("gpu-check/grid/scan/trials/t1/rank0.log").read()
    assert sorted(names) == ["gpu-check/grid/scan/trials/t1/rank0.jsonl", "gpu-check/grid/scan/trials/t1/rank0.log"]
    assert log.endswith(b"the end\n") and log.startswith(b"[... cut") and len(log) < 270_000


# -- the verdicts on rank records, on the recorded CPU scan ---------------------------------------------


def recorded_trials():
    trials = {}
    for tdir in sorted((CPU_SCAN / "trials").iterdir()):
        spec = read_json(tdir / "spec.json", TrialSpec)
        trials[tdir.name] = (spec.knobs, spec.device, read_ranks(tdir))
    return trials


def test_recorded_steps_add_up_and_say_how_they_were_timed():
    ranks = {t: v[2] for t, v in recorded_trials().items()}
    timing, add_up = gpu_check.steps_check(ranks, "host")
    assert timing.ok is True and add_up.ok is True and timing.figures["trials"] == 4 and timing.figures["steps"] > 40
    on_gpu = gpu_check.steps_check(ranks, "cuda_event")[0]
    assert on_gpu.ok is False and "rank 0 step 0: host" in on_gpu.detail and "more)" in on_gpu.detail


def test_a_step_whose_parts_do_not_add_up_is_named():
    s = read_ranks(CPU_SCAN / "trials" / "t01-b8-w0-fp32")[0].steps[3]
    assert gpu_check.step_problem(s) is None
    longer = dataclasses.replace(s, forward_ms=s.forward_ms + s.step_ms * 0.5, other_ms=s.other_ms - s.step_ms * 0.5)
    assert "below zero: other" in gpu_check.step_problem(longer)  # the parts outgrew the step
    assert "parts" in gpu_check.step_problem(dataclasses.replace(s, other_ms=s.other_ms + s.step_ms * 0.02))
    assert gpu_check.step_problem(dataclasses.replace(s, h2d_ms=None)) == "no h2d"
    bad = gpu_check.steps_check(
        {"t": [dataclasses.replace(read_ranks(CPU_SCAN / "trials" / "t01-b8-w0-fp32")[0], steps=[longer])]}, "host"
    )[1]
    assert bad.ok is False and bad.detail.startswith("t rank 0 step 3: below zero")


def test_effective_settings_are_checked_against_the_knobs_asked():
    trials = recorded_trials()
    keys = ("amp_effective", "pin_memory_effective", "compiled", "deterministic_effective", "channels_last_effective")
    c = gpu_check.settings_check(trials, keys)
    assert c.ok is True and c.figures == dict(ranks=8)  # CPU: amp, pin_memory and NHWC all off whatever was asked
    knobs, _, ranks = trials["t01-b8-w0-fp32"]
    on_gpu = {"t01": (dataclasses.replace(knobs, amp="bf16", pin_memory=True), "cuda", ranks)}
    c = gpu_check.settings_check(on_gpu, ("amp_effective", "pin_memory_effective"))
    assert c.ok is False and "t01 rank 0: amp_effective False, asked True" in c.detail
    assert "t01 rank 1: pin_memory_effective False, asked True" in c.detail
    assert gpu_check.expected_settings(dataclasses.replace(knobs, amp=False), "cuda")["amp_effective"] is False


def test_every_planned_trial_must_finish():
    ok = [result("a"), result("b")]
    assert gpu_check.trials_check(ok, ["a", "b"], 2).ok is True
    c = gpu_check.trials_check([result("a"), result("b", status="oom")], ["a", "b", "c"], 6)
    assert c.ok is False and c.detail == "c: no result; b: oom; 3 trials planned, 6 expected"


# -- what travels to the device machine (benchmarks/gpu_prepare.sh) --------------------------------------


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_the_travel_size_counts_tracked_untracked_and_carried_files_not_ignored_ones(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / ".gitignore").write_text("runs/\n.whl/\n")
    (root / "a.py").write_bytes(b"a" * 1000)
    git(root, "add", ".")
    (root / "new.py").write_bytes(b"n" * 300)  # untracked, not ignored: travels
    (root / "runs").mkdir()
    (root / "runs" / "big.bin").write_bytes(b"r" * 5000)  # ignored: stays
    (root / ".whl").mkdir()
    whl = wheel(root / ".whl", "x", "1", ["numpy"])  # carried
    files = gpu_check.travel_files(root)
    size = whl.stat().st_size
    assert files == {".gitignore": 12, "a.py": 1000, "new.py": 300, ".whl/x-1-py3-none-any.whl": size}
    lines = []
    assert gpu_check.check_travel(root, limit=10_000, echo=lines.append) == 0
    assert lines[0].startswith("travels: 4 files")
    lines.clear()
    assert (
        gpu_check.check_travel(root, limit=1000, echo=lines.append) == 1 and "over the device tool's limit" in lines[-1]
    )
    wheel(root / ".whl", "x", "2", ["torch"])
    (root / ".whl" / "y-1-py3-none-any.whl").write_bytes(b"not a zip")
    lines.clear()
    assert gpu_check.check_travel(root, limit=10_000, echo=lines.append) == 1
    assert (
        "two versions of x in .whl: x-1-py3-none-any.whl, x-2-py3-none-any.whl (pip refuses both): remove one" in lines
    )
    assert "y-1-py3-none-any.whl: not a readable wheel (BadZipFile: File is not a zip file)" in lines


def wheel(folder, name, version, requires):
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        meta = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
        z.writestr(
            f"{name.replace('-', '_')}-{version}.dist-info/METADATA",
            meta + "".join(f"Requires-Dist: {r}\n" for r in requires),
        )
    return path


def test_a_wheel_needing_what_the_device_lacks_is_named(tmp_path):
    ul = wheel(
        tmp_path,
        "ultralytics",
        "8.4.190",
        [
            "numpy>=1.23.0",
            "opencv-python!=4.13.0.90,>=4.7.0",
            "polars>=0.20.0",
            "ultralytics-thop>=2.2.3",
            'pywin32; sys_platform == "win32"',
            'ultralytics-platform>=0.1.45; python_version >= "3.11"',
            'pytest; extra == "dev"',
            "seaborn-extras (>=1)",
        ],
    )
    thop = wheel(tmp_path, "ultralytics-thop", "2.2.3", ["numpy", "torch"])
    assert gpu_check.wheel_requirements(thop) == ["numpy", "torch"]
    assert gpu_check.missing_requirements([ul, thop]) == {ul.name: ["polars", "ultralytics-platform", "seaborn-extras"]}


# -- the stages that need a GPU, on canned answers (their logic, not the GPU) ----------------------------


class CannedCtx(gpu_check.Ctx):
    """A context whose children are canned: `answers[name]` is (returncode, result dict or doctor JSON)."""

    def __init__(self, tmp_path, answers, **kw):
        super().__init__(out=tmp_path, **kw)
        self.stage_dir, self.answers, self.calls = tmp_path, answers, []

    def run(self, cmd, name, extra_env=None, timeout_s=None):
        self.calls.append((name, extra_env))
        code, payload = self.answers[name]
        log = self.stage_dir / f"{name}.log"
        log.write_text("\n".join(["some output", f"RESULT {json.dumps(payload)}" if "--json" not in cmd else ""]))
        if "--json" in cmd:
            Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(payload))
        return gpu_check.Ran(code, False, 1.0, log)


PEAK = dict(peak_mib=300.0, allocated_mib=0.0, total_mib=143771.0, source="cuda_reserved")


def test_cuda_start_passes_on_a_working_start_and_reports_the_old_orders_error(tmp_path):
    ok = dict(
        start="ok",
        start_s=1.5,
        initialized=True,
        current_device=0,
        peak_after_start=PEAK,
        peak_after_64mib={**PEAK, "allocated_mib": 64.0},
        peak_after_reset={**PEAK, "allocated_mib": 0.0},
    )
    old = dict(raised=True, error="RuntimeError: Invalid device argument 0: did you call init?")
    start, order = gpu_check.stage_cuda_start(CannedCtx(tmp_path, {"start": (0, ok), "old-order": (0, old)}))
    assert start.ok is True and "64 MiB with a 64 MiB tensor, 0 MiB after reset; device 143771 MiB" in start.detail
    assert order.ok is None and order.detail == "raises: RuntimeError: Invalid device argument 0: did you call init?"
    missing = gpu_check.stage_cuda_start(
        CannedCtx(tmp_path, {"start": (0, {"start": "missing"}), "old-order": (0, {"raised": False})})
    )
    assert missing[0].ok is False and missing[0].detail.startswith("missing")
    assert missing[1].detail == "does not raise with this torch"
    broken = gpu_check.stage_cuda_start(
        CannedCtx(tmp_path, {"start": (1, {"start": "ok", **ok, "current_device": 1}), "old-order": (1, {})})
    )
    assert broken[0].ok is False and "device 1" in broken[0].detail and "exited 1" in broken[0].detail
    assert broken[1].ok is None and "exited 1" in broken[1].detail


def doctor_json(uuid, code_name="NVIDIA H200", errors=()):
    gpus = [dict(index=0, name=code_name, mem_total_mib=143771.0)] if uuid else []
    nvml = [dict(nvml_index=0, cuda_index=0 if uuid else None, name="NVIDIA H200", mem_total_mib=143771.0, uuid=uuid)]
    return dict(
        report=dict(torch_gpus=gpus, nvml_gpus=nvml, mapping_note=None),
        findings=[dict(severity="error", topic="torch", what=e) for e in errors],
    )


def test_the_doctor_must_see_the_same_gpu_by_index_and_by_uuid(tmp_path):
    uuid = "GPU-8f1e2d3c-0000-1111-2222-333344445555"
    info = dict(uuid=uuid, name="NVIDIA H200")
    ctx = CannedCtx(
        tmp_path, {"doctor-index": (0, doctor_json(uuid)), "doctor-uuid": (0, doctor_json(uuid))}, gpu_info=info
    )
    (c,) = gpu_check.stage_doctor(ctx)
    assert c.ok is True and c.detail == f"exit 0 both times, the same GPU: NVIDIA H200 {uuid}"
    assert [e for _, e in ctx.calls] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": uuid}]
    blind = CannedCtx(
        tmp_path,
        {"doctor-index": (0, doctor_json(uuid)), "doctor-uuid": (2, doctor_json(None, errors=["torch sees none"]))},
        gpu_info=info,
    )
    (c,) = gpu_check.stage_doctor(blind)
    assert (
        c.ok is False and f"CUDA_VISIBLE_DEVICES={uuid}: doctor exited 2" in c.detail and "torch sees none" in c.detail
    )
    assert "uuid: torch sees 0 GPU(s), NVML maps CUDA 0 to None" in c.detail


def test_the_oom_search_doubles_from_the_fit_until_a_batch_runs_out(tmp_path, monkeypatch):
    from yoloprof.data import dataset

    made = []
    monkeypatch.setattr(dataset, "ensure", lambda cache, spec: made.append(spec.images) or tmp_path / "data.yaml")
    tried = []

    def point(ctx, spec, folder, cache):  # 1 GiB + 5000 MiB an image on a 143771 MiB device
        b = spec.knobs.batch
        tried.append((folder.name, b, spec.imgsz, spec.model, spec.mode))
        peak = 1024 + 5000 * b
        status = "ok" if peak < 143771 else "oom"
        return ComputePoint(b, True, status, peak_mem_mib=peak if status == "ok" else None), 143771.0

    monkeypatch.setattr(sys.modules[gpu_check.stage_oom_fit.__module__], "_compute_point", point)  # its own module
    probe, verdict = gpu_check.stage_oom_fit(gpu_check.Ctx(out=tmp_path, stage_dir=tmp_path))
    assert tried == [
        ("probe", 8, 1280, "yolo11x.yaml", "compute"),
        ("probe", 16, 1280, "yolo11x.yaml", "compute"),
        ("search", 25, 1280, "yolo11x.yaml", "compute"),
        ("search", 50, 1280, "yolo11x.yaml", "compute"),
    ]
    assert probe.ok is True and probe.detail.endswith("device 143771 MiB; fit 25")
    assert verdict.ok is True and verdict.figures["fit"] == 25 and verdict.figures["first_oom"] == 50
    assert made == [512]  # the search stops at the dataset's size: no batch it tries is capped


# -- the watch stage: yoloprof train on the GPU ---------------------------------------------------------------


def _watched_run(root: Path, timing: str, gpu_lines: list[dict]) -> Path:
    folder = root / "run" / "yoloprof"
    folder.mkdir(parents=True)
    epochs = [
        {"kind": "epoch", "rank": 0, "epoch": e, "steps": 8, "train_s": 1.5, "peak_mem_mib": 2100.0, "timing": timing}
        for e in range(3)
    ]
    (folder / "rank0.jsonl").write_text("\n".join(json.dumps(x) for x in [{"kind": "start"}, *epochs]) + "\n")
    tele = [{"kind": "header", "gpus": [0], "gpu_status": "ok"}, *gpu_lines]
    tele += [{"kind": "cpu", "cpu_pct_per_core": []}, {"kind": "cpu", "cpu_pct_per_core": [40.0, 60.0]}]
    (folder / "telemetry-node0.jsonl").write_text("\n".join(json.dumps(x) for x in tele) + "\n")
    return root / "run"


def test_the_watch_must_time_every_epoch_with_cuda_events_and_read_the_gpu(tmp_path):
    gpu = [{"kind": "gpu", "index": 0, "sm_clock_mhz": c} for c in (1980.0, 1755.0)]
    good = gpu_check.watch_check(_watched_run(tmp_path / "a", "cuda_event", gpu), 3, "cuda_event", [0])
    assert [(c.name, c.ok) for c in good] == [("watch records", True), ("run telemetry", True)]
    assert good[0].detail == "3 epochs, cuda_event" and "SM clock 1755.0-1980.0 MHz" in good[1].detail
    host = gpu_check.watch_check(_watched_run(tmp_path / "b", "host", []), 3, "cuda_event", [0])
    assert host[0].ok is False and "epoch 0 timed 'host', not 'cuda_event'" in host[0].detail
    assert host[1].ok is False  # no GPU reading at all
    short = gpu_check.watch_check(_watched_run(tmp_path / "c", "cuda_event", gpu), 4, "cuda_event", [0])
    assert short[0].ok is False and "3 epoch lines, 4 expected" in short[0].detail
    assert gpu_check.watch_check(tmp_path / "none", 3, "cuda_event", [0])[0].ok is False
