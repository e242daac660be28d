"""The largest batch that fits under DDP: the ws1 line, less the per-rank overhead the DDP trials measured."""

from __future__ import annotations

import pytest

from yoloprof.analysis.aggregate import mem_overhead
from yoloprof.analysis.memory_fit import ddp_fits, max_batch_fit
from yoloprof.records import (
    ComputeCeiling, ComputePoint, GpuSample, Knobs, RankEnd, RankRecords, TrialResult, TrialSpec,
)  # fmt: skip

BUCKETS = [9306532, 1055104]  # yolo11n's two DDP buckets, 9.88 MiB together
SPEC = TrialSpec("t", Knobs(32, 8, True, True, "off", "default"), 2, "cuda", [2, 5], "m", "/d", 640, "SGD", 1, 1, {})


def samples(gpu, used):
    return [GpuSample(t_s=float(i), gpu=gpu, mem_used_mib=u) for i, u in enumerate(used)]


def ranks(reserved0, reserved1):
    return [RankRecords(r, None, [], RankEnd(r, "ok", res, "cuda_reserved")) for r, res in enumerate((reserved0, reserved1))]


def test_overhead_is_nvml_used_less_what_was_there_less_the_allocator_plus_buckets():
    # GPU 2 held 600 MiB of someone else's before the trial; rank 0's allocator peaked at 19000 MiB
    gpu = samples(2, [600, 600, 20600, 21100]) + samples(5, [0, 20000]) + samples(7, [0, 70000])
    got = mem_overhead(SPEC, ranks(19000.0, 19200.0), gpu, BUCKETS)
    assert got == pytest.approx(1500 + sum(BUCKETS) / 2**20)  # the worst rank: 21100 - 600 - 19000
    assert mem_overhead(SPEC, ranks(19000.0, 19200.0), [], BUCKETS) is None  # no NVML: n/a, not 0
    cpu = TrialSpec("t", SPEC.knobs, 2, "cpu", [], "m", "/d", 64, "SGD", 1, 1, {})
    assert mem_overhead(cpu, ranks(900.0, 900.0), gpu, BUCKETS) is None


def test_the_ddp_fit_is_smaller_than_the_world_size_1_fit_by_the_overhead():
    pts = [ComputePoint(8, True, "ok", peak_mem_mib=10000.0), ComputePoint(16, True, "ok", peak_mem_mib=18000.0)]
    compute = ComputeCeiling("cuda", "H100", 81559.0, pts)
    # 2000 MiB + 1000 MiB per image; 90% of 81559 MiB is 73403 MiB
    assert max_batch_fit(pts, 81559.0, 0.10) == 71
    ok = TrialResult("t", "ok", SPEC.knobs, 2, "cuda", mem_overhead_mib=1509.9)
    fits, overhead = ddp_fits(compute, [ok, TrialResult("u", "oom", SPEC.knobs, 2, "cuda", mem_overhead_mib=9e9)])
    assert overhead == pytest.approx(1509.9) and fits == {"amp": 69}
    assert ddp_fits(compute, [TrialResult("t", "ok", SPEC.knobs, 2, "cuda")]) == ({}, None)  # nothing measured


def test_the_report_states_the_ddp_fit_and_the_overhead_behind_it():
    from reports.html import _fit_text

    pts = [ComputePoint(8, True, "ok", peak_mem_mib=10000.0), ComputePoint(16, True, "ok", peak_mem_mib=18000.0)]
    compute = ComputeCeiling("cuda", "H100", 81559.0, pts, max_batch_fit={"amp": 71})
    text = _fit_text(compute, [TrialResult("t", "ok", SPEC.knobs, 2, "cuda", mem_overhead_mib=1509.9)])
    assert "under DDP: amp 69 (one device alone: amp 71; a DDP rank holds 1510 MiB more" in text
    assert "not measured here" in _fit_text(compute, [])
