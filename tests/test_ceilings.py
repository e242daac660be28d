"""The ceilings: pure fits and comparisons, then the input and compute probes for real on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from yoloprof.analysis import aggregate, headroom
from yoloprof.scan import ceilings, launch
from yoloprof.search import plan
from yoloprof.analysis.memory_fit import fit_line, max_batch_fit
from yoloprof.records import (
    ComputeCeiling,
    ComputePoint,
    Knobs,
    LoaderCeiling,
    LoaderPoint,
    TrialResult,
    TrialSpec,
    read_json,
)


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
    c = headroom.Ceilings(
        loader=LoaderCeiling(
            "/d",
            640,
            "off",
            [LoaderPoint(2, 2, 2, 8, 20, 50.0, 100.0, 190.0), LoaderPoint(8, 8, 2, 8, 20, 200.0, 400.0, 790.0)],
        ),
        compute=ComputeCeiling("cuda", "H100", 81559.0, [cp(8, 3000, amp=True), cp(16, 5000, amp=True)]),
    )
    r = TrialResult("t", "ok", Knobs(16, 2, True, True, "off", "default"), 2, "cuda", img_per_s=90.0)
    v = headroom.against(r, c)
    assert v.compute_img_s == 200.0  # 100 img/s per device at batch 8 per rank, 2 ranks
    assert (
        v.input_img_s == 100.0 and v.pipeline_eff == pytest.approx(0.45) and v.input_headroom == pytest.approx(100 / 90)
    )
    r2 = TrialResult("t2", "error", Knobs(64, 4, False, True, "off", "default"), 2, "cuda")
    v2 = headroom.against(r2, c)
    assert v2.compute_img_s is None and v2.input_img_s is None and v2.pipeline_eff is None


def test_compute_specs_keep_the_trials_gradient_accumulation():
    hw = plan.Hardware("cuda", 4, [2, 3, 5, 7], 32, 8)
    specs = ceilings.compute_specs(
        hw, [32, 64], [True, False], model="m.yaml", data="/d", imgsz=640, optimizer="SGD", warmup=5, steps=20
    )
    assert [(s.knobs.batch, s.knobs.amp) for s in specs] == [(8, True), (8, False), (16, True), (16, False)]
    assert all(s.world_size == 1 and s.gpus == [2] and s.mode == "compute" for s in specs)
    # global batch 32 accumulates round(64/32) = 2 steps: batch 8 alone must too (nbs = 2 x 8)
    assert specs[0].overrides == {"nbs": 16} and specs[2].overrides == {"nbs": 16}


@pytest.mark.slow
def test_compute_probe_for_real_on_cpu(tiny_data, tmp_path, _private_cache):
    hw = plan.Hardware("cpu", 2, [], 2, 0)
    specs = ceilings.compute_specs(
        hw, [4, 16], [False], model="yolo11n.yaml", data=str(tiny_data), imgsz=128, optimizer="SGD", warmup=1, steps=3
    )
    c = ceilings.compute(tmp_path, specs, cache_dir=_private_cache, device_name="cpu", device_mem_total_mib=None)
    assert [p.batch for p in c.points] == [2, 8] and all(p.status == "ok" for p in c.points)
    assert c.max_batch_fit == {} and "CPU" in c.note
    saved = read_json(tmp_path / "compute.json", ComputeCeiling)
    assert saved == c
    for p, spec in zip(c.points, specs):
        ranks = aggregate.read_ranks(tmp_path / "compute" / spec.trial_id)
        assert len(ranks) == 1 and ranks[0].info.workers_effective == 0 and ranks[0].info.world_size == 1
        steps = [s for s in ranks[0].steps if not s.warmup and not s.epoch_boundary] or [
            s for s in ranks[0].steps if not s.warmup
        ]  # the steady state, unless every step starts an epoch
        # images/s at batch b is b images per step over the measured step time, nothing else
        assert all(s.images == p.batch for s in steps)
        assert p.img_per_s == pytest.approx(p.batch * len(steps) / (sum(s.step_ms for s in steps) / 1e3))
        assert all(s.comm_ms is None and not s.buckets for s in steps)  # one device: no AllReduce
        assert max(s.data_wait_ms for s in steps) < 0.1 * min(s.step_ms for s in steps)  # no data loading
    small, large = c.points
    assert large.peak_mem_mib > small.peak_mem_mib  # memory rises with batch


@pytest.mark.slow
def test_loader_probe_for_real_on_cpu(tiny_data, tmp_path, _private_cache):
    c = ceilings.loader(
        tmp_path,
        data=str(tiny_data),
        model="yolo11n.yaml",
        imgsz=64,
        batch_per_rank=2,
        workers=[0, 1],
        ranks=2,
        device="cpu",
        cache="off",
        cache_dir=_private_cache,
        pin_memory=[False],
        batches=6,
        warmup=2,
    )
    assert [p.workers for p in c.points] == [0, 1] and [p.workers_effective for p in c.points] == [0, 1]
    for p in c.points:
        assert p.status == "ok", p.error
        raw = [
            json.loads((tmp_path / "raw" / f"loader-w{p.workers}-pinoff" / f"rank{r}.json").read_text()) for r in (0, 1)
        ]
        assert all(x["images"] == 6 * 2 for x in raw)
        assert p.img_per_s_machine == pytest.approx(sum(x["img_per_s"] for x in raw))
        assert p.img_per_s_rank == pytest.approx(p.img_per_s_machine / 2)  # the median of two ranks is their mean
        assert p.cpu_pct > 0
        # 16 images, 2 ranks: each rank's shard of 8 in batches of 2
        assert p.batches_per_epoch == 4 and all(x["sampler"] == "DistributedSampler" for x in raw)
        assert (p.pin_memory, p.pin_memory_effective, p.devices) == (False, False, ["cpu", "cpu"])
    assert read_json(tmp_path / "loader.json", LoaderCeiling) == c


@pytest.mark.slow
def test_loader_probe_loads_as_a_trials_rank_does(tiny_data, tmp_path, _private_cache):
    """Defect 4: the probe's shard, and so Ultralytics' workers cap, are a real trial's at the same settings.

    16 images, 2 ranks, 8 per rank: a rank's shard is one batch, so Ultralytics runs it with no workers
    (min(cpu_count, 2, 0)). A probe without the shard saw 2 batches and 2 workers.
    """
    c = ceilings.loader(
        tmp_path / "probe",
        data=str(tiny_data),
        model="yolo11n.yaml",
        imgsz=64,
        batch_per_rank=8,
        workers=[2],
        ranks=2,
        device="cpu",
        cache="off",
        cache_dir=_private_cache,
        pin_memory=[False],
        batches=3,
        warmup=1,
    )
    spec = TrialSpec(
        "t",
        Knobs(16, 2, False, False, "off", "default"),
        2,
        "cpu",
        [],
        "yolo11n.yaml",
        str(tiny_data),
        64,
        "SGD",
        1,
        1,
        {"OMP_NUM_THREADS": "1"},
    )
    outcome = launch.run_trial(spec, tmp_path / "trial", cache_dir=_private_cache)
    infos = [r.info for r in aggregate.read_ranks(tmp_path / "trial")]
    assert outcome.returncode == 0 and len(infos) == 2 and None not in infos, (outcome, infos)
    p = c.points[0]
    assert p.status == "ok", p.error
    assert p.batches_per_epoch == math.ceil(16 / 2 / 8) == 1
    assert [i.batches_per_epoch for i in infos] == [p.batches_per_epoch] * 2
    assert [i.workers_effective for i in infos] == [p.workers_effective] * 2 == [0, 0]
    assert [i.pin_memory_effective for i in infos] == [p.pin_memory_effective] * 2 == [False, False]
    assert p.pin_memory is False


def test_probe_hands_the_trials_pin_memory_device_and_rank_to_ultralytics(tiny_data, _private_cache, monkeypatch):
    """Defect 4, in process and without a GPU: build_dataloader gets pin_memory as asked (the old probe left
    Ultralytics' default, on), the rank's own CUDA device, made current for the pin-memory thread (the old one
    used cuda:0 in every rank), and the rank that makes Ultralytics shard."""
    import torch
    import ultralytics.data
    import ultralytics.utils.torch_utils

    from yoloprof.probes import loader_bench

    calls = []
    monkeypatch.setattr(ultralytics.data, "build_dataloader", lambda dataset, **kw: calls.append(kw) or kw)
    monkeypatch.setattr(ultralytics.utils.torch_utils, "init_seeds", lambda *a, **k: None)  # no global torch flags
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    for pin in (False, True):
        loader_bench.build_loader(str(tiny_data), 64, 8, 2, "off", "cuda:3", "yolo11n.yaml", pin, rank=-1)
    assert calls[0] == ("set_device", torch.device("cuda", 3)) and calls[2] == calls[0]
    assert [c["pin_memory"] for c in calls[1::2]] == [False, True]
    assert all(c["device"] == torch.device("cuda", 3) and c["rank"] == -1 and c["shuffle"] for c in calls[1::2])
    assert loader_bench.distributed_env(1, 2) == {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert loader_bench.distributed_env(0, 1) == {}  # one rank: WORLD_SIZE 1, Ultralytics' rank -1, no sampler


def test_each_loader_rank_feeds_its_own_gpu(tmp_path, monkeypatch):
    """Defect 4, without a GPU: rank r gets the trial's CUDA index gpus[r] (not cuda:0), under the scan's own
    CUDA_VISIBLE_DEVICES, and every planned pin_memory value is probed and recorded."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,0,1,2,3")
    launched = []

    class FakeProc:
        def __init__(self, cmd, env, **kw):
            launched.append((cmd, env))
            arg = dict(zip(cmd[3::2], cmd[4::2]))
            Path(arg["--out"]).write_text(
                json.dumps(
                    dict(
                        status="ok",
                        device=arg["--device"],
                        img_per_s=10.0,
                        cpu_pct=50.0,
                        workers_effective=2,
                        pin_memory_effective=arg["--pin-memory"] == "on",
                        batches_per_epoch=3,
                    )
                )
            )
            self.pid = 0

        def poll(self):
            return 0

    monkeypatch.setattr(ceilings.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(ceilings.launch, "kill_group", lambda p, grace_s: None)
    c = ceilings.loader(
        tmp_path,
        data="/d.yaml",
        model="m.yaml",
        imgsz=64,
        batch_per_rank=4,
        workers=[2],
        ranks=4,
        device="cuda",
        cache="off",
        cache_dir=tmp_path / "cache",
        pin_memory=[True, False],
        gpus=[2, 3, 5, 7],
    )
    assert [(p.workers, p.pin_memory, p.pin_memory_effective) for p in c.points] == [(2, True, True), (2, False, False)]
    assert all(p.devices == ["cuda:2", "cuda:3", "cuda:5", "cuda:7"] for p in c.points)
    for r, (cmd, env) in enumerate(launched[:4]):
        assert cmd[cmd.index("--device") + 1] == f"cuda:{[2, 3, 5, 7][r]}" and cmd[cmd.index("--rank") + 1] == str(r)
        assert env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7,0,1,2,3"  # as a trial inherits it: same index, same GPU
    assert ceilings.physical([2, 3, 5, 7]) == ["6", "7", "1", "3"]  # the physical GPUs those ranks fed
    assert ceilings.rank_devices("cuda", None, 2) == ["cuda:0", "cuda:1"]
    assert ceilings.rank_devices("cpu", [], 2) == ["cpu"] * 2
    with pytest.raises(ValueError):
        ceilings.rank_devices("cuda", [0], 2)


def test_a_trial_meets_the_loader_point_with_its_own_pin_memory(cpu_scan_copy):
    """Defect 4: the input ceiling is read at the trial's workers AND pin_memory; old records match on workers."""
    pts = [
        LoaderPoint(2, 2, 2, 8, 20, 50.0, 100.0, 190.0, pin_memory=False),
        LoaderPoint(2, 2, 2, 8, 20, 80.0, 160.0, 190.0, pin_memory=True),
    ]
    c = headroom.Ceilings(loader=LoaderCeiling("/d", 640, "off", pts))
    for pin, want in ((True, 160.0), (False, 100.0)):
        r = TrialResult("t", "ok", Knobs(16, 2, True, pin, "off", "default"), 2, "cuda", img_per_s=90.0)
        assert headroom.against(r, c).input_img_s == want
    old = headroom.load(cpu_scan_copy / "ceilings").loader  # recorded before pin_memory was: it still loads
    assert old is not None and all(p.pin_memory is None and p.devices == [] for p in old.points)
    r = TrialResult("t", "ok", Knobs(8, 2, False, False, "off", "default"), 2, "cpu", img_per_s=90.0)
    assert headroom.against(r, headroom.Ceilings(loader=old)).input_img_s == old.points[1].img_per_s_machine
