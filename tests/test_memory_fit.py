"""The largest batch that fits under DDP: the ws1 line, less the per-rank overhead the DDP trials measured."""

from __future__ import annotations

import pytest

from yoloprof.analysis.aggregate import mem_overhead
from yoloprof.analysis.memory_fit import ddp_fits, max_batch_fit
from yoloprof.records import (
    ComputeCeiling,
    ComputePoint,
    GpuSample,
    Knobs,
    RankEnd,
    RankRecords,
    TrialResult,
    TrialSpec,
)

BUCKETS = [9306532, 1055104]  # yolo11n's two DDP buckets, 9.88 MiB together
SPEC = TrialSpec("t", Knobs(32, 8, True, True, "off", "default"), 2, "cuda", [2, 5], "m", "/d", 640, "SGD", 1, 1, {})


def samples(gpu, used):
    return [GpuSample(t_s=float(i), gpu=gpu, mem_used_mib=u) for i, u in enumerate(used)]


def ranks(reserved0, reserved1):
    return [
        RankRecords(r, None, [], RankEnd(r, "ok", res, "cuda_reserved")) for r, res in enumerate((reserved0, reserved1))
    ]


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
    from yoloprof.reports.html import _fit_text

    pts = [ComputePoint(8, True, "ok", peak_mem_mib=10000.0), ComputePoint(16, True, "ok", peak_mem_mib=18000.0)]
    compute = ComputeCeiling("cuda", "H100", 81559.0, pts, max_batch_fit={"amp": 71})
    text = _fit_text(compute, [TrialResult("t", "ok", SPEC.knobs, 2, "cuda", mem_overhead_mib=1509.9)])
    assert "under DDP: amp 69 (one device alone: amp 71; a DDP rank holds 1510 MiB more" in text
    assert "not measured here" in _fit_text(compute, [])


def test_a_pools_later_trial_measures_its_overhead_from_before_the_pool_launched():
    # The pool's ranks already hold their context and NCCL buffers (2100 MiB on GPU 2) when trial 2's
    # telemetry starts: its smallest reading is no baseline. The header's reading before the launch is.
    gpu = samples(2, [2700, 2700, 21100]) + samples(5, [2100, 21300])
    before = {2: 600.0, 5: 0.0}
    got = mem_overhead(SPEC, ranks(19000.0, 19200.0), gpu, BUCKETS, before)
    assert got == pytest.approx(2100 + sum(BUCKETS) / 2**20)  # GPU 5: 21300 - 0 - 19200
    assert mem_overhead(SPEC, ranks(19000.0, 19200.0), gpu, BUCKETS) == pytest.approx(
        max(21100 - 2700 - 19000, 21300 - 2100 - 19200, 0) + sum(BUCKETS) / 2**20
    )  # without it: ~0


def test_each_rank_is_read_on_its_own_nodes_gpu_by_local_rank():
    from yoloprof.records import RankInfo

    def info(rank, local, node):
        return RankInfo(
            rank,
            local,
            4,
            1,
            "h",
            f"cuda:{local}",
            "H200",
            "nccl",
            16,
            1,
            8,
            8,
            True,
            True,
            512,
            10,
            None,
            8,
            0.0,
            node=node,
        )

    two_nodes = TrialSpec("t", SPEC.knobs, 4, "cuda", [2, 5], "m", "/d", 640, "SGD", 1, 1, {}, nnodes=2)
    # global ranks 0 and 1 ran on node 1, 2 and 3 on node 0: node 0's telemetry is for ranks 2 and 3 only
    recs = [
        RankRecords(r, info(r, r % 2, 1 if r < 2 else 0), [], RankEnd(r, "ok", 19000.0, "cuda_reserved"))
        for r in range(4)
    ]
    recs[0].end.peak_mem_mib = 1.0  # a node-1 rank read against node 0's GPU would claim ~20 GiB of overhead
    gpu = samples(2, [0, 20000]) + samples(5, [0, 20500])
    got = mem_overhead(two_nodes, recs, gpu, BUCKETS, {2: 0.0, 5: 0.0})
    assert got == pytest.approx(1500 + sum(BUCKETS) / 2**20)  # rank 3 (local 1 -> GPU 5): 20500 - 19000
