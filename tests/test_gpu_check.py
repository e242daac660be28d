"""The GPU check's verdicts, on hand-made records (the driver itself needs a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


from yoloprof.records import Breakdown, ComputePoint, Knobs, TelemetrySummary, TrialResult

spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent.parent / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


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
    return TrialResult(tid, status, Knobs(32, 8, True, True, "off", "default"), 1, "cuda", telemetry=t,
                       peak_mem_mib=18000.0, device_mem_total_mib=81559.0)  # fmt: skip


def test_telemetry_must_be_present_and_plausible():
    assert gpu_check.telemetry_plausible([result("a"), result("b", status="oom", util=None)]).ok is True
    c = gpu_check.telemetry_plausible([result("a", power=412000.0), result("b", used=9000.0),
                                       result("c", gpu_status="not measured: NVML is not available")])  # fmt: skip
    assert c.ok is False
    assert "a: power 412000.0 W" in c.detail and "b: NVML used 9000 < allocator 18000 MiB" in c.detail
    assert "c: not measured" in c.detail


def test_the_fit_must_run_and_stay_below_the_first_oom():
    pts = [ComputePoint(96, True, "ok"), ComputePoint(192, True, "oom")]
    c = gpu_check.fit_against_oom(96, pts)
    assert c.ok is True and c.figures == dict(fit=96, first_oom=192, ran=[96]) and "fit / OOM = 0.50" in c.detail
    assert gpu_check.fit_against_oom(200, pts + [ComputePoint(200, True, "ok")]).ok is False  # predicted past an OOM
    assert gpu_check.fit_against_oom(96, [ComputePoint(96, True, "ok")]).ok is None  # nothing ran out: no verdict
