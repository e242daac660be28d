"""The ceilings: pure fits and comparisons, then the input and compute probes for real on CPU."""

from __future__ import annotations

import json

import pytest

from yoloprof import aggregate, against, ceilings, plan
from yoloprof.memory_fit import fit_line, max_batch_fit
from yoloprof.records import (
    ComputeCeiling, ComputePoint, Knobs, LoaderCeiling, LoaderPoint, TrialResult, read_json,
)  # fmt: skip


def cp(batch, mem, status="ok", amp=True):
    return ComputePoint(batch=batch, amp=amp, status=status, img_per_s=100.0, peak_mem_mib=mem)


def test_memory_line_and_largest_batch_with_margin():
    assert fit_line([1, 2, 3], [12, 14, 16]) == pytest.approx((10.0, 2.0))
    # 1000 MiB + 500 MiB per image; 10000 MiB device, 10% margin -> (9000 - 1000) / 500 = 16
    pts = [cp(4, 3000), cp(8, 5000), cp(2, 2000)]
    assert max_batch_fit(pts, 10000, 0.10) == 16
    assert max_batch_fit(pts + [cp(12, None, status="oom")], 10000, 0.10) == 11  # an OOM caps the line
    assert max_batch_fit([cp(4, 3000)], 10000, 0.10) is None  # one point is not a line


def test_trials_are_set_against_the_ceilings_at_their_own_settings():
    c = against.Ceilings(
        loader=LoaderCeiling("/d", 640, "off", [LoaderPoint(2, 2, 2, 8, 20, 50.0, 100.0, 190.0),
                                               LoaderPoint(8, 8, 2, 8, 20, 200.0, 400.0, 790.0)]),
        compute=ComputeCeiling("cuda", "H100", 81559.0, [cp(8, 3000, amp=True), cp(16, 5000, amp=True)]),
    )  # fmt: skip
    r = TrialResult("t", "ok", Knobs(16, 2, True, True, "off", "default"), 2, "cuda", img_per_s=90.0)
    v = against.against(r, c)
    assert v.compute_img_s == 200.0  # 100 img/s per device at batch 8 per rank, 2 ranks
    assert v.input_img_s == 100.0 and v.pipeline_eff == pytest.approx(0.45) and v.input_headroom == pytest.approx(100 / 90)
    r2 = TrialResult("t2", "error", Knobs(64, 4, False, True, "off", "default"), 2, "cuda")
    v2 = against.against(r2, c)
    assert v2.compute_img_s is None and v2.input_img_s is None and v2.pipeline_eff is None


def test_compute_specs_keep_the_trials_gradient_accumulation():
    hw = plan.Hardware("cuda", 4, [2, 3, 5, 7], 32, 8)
    specs = ceilings.compute_specs(hw, [32, 64], [True, False], model="m.yaml", data="/d", imgsz=640,
                                   optimizer="SGD", warmup=5, steps=20)  # fmt: skip
    assert [(s.knobs.batch, s.knobs.amp) for s in specs] == [(8, True), (8, False), (16, True), (16, False)]
    assert all(s.world_size == 1 and s.gpus == [2] and s.mode == "compute" for s in specs)
    # global batch 32 accumulates round(64/32) = 2 steps: batch 8 alone must too (nbs = 2 x 8)
    assert specs[0].overrides == {"nbs": 16} and specs[2].overrides == {"nbs": 16}


@pytest.mark.slow
def test_compute_probe_for_real_on_cpu(tiny_data, tmp_path, _private_cache):
    hw = plan.Hardware("cpu", 2, [], 2, 0)
    specs = ceilings.compute_specs(hw, [4, 16], [False], model="yolo11n.yaml", data=str(tiny_data), imgsz=128,
                                   optimizer="SGD", warmup=1, steps=3)  # fmt: skip
    c = ceilings.compute(tmp_path, specs, cache_dir=_private_cache, device_name="cpu", device_mem_total_mib=None)
    assert [p.batch for p in c.points] == [2, 8] and all(p.status == "ok" for p in c.points)
    assert c.max_batch_fit == {} and "CPU" in c.note
    saved = read_json(tmp_path / "compute.json", ComputeCeiling)
    assert saved == c
    for p, spec in zip(c.points, specs):
        ranks = aggregate.read_ranks(tmp_path / "compute" / spec.trial_id)
        assert len(ranks) == 1 and ranks[0].info.workers_effective == 0 and ranks[0].info.world_size == 1
        steps = [s for s in ranks[0].steps if not s.warmup]
        # images/s at batch b is b images per step over the measured step time, nothing else
        assert all(s.images == p.batch for s in steps)
        assert p.img_per_s == pytest.approx(p.batch * len(steps) / (sum(s.step_ms for s in steps) / 1e3))
        assert all(s.comm_ms is None and not s.buckets for s in steps)  # one device: no AllReduce
        assert max(s.data_wait_ms for s in steps) < 0.1 * min(s.step_ms for s in steps)  # no data loading
    small, large = c.points
    assert large.peak_mem_mib > small.peak_mem_mib  # memory rises with batch


@pytest.mark.slow
def test_loader_probe_for_real_on_cpu(tiny_data, tmp_path, _private_cache):
    c = ceilings.loader(tmp_path, data=str(tiny_data), model="yolo11n.yaml", imgsz=64, batch_per_rank=2,
                        workers=[0, 1], ranks=2, device="cpu", cache="off", cache_dir=_private_cache,
                        batches=6, warmup=2)  # fmt: skip
    assert [p.workers for p in c.points] == [0, 1] and [p.workers_effective for p in c.points] == [0, 1]
    for p in c.points:
        assert p.status == "ok", p.error
        raw = [json.loads((tmp_path / "raw" / f"loader-w{p.workers}" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(x["images"] == 6 * 2 for x in raw)
        assert p.img_per_s_machine == pytest.approx(sum(x["img_per_s"] for x in raw))
        assert p.img_per_s_rank == pytest.approx(p.img_per_s_machine / 2)  # the median of two ranks is their mean
        assert p.cpu_pct > 0
    assert read_json(tmp_path / "loader.json", LoaderCeiling) == c
