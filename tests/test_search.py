"""The auto search: its space, the ceilings prune, and the coordinate descent driven by a simulated machine."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from yoloprof.analysis.headroom import Ceilings, load
from yoloprof.records import (
    AllReduceCeiling,
    AllReducePoint,
    ComputeCeiling,
    ComputePoint,
    Knobs,
    LoaderCeiling,
    LoaderPoint,
    TrialResult,
)
from yoloprof.search.baselines import ultralytics_defaults
from yoloprof.search.plan import Hardware, trial_id
from yoloprof.search.prune import prune
from yoloprof.search.space import KNOBS, auto_space
from yoloprof.search.strategy import ORDER, AutoSearch

from conftest import CPU_SCAN

GPU2 = Hardware("cuda", 2, [0, 1], cpu_count=32, gpus_on_machine=2)  # workers cap 16
GPU1 = Hardware("cuda", 1, [0], cpu_count=16, gpus_on_machine=1)
CPU2 = Hardware("cpu", 2, [], cpu_count=2, gpus_on_machine=0)  # the recorded CPU scan's machine


def dropped(decisions, knob):
    return {d.value for d in decisions if d.knob == knob and d.kind == "pruned"}


# -- space -----------------------------------------------------------------------------------------


def test_space_gpu_covers_every_knob():
    s = auto_space(GPU2, dataset_fits_ram=True)
    assert s.values == {
        "batch": [16, 32, 64, 128, 256],
        "workers": [0, 1, 2, 4, 8, 16],
        "amp": [True, False, "bf16"],
        "pin_memory": [True, False],
        "cache": ["off", "disk", "ram"],
        "nccl": ["default", "ring", "tree", "simple", "no-shm", "buff8m"],
        "deterministic": [True, False],
        "compile": ["off", "default"],
        "channels_last": [True, False],
    }
    assert dropped(s.dropped, "nccl") == {"no-p2p"}  # debug-only, said so, never tried
    assert dropped(s.dropped, "compile") == {"reduce-overhead, max-autotune-no-cudagraphs"}  # minutes of autotuning


def test_space_cpu_and_one_gpu_drop_what_cannot_matter():
    s = auto_space(CPU2)
    assert s.values["batch"] == [8, 16, 32] and s.values["amp"] == [False] and s.values["pin_memory"] == [False]
    assert s.values["nccl"] == ["default"] and s.values["workers"] == [0, 1, 2]  # cap: 2 cores
    assert s.values["cache"] == ["off", "disk"]  # ram not shown to fit
    reasons = " ".join(d.reason for d in s.dropped)
    assert "AMP needs a GPU" in reasons and "Ultralytics caps workers per rank at 2" in reasons and "gloo" in reasons
    assert dropped(s.dropped, "workers") == {"4", "8", "16"}
    one = auto_space(GPU1, dataset_fits_ram=True)
    assert one.values["nccl"] == ["default"] and "one GPU runs no AllReduce" in one.dropped[0].reason
    assert one.values["batch"] == [8, 16, 32, 64, 128]


def test_space_given_lists_restrict():
    s = auto_space(GPU2, {"batch": [64, 32], "nccl": ["no-p2p", "default"], "amp": None})
    assert s.values["batch"] == [32, 64] and s.values["nccl"] == ["no-p2p", "default"]
    assert s.values["amp"] == [True, False, "bf16"] and not dropped(s.dropped, "nccl")
    no_ram = auto_space(GPU2, dataset_fits_ram=False, ram_reason="cache=ram skipped: 9 GiB")
    assert no_ram.values["cache"] == ["off", "disk"] and no_ram.dropped[-1].reason == "cache=ram skipped: 9 GiB"


# -- prune -----------------------------------------------------------------------------------------


def test_prune_recorded_cpu_ceilings():
    c = load(CPU_SCAN / "ceilings")
    assert c.loader and c.compute and c.allreduce
    p = prune(auto_space(CPU2), c, CPU2)
    assert p.space.values == auto_space(CPU2).values  # 2 cores: workers 0-2 only, no memory limit on CPU
    assert not [d for d in p.decisions if d.kind == "pruned"]
    assert any(d.knob == "batch" and "no OOM" in d.reason for d in p.decisions)
    # The same figures on a 16-core machine: workers 2 already loads 360 img/s, far over the 67 img/s the
    # fastest measured training step (8 per rank fp32 x 2 ranks) can use, so more workers cannot help.
    wide = Hardware("cpu", 2, [], cpu_count=16, gpus_on_machine=0)
    p = prune(auto_space(wide), c, wide)
    assert p.space.values["workers"] == [0, 1, 2]
    why = next(d.reason for d in p.decisions if d.knob == "workers" and d.value == "4")
    assert "360 img/s" in why and "67 img/s" in why and "8 per rank" in why


def loader(rates: dict[int, float]) -> LoaderCeiling:
    pts = [LoaderPoint(w, w, 2, 16, 20, r / 2, r, 100.0) for w, r in rates.items()]
    return LoaderCeiling("data.yaml", 640, "off", pts)


def compute(points, fit=None) -> ComputeCeiling:
    return ComputeCeiling("cuda", "H100", 80000.0, [ComputePoint(*p) for p in points], max_batch_fit=fit or {})


def test_prune_workers_plateau():
    p = prune(auto_space(GPU2), Ceilings(loader=loader({0: 100, 1: 200, 2: 380, 4: 390, 8: 395})), GPU2)
    assert p.space.values["workers"] == [0, 1, 2]
    why = next(d.reason for d in p.decisions if d.value == "8")
    assert "stops growing at workers 2 (380 img/s; workers 4 loads 390 img/s" in why
    assert any("no compute ceiling" in d.reason for d in p.decisions)


def test_prune_workers_above_need_and_never_from_workers_0():
    ceil = compute([(16, True, "ok", 100.0), (32, True, "ok", 110.0), (8, False, "ok", 60.0)])
    p = prune(auto_space(GPU2), Ceilings(loader=loader({0: 5000, 1: 300, 2: 700}), compute=ceil), GPU2)
    # need: 110 img/s per device x 2 = 220; workers 1 loads 300 >= 1.2 x 220. Workers 0 loads 5000 alone, but
    # in training it loads between steps, so it rules nothing out.
    assert p.space.values["workers"] == [0, 1]
    assert "workers 1 already loads 300 img/s" in next(d.reason for d in p.decisions if d.value == "16")
    p = prune(auto_space(GPU2), Ceilings(loader=loader({0: 5000, 1: 200, 2: 700}), compute=ceil), GPU2)
    assert p.space.values["workers"] == [0, 1, 2]  # 200 < 264: workers 1 is not enough, 2 is


def test_prune_batches_that_will_not_fit():
    ceil = compute(
        [
            (32, True, "ok", 900.0, 10.0, 30000.0),
            (64, True, "ok", 950.0, 20.0, 60000.0),
            (32, False, "ok", 500.0),
            (64, False, "oom"),
        ],
        fit={"amp": 48},
    )
    p = prune(auto_space(GPU2, {"amp": [True, False]}), Ceilings(compute=ceil), GPU2)
    assert p.space.values["batch"] == [16, 32, 64]  # 128 = 64 per rank: over 48 with amp and OOM in fp32
    assert p.max_fit == {True: 96, False: 126}
    why = next(d.reason for d in p.decisions if d.value == "128")
    assert "largest batch that fits with amp is 48 per rank" in why and "out of memory at 64 per rank (fp32)" in why
    unmeasured = prune(auto_space(GPU2), Ceilings(compute=ceil), GPU2)  # bf16 has no compute point: fit unknown
    assert 128 in unmeasured.space.values["batch"] and "bf16" not in unmeasured.max_fit
    only_amp = prune(auto_space(GPU2, {"amp": [True]}), Ceilings(compute=ceil), GPU2)
    assert only_amp.space.values["batch"] == [16, 32, 64]
    only_fp32 = prune(auto_space(GPU2, {"amp": [False]}), Ceilings(compute=ceil), GPU2)
    assert only_fp32.space.values["batch"] == [16, 32, 64]
    ceil.max_batch_fit = {}
    ceil.points[3] = ComputePoint(128, False, "oom")
    assert 128 in prune(auto_space(GPU2), Ceilings(compute=ceil), GPU2).space.values["batch"]  # fits with amp


def allreduce(preset: str, times_us: tuple[float, float], status: str = "ok") -> AllReduceCeiling:
    pts = [
        AllReducePoint(2**20, 90.0, 0, 0, 50),
        AllReducePoint(1_055_104, times_us[0], 0, 0, 50, True),
        AllReducePoint(9_306_532, times_us[1], 0, 0, 20, True),
    ]
    return AllReduceCeiling("nccl", 2, preset, "cuda", "float32", "cuda_event", pts, status)


def test_prune_nccl_slow_tie_fast_and_promote():
    c = Ceilings(
        allreduce=[
            allreduce("default", (100, 500)),
            allreduce("ring", (110, 540)),
            allreduce("tree", (200, 700)),
            allreduce("simple", (60, 300)),
            allreduce("buff8m", (1, 1), status="error"),
        ]
    )
    p = prune(auto_space(GPU2), c, GPU2)
    assert p.space.values["nccl"] == ["default", "ring", "simple", "no-shm", "buff8m"]
    assert p.promote == ["tree"]
    tree = next(d.reason for d in p.decisions if d.value == "tree")
    assert "900 us against default's 600 us (+50%)" in tree and "promote if communication bounds" in tree
    kept = {d.value: d.reason for d in p.decisions if d.kind == "kept" and d.knob == "nccl"}
    assert "ties default" in kept["ring"] and "beats default" in kept["simple"]
    assert "no AllReduce ceiling" in kept["no-shm"] and "no AllReduce ceiling" in kept["buff8m"]  # failed probe


def test_prune_nothing_without_ceilings():
    space = auto_space(GPU2)
    p = prune(space, Ceilings(), GPU2)
    assert p.space.values == space.values and not p.promote and not p.max_fit
    assert {d.knob for d in p.decisions if d.kind == "kept"} == {"batch", "workers", "nccl"}
    assert all("no " in d.reason for d in p.decisions)
    assert space.values["nccl"][1] == "ring"  # the input space is not touched


# -- strategy, driven by a simulated machine ---------------------------------------------------------

# A separable response surface: img/s is a product of one factor per knob, each with one peak.
FACTORS = {
    "batch": {16: 0.6, 32: 0.8, 64: 1.0, 128: 1.1, 256: 1.05},
    "workers": {0: 0.3, 1: 0.5, 2: 0.7, 4: 1.0, 8: 0.9, 16: 0.8},
    "amp": {True: 1.3, False: 1.0, "bf16": 1.25},
    "pin_memory": {True: 1.0, False: 1.07},
    "cache": {"off": 1.0, "disk": 0.98, "ram": 1.12},
    "nccl": {"default": 1.0, "ring": 1.01, "tree": 0.9, "simple": 1.08, "no-shm": 0.97, "buff8m": 1.0},
    "deterministic": {True: 1.0, False: 1.06},
    "compile": {"off": 1.0, "default": 1.15},
    "channels_last": {True: 1.0, False: 0.93},
}


def surface(k: Knobs) -> float:
    rate = 1000.0
    for knob in KNOBS:
        rate *= FACTORS[knob][getattr(k, knob)]
    return rate


def beats(results, cand, inc):
    by_id = {r.trial_id: r for r in results}
    return by_id[cand].img_per_s > 1.05 * by_id[inc].img_per_s


def top2(results):
    ok = sorted((r for r in results if r.status == "ok"), key=lambda r: -r.img_per_s)
    out = []
    for r in ok:
        if r.knobs not in [o.knobs for o in out]:
            out.append(r)
    return [r.trial_id for r in out[:2]]


def drive(search, rate=surface, wall_s=60.0, oom=lambda k: False, noise=0.0, seed=0):
    rng = random.Random(seed)
    results, proposals, spent = [], [], 0.0
    while (p := search.propose(results, spent)) is not None:
        proposals.append(p)
        tid = trial_id(len(results) + 1, p.knobs)
        if oom(p.knobs):
            results.append(TrialResult(tid, "oom", p.knobs, 2, "cuda", wall_s=wall_s / 3, error="CUDA out of memory"))
        else:
            img = rate(p.knobs) * (1 + rng.uniform(-noise, noise))
            results.append(TrialResult(tid, "ok", p.knobs, 2, "cuda", img_per_s=img, wall_s=wall_s))
        spent += results[-1].wall_s
        assert len(proposals) < 300
    return results, proposals, spent


def search(space=None, start=None, budget_s=1e6, bottleneck=lambda r: "unknown", **kw):
    space = space or auto_space(GPU2, dataset_fits_ram=True)
    return AutoSearch(
        space, start or ultralytics_defaults(GPU2), budget_s, beats=beats, contenders=top2, bottleneck=bottleneck, **kw
    )


def test_descent_finds_the_optimum_in_far_fewer_trials_than_the_grid():
    space = auto_space(GPU2, dataset_fits_ram=True)
    s = search(space)
    results, proposals, _ = drive(s)
    best = max(itertools.product(*space.values.values()), key=lambda v: surface(Knobs(*v)))
    assert s.incumbent.knobs == Knobs(*best)
    assert Knobs(*best) == Knobs(128, 4, True, False, "ram", "simple", False, "default", True)
    assert len(results) < space.size() / 500  # 25920 configurations in the grid
    descent = [p.knobs for p in proposals if p.stage != "confirm"]
    assert len(descent) == len(set(descent))  # never the same configuration twice
    assert [p.stage for p in proposals[-2:]] == ["confirm", "confirm"]
    assert s.decisions[-1].kind == "done"


def test_descent_with_noise_still_lands_near_the_optimum():
    space = auto_space(GPU2, dataset_fits_ram=True)
    best = max(surface(Knobs(*v)) for v in itertools.product(*space.values.values()))
    for seed in range(5):
        s = search(space)
        drive(s, noise=0.02, seed=seed)
        assert surface(s.incumbent.knobs) >= 0.9 * best


@pytest.mark.parametrize(
    "bn, first",
    [
        ("input", "workers"),
        ("compute", "amp"),
        ("communication", "nccl"),
        ("straggler", "workers"),
        ("memory", "batch"),
        (None, "batch"),
    ],
)
def test_first_knob_follows_the_bottleneck(bn, first):
    start = Knobs(64, 8, True, True, "off", "default")
    s = search(start=start, bottleneck=lambda r: bn)
    _, proposals, _ = drive(s)
    changed = [k for k in KNOBS if getattr(proposals[1].knobs, k) != getattr(start, k)]
    assert proposals[0].knobs == start and proposals[0].stage == "start" and changed == [first]
    if bn == "memory":
        assert proposals[1].knobs.batch == 32  # smaller first
    if bn == "input":
        assert proposals[1].knobs.workers == 16 and "input-bound" in proposals[1].why


def test_pruned_start_still_runs_and_promoted_presets_when_communication_bound():
    c = Ceilings(allreduce=[allreduce("default", (100, 500)), allreduce("tree", (200, 700))])
    space = auto_space(GPU2, {"nccl": ["default", "tree", "ring"]})
    p = prune(space, c, GPU2)
    start = Knobs(32, 8, True, True, "off", "tree")  # the user's baseline, on a preset the ceilings pruned
    s = AutoSearch.from_pruned(p, start, 1e6, beats=beats, contenders=top2, bottleneck=lambda r: "compute")
    _, proposals, _ = drive(s)
    assert proposals[0].knobs == start
    comm = AutoSearch.from_pruned(
        p, ultralytics_defaults(GPU2), 1e6, beats=beats, contenders=top2, bottleneck=lambda r: "communication"
    )
    _, proposals, _ = drive(comm)
    assert "tree" in {q.knobs.nccl for q in proposals}
    quiet = AutoSearch.from_pruned(
        p, ultralytics_defaults(GPU2), 1e6, beats=beats, contenders=top2, bottleneck=lambda r: "compute"
    )
    _, proposals, _ = drive(quiet)
    assert "tree" not in {q.knobs.nccl for q in proposals}


def test_budget_stops_the_descent_and_keeps_the_repeats():
    s = search(budget_s=600)
    results, proposals, spent = drive(s)  # 60 s a trial: ten trials, two of them repeats
    assert spent <= 600 and len(results) == 10
    skipped = [d for d in s.decisions if d.kind == "skipped-budget"]
    assert skipped and all(d.budget_used_s is not None for d in skipped)
    assert {d.knob for d in skipped} >= {"cache", "nccl"}
    assert [p.stage for p in proposals[-2:]] == ["confirm", "confirm"]
    assert all(d.budget_used_s is not None for d in s.decisions)


def test_the_epoch_job_after_the_search_is_kept_within_the_budget():
    s = search(budget_s=600, after_trials=2.0)
    results, proposals, spent = drive(s)  # 60 s a trial; 120 s kept for the epoch job
    assert spent + 2 * 60 <= 600 and len(results) == 8
    assert [p.stage for p in proposals[-2:]] == ["confirm", "confirm"]
    skipped = [d for d in s.decisions if d.kind == "skipped-budget"]
    assert skipped and "and the epoch job" in skipped[0].reason


def test_budget_left_buys_repeats_until_the_noise_has_three_degrees_of_freedom():
    from yoloprof.analysis import noise as noise_mod

    df = lambda rs: noise_mod.run_to_run(rs).df  # noqa: E731
    s = search(noise_df=df)
    results, proposals, _ = drive(s, noise=0.02)
    assert df(results) == 3  # top2 repeats give 2; one more repeat of the contender with the fewest runs
    floor = [d for d in s.decisions if "df; 3 wanted" in d.reason]
    assert len(floor) == 1 and floor[0].kind == "repeat" and "rests on 2 df" in floor[0].reason
    # A tight budget: the descent stops early enough to leave the three repeats the noise needs (on 1 df every
    # interval is 12.7 spreads wide, everything ties and the cheapest, often the slowest, would be recommended)
    tight = search(budget_s=660, noise_df=df)
    results, proposals, spent = drive(tight, noise=0.02)
    assert df(results) == 3 and spent <= 660
    assert [p.stage for p in proposals].count("confirm") == 3
    assert any(d.kind == "skipped-budget" and d.stage == "budget" for d in tight.decisions)  # the descent gave way
    plain = search(budget_s=660)  # without a noise test, only the contenders' repeats are held back
    _, plain_proposals, _ = drive(plain, noise=0.02)
    descent = lambda ps: sum(p.stage != "confirm" for p in ps)  # noqa: E731
    assert descent(plain_proposals) > descent(proposals)


def test_oom_stops_going_up():
    s = search(start=Knobs(32, 8, True, False, "ram", "simple"))
    results, proposals, _ = drive(s, oom=lambda k: k.batch >= 128)
    batches = [p.knobs.batch for p in proposals]
    assert 256 not in batches and batches.count(128) == 1
    assert s.incumbent.knobs == Knobs(64, 4, True, False, "ram", "simple", False, "default")
    # the second pass walks batch again from workers 4: batch 128 is known to run out of memory, so not run
    skip = [d for d in s.decisions if d.kind == "pruned" and d.stage == "descent"]
    assert skip and skip[0].value == "128" and "batch 128 ran out of memory" in skip[0].reason


def test_oom_at_the_start_steps_the_batch_down():
    start = Knobs(256, 4, True, False, "off", "default")
    s = search(start=start)
    _, proposals, _ = drive(s, oom=lambda k: k.batch >= 128)
    assert [p.knobs.batch for p in proposals[:3]] == [256, 128, 64]
    assert all(p.knobs.batch <= 64 for p in proposals[2:])


def test_confirmation_interleaves_repeats_of_the_contenders():
    s = search(repeats=2)
    results, proposals, _ = drive(s)
    confirm = [p for p in proposals if p.stage == "confirm"]
    firsts = top2(results[: len(results) - len(confirm)])
    assert [p.repeat_of for p in confirm] == firsts[::-1] + firsts  # reversed, then the original order
    by_id = {r.trial_id: r for r in results}
    assert all(p.knobs == by_id[p.repeat_of].knobs for p in confirm)
    assert [d.kind for d in s.decisions].count("repeat") == 4


def test_no_proposal_repeats_a_configuration_already_run():
    space = auto_space(GPU2, dataset_fits_ram=True)
    done = [
        TrialResult("t01-old", "ok", Knobs(32, 8, True, True, "off", "default"), 2, "cuda", img_per_s=10.0, wall_s=60.0)
    ]
    s = search(space)
    proposals = []
    results = list(done)
    while (p := s.propose(results, 60.0 * len(results))) is not None:
        assert p.stage == "confirm" or all(r.knobs != p.knobs for r in results)
        proposals.append(p)
        results.append(
            TrialResult(
                trial_id(len(results) + 1, p.knobs), "ok", p.knobs, 2, "cuda", img_per_s=surface(p.knobs), wall_s=60.0
            )
        )
    assert s.propose(results, 1.0) is None  # done stays done


def test_failed_start_ends_the_search():
    s = search()
    p = s.propose([], 0.0)
    failed = TrialResult("t01", "error", p.knobs, 2, "cuda", error="NCCL timeout", wall_s=5.0)
    assert s.propose([failed], 5.0) is None
    assert s.decisions[-1].kind == "done" and "did not finish" in s.decisions[-1].reason


def test_decisions_tell_the_story():
    s = search(bottleneck=lambda r: "input")
    drive(s)
    kinds = {d.kind for d in s.decisions}
    assert {"tried", "adopted", "kept", "repeat", "done"} <= kinds
    adopted = [d for d in s.decisions if d.kind == "adopted"]
    assert adopted[0].knob == "workers" and adopted[0].value == "4" and "beyond noise" in adopted[0].reason
    assert all(d.trial_id for d in s.decisions if d.kind in ("tried", "adopted", "kept", "repeat"))
    assert replace(s.start) == ultralytics_defaults(GPU2)


def test_workers_over_the_cap_count_as_the_cap():
    hw = Hardware("cuda", 2, [0, 1], cpu_count=8, gpus_on_machine=2)  # cap 4: Ultralytics' workers 8 runs as 4
    space = auto_space(hw)
    assert space.values["workers"] == [0, 1, 2, 4]
    s = AutoSearch(space, ultralytics_defaults(hw), 1e6, beats=beats, contenders=top2, bottleneck=lambda r: "input")
    results, proposals, _ = drive(s)
    runs = [space.effective(p.knobs) for p in proposals if p.stage != "confirm"]
    assert len(runs) == len(set(runs))  # workers 4 is never run beside the start's workers 8
    assert proposals[1].knobs.workers == 2


@pytest.mark.parametrize("bn", ["input", "communication", "compute", "memory", "straggler"])
def test_a_flat_machine_walks_every_knob_once_in_the_bottleneck_order(bn):
    s = search(start=Knobs(64, 4, True, True, "off", "default"), bottleneck=lambda r: bn)
    results, proposals, _ = drive(s, rate=lambda k: 1000.0)
    walked = [d.knob for d in s.decisions if d.kind == "kept"]
    assert walked == list(ORDER[bn])  # one pass: nothing was adopted
    assert not [d for d in s.decisions if d.kind == "adopted"]
    # batch, workers: up and down; amp (off, bf16), pin; cache; nccl presets; deterministic, compile, channels_last
    neighbours_tried = 2 + 2 + 2 + 1 + 2 + 5 + 1 + 1 + 1
    assert len(results) == 1 + neighbours_tried + 2


def test_a_resumed_search_goes_on_with_the_budget_left(monkeypatch):
    """--resume replays the kept trials in no time; the budget's clock reads what it read the first time."""
    from yoloprof.scan import auto

    full = search(budget_s=600)
    results, proposals, _ = drive(full)  # 60 s a trial: ten trials, then the budget stops it
    assert len(results) == 10
    now = [1000.0]
    monkeypatch.setattr(auto.time, "monotonic", lambda: now[0])
    clock = auto.SearchClock(started=997.0, earlier=list(full.decisions))  # 3 s of set-up before the search
    again, replayed, seen = search(budget_s=600), [], []
    while (p := again.propose(replayed, clock.now())) is not None:
        seen.append(p)
        if len(replayed) < 6:  # interrupted after six trials: these are kept
            replayed.append(results[len(replayed)])
            clock.kept(replayed[-1])
        else:
            tid = trial_id(len(replayed) + 1, p.knobs)
            replayed.append(TrialResult(tid, "ok", p.knobs, 2, "cuda", img_per_s=surface(p.knobs), wall_s=60.0))
            now[0] += 60.0
    assert [q.knobs for q in seen] == [q.knobs for q in proposals]  # the same ten trials, no fresh budget
    assert [d.budget_used_s for d in again.decisions] == [d.budget_used_s for d in full.decisions]
    fresh = auto.SearchClock(started=now[0] - 3.0, earlier=[])  # a new scan starts at its own set-up time
    assert fresh.now() == 3.0


def test_the_reserve_prices_each_contenders_repeat_at_its_own_trial():
    """A large batch's trial takes several times the median (seen on this VM: batch 128 took 58 s beside a 16 s
    median): the repeats held back are priced at each contender's own wall time, and the noise floor's extra
    repeats at the cheapest contender's."""
    from yoloprof.analysis import noise as noise_mod

    s = search(budget_s=900, noise_df=lambda rs: noise_mod.run_to_run(rs).df, after_trials=2.0)
    walls = {16: 15.0, 32: 15.0, 64: 15.0, 128: 60.0}
    s._results = [
        TrialResult(
            trial_id(i + 1, Knobs(b, 8, True, True, "off", "default")),
            "ok",
            Knobs(b, 8, True, True, "off", "default"),
            2,
            "cuda",
            img_per_s=surface(Knobs(b, 8, True, True, "off", "default")),
            wall_s=w,
        )
        for i, (b, w) in enumerate(walls.items())
    ]
    assert s.estimate_s() == 15.0  # the median: what the old reserve priced every repeat at
    # contenders (top2): batch 128 (60 s) and 64 (15 s): one repeat each, one more for 3 df at 15 s, the epoch job
    assert s._reserve_s() == pytest.approx((60 + 15) + 1 * 15 + 2 * 15)
