"""The plan: knob parsing, the product, and what is dropped for the hardware, with reasons."""

from __future__ import annotations

import pytest

from yoloprof.search import plan
from yoloprof.errors import UsageError
from yoloprof.search.plan import Hardware
from yoloprof.records import Knobs

CPU = Hardware("cpu", 2, [], cpu_count=2, gpus_on_machine=0)
GPU4 = Hardware("cuda", 4, [0, 1, 2, 3], cpu_count=32, gpus_on_machine=4)


def test_product_of_knob_lists_on_gpus():
    given = {
        "batch": [32, 64],
        "workers": [4, 8],
        "amp": [True, False],
        "pin_memory": None,
        "cache": None,
        "nccl": ["default", "ring", "tree"],
    }
    p = plan.make_plan(GPU4, given)
    assert len(p.knobs) == 2 * 2 * 2 * 1 * 1 * 3
    assert p.dropped == []
    specs = plan.specs(p, GPU4, model="m.yaml", data="/d.yaml", imgsz=640, optimizer="SGD", warmup=5, steps=20)
    ids = [s.trial_id for s in specs]
    assert len(set(ids)) == len(ids)
    ring = next(s for s in specs if s.knobs.nccl == "ring")
    assert ring.env["NCCL_ALGO"] == "Ring" and ring.env["OMP_NUM_THREADS"] == "8"
    assert all(s.world_size == 4 and s.gpus == [0, 1, 2, 3] for s in specs)


def test_cpu_drops_gpu_only_knobs_with_reasons():
    given = {
        "batch": [8, 16],
        "workers": [0, 2],
        "amp": [True, False],
        "pin_memory": [True, False],
        "cache": None,
        "nccl": ["default", "ring"],
    }
    p = plan.make_plan(CPU, given)
    assert len(p.knobs) == 4  # batch x workers only
    assert {k.amp for k in p.knobs} == {False} and {k.pin_memory for k in p.knobs} == {False}
    assert {k.nccl for k in p.knobs} == {"default"}
    text = " | ".join(p.dropped)
    assert "AMP needs a GPU" in text and "pinned memory" in text and "NCCL runs on GPUs only" in text


def test_workers_that_ultralytics_caps_to_the_same_value_are_deduplicated():
    hw = Hardware("cuda", 2, [0, 1], cpu_count=16, gpus_on_machine=8)  # cap: 16 // 8 = 2 per rank
    p = plan.make_plan(hw, {"workers": [1, 2, 4, 8], "batch": [32]})
    assert [k.workers for k in p.knobs] == [1, 2]
    assert any("workers 4" in d and "caps workers per rank at 2" in d for d in p.dropped)


def test_defaults_give_a_small_useful_plan():
    assert len(plan.make_plan(CPU, {}).knobs) == 4
    p = plan.make_plan(GPU4, {})
    assert {k.batch for k in p.knobs} == {64, 128} and all(k.amp and k.pin_memory for k in p.knobs)


def test_one_gpu_drops_nccl_presets():
    hw = Hardware("cuda", 1, [0], cpu_count=16, gpus_on_machine=1)
    p = plan.make_plan(hw, {"nccl": ["default", "ring"]})
    assert {k.nccl for k in p.knobs} == {"default"} and "one GPU" in p.dropped[0]


@pytest.mark.parametrize(
    "flag,text,minimum",
    [
        ("--batch", "0", 1),
        ("--batch", "8,", 1),
        ("--batch", "8,8", 1),
        ("--workers", "-1", 0),
        ("--batch", "x", 1),
    ],
)
def test_bad_int_lists(flag, text, minimum):
    with pytest.raises(UsageError, match=flag):
        plan.parse_ints(flag, text, minimum)


def test_choices_and_nccl_parsing():
    assert plan.parse_choices("--amp", "on,off", plan._BOOL) == [True, False]
    assert plan.parse_choices("--cache", "off,ram,disk", plan._CACHE) == ["off", "ram", "disk"]
    with pytest.raises(UsageError, match="maybe"):
        plan.parse_choices("--amp", "maybe", plan._BOOL)
    with pytest.raises(UsageError, match="same setting"):
        plan.parse_choices("--amp", "on,true", plan._BOOL)
    assert plan.parse_nccl("default,NCCL_ALGO=Ring+NCCL_MIN_CTAS=8") == ["default", "NCCL_ALGO=Ring+NCCL_MIN_CTAS=8"]
    assert plan.nccl_env("NCCL_ALGO=Ring+NCCL_MIN_CTAS=8") == {"NCCL_ALGO": "Ring", "NCCL_MIN_CTAS": "8"}
    with pytest.raises(UsageError, match="not a preset"):
        plan.parse_nccl("fastest")
    with pytest.raises(UsageError, match="not a preset"):
        plan.parse_nccl("LD_PRELOAD=x")


def test_batch_must_split_evenly_over_ranks():
    with pytest.raises(UsageError, match="not a multiple of the 4 ranks"):
        plan.make_plan(GPU4, {"batch": [30]})


def test_cache_ram_under_ddp_counts_one_copy_per_rank():
    # 10000 images at 640: up to 10000 * 640 * 640 * 3 B = 11.4 GiB per rank
    skip, why = plan.cache_ram_risk(10000, 640, 4, available_mib=30 * 1024)
    assert skip and "4 ranks x up to 11.4 GiB = 45.8 GiB" in why and "cache=disk" in why
    skip, why = plan.cache_ram_risk(10000, 640, 1, available_mib=30 * 1024)
    assert not skip and "one copy of the dataset per rank" in why


def test_ultralytics_defaults_and_your_settings_join_the_plan_once():
    from yoloprof.search import baselines

    hw = Hardware("cuda", 4, [0, 1, 2, 3], cpu_count=16, gpus_on_machine=4)  # workers cap 4
    p = plan.make_plan(hw, {"batch": [16, 32], "workers": [2, 4]})
    mine = baselines.parse_baseline("batch=32,workers=8,amp=off", hw)
    roles = baselines.add(p, hw, mine, with_defaults=True)
    # defaults = batch 16, workers 8 (capped to 4: the planned b16 w4 trial), AMP and pinned memory on
    assert roles[baselines.DEFAULTS] == Knobs(16, 4, True, True, "off", "default")
    assert (
        roles[baselines.YOURS] == Knobs(32, 8, False, True, "off", "default") and p.knobs[0] == roles[baselines.YOURS]
    )
    assert len(p.knobs) == 5
    with pytest.raises(UsageError, match="multiple of the 4 ranks"):
        baselines.parse_baseline("batch=10", hw)
    with pytest.raises(UsageError, match="not a setting yoloprof varies"):
        baselines.parse_baseline("lr0=0.1", hw)
    cpu = baselines.ultralytics_defaults(Hardware("cpu", 2, [], 2, 0))
    assert (cpu.batch, cpu.workers, cpu.amp) == (16, 0, False)  # yolo train on CPU forces workers=0


def test_scaling_runs_each_setting_at_every_world_size_with_the_same_batch_per_rank():
    hw = Hardware("cuda", 4, [3, 5, 6, 7], cpu_count=32, gpus_on_machine=8)
    p = plan.make_plan(hw, {"batch": [64], "workers": [4]})
    specs = plan.specs(
        p,
        hw,
        model="m.yaml",
        data="/d",
        imgsz=640,
        optimizer="SGD",
        warmup=1,
        steps=2,
        world_sizes=plan.parse_world_sizes("4,1,2", hw),
    )
    assert [(s.world_size, s.knobs.batch, s.gpus) for s in specs] == [
        (1, 16, [3]),
        (2, 32, [3, 5]),
        (4, 64, [3, 5, 6, 7]),
    ]
    assert [s.trial_id for s in specs] == ["t01-b16-w4-amp-pin-r1", "t02-b32-w4-amp-pin-r2", "t03-b64-w4-amp-pin-r4"]
    assert [s.env["OMP_NUM_THREADS"] for s in specs] == ["32", "16", "8"]
    with pytest.raises(UsageError, match="--ranks 8: the scan has 4 ranks"):
        plan.parse_world_sizes("2,8", hw)


def test_scaling_speedup_and_efficiency():
    from yoloprof.analysis import scaling
    from yoloprof.records import TrialResult

    k = lambda b: Knobs(b, 4, True, True, "off", "default")  # noqa: E731
    rs = [
        TrialResult("a", "ok", k(16), 1, "cuda", img_per_s=100.0),
        TrialResult("b", "ok", k(32), 2, "cuda", img_per_s=190.0),
        TrialResult("c", "ok", k(64), 4, "cuda", img_per_s=340.0, comm_frac=0.2),
        TrialResult("d", "ok", k(128), 4, "cuda", img_per_s=400.0),
    ]
    (g,) = scaling.groups(rs)  # d has 32 per rank and no partner: no group
    assert g.settings.startswith("batch 16/rank, workers 4, amp")
    assert [(p.world_size, p.speedup, p.efficiency) for p in g.points] == [
        (1, 1.0, 1.0),
        (2, 1.9, 0.95),
        (4, 3.4, 0.85),
    ]
