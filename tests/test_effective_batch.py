"""The batch that ran: Ultralytics caps a batch at the dataset's size, DDP at a rank's shard of it.

A trial or a compute-probe point asked for a larger batch than its dataset holds ran a smaller one: the
records keep the one that ran and say so, the memory fit and the OOM bookkeeping count the batch that ran,
the built-in dataset is sized to the scan's largest batch, and a user's dataset drops planned batches it
cannot run. Expected figures are hand-computed from round numbers here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from yoloprof.analysis import aggregate
from yoloprof.analysis.aggregate import LaunchOutcome
from yoloprof.analysis.failures import OomTracker
from yoloprof.analysis.memory_fit import max_batch_fit
from yoloprof.analysis.ranking import rank_trials
from yoloprof.data import dataset
from yoloprof.data.dataset import DEFAULT_IMAGES, MAX_IMAGES, MIN_STEPS_PER_EPOCH, SyntheticSpec, images_for
from yoloprof.errors import UsageError
from yoloprof.records import (
    ComputeCeiling,
    ComputePoint,
    Knobs,
    RankEnd,
    RankInfo,
    RankRecords,
    StepSample,
    TrialResult,
    TrialSpec,
    batch_that_runs,
    from_dict,
    to_dict,
)
from yoloprof.search import plan
from yoloprof.search.plan import Hardware
from yoloprof.search.prune import prune
from yoloprof.search.space import auto_space
from yoloprof.analysis.headroom import Ceilings

TINY_MODEL = Path(__file__).parent / "fixtures" / "tiny-detect.yaml"
H200x8 = Hardware("cuda", 8, list(range(8)), cpu_count=128, gpus_on_machine=8, bf16=True)
GPU1 = Hardware("cuda", 1, [0], cpu_count=16, gpus_on_machine=1, bf16=True)
CPU2 = Hardware("cpu", 2, [], cpu_count=2, gpus_on_machine=0)


def info(rank: int, world: int, batch_per_rank: int, images: int) -> RankInfo:
    """What a rank's on_ready writes: loader.batch_size (already min(batch, dataset)) and len(loader.dataset)."""
    return RankInfo(
        rank=rank,
        local_rank=rank,
        world_size=world,
        pid=100 + rank,
        hostname="h",
        device="cpu",
        device_name="cpu",
        backend="gloo" if world > 1 else None,
        batch_per_rank=batch_per_rank,
        accumulate=1,
        workers_requested=0,
        workers_effective=0,
        pin_memory_effective=False,
        amp_effective=False,
        dataset_images=images,
        batches_per_epoch=1,
        ddp_bucket_cap_mb=None,
        torch_threads=1,
        t_start_s=0.0,
    )


def step(rank: int, i: int, images: int) -> StepSample:
    return StepSample(
        rank=rank,
        step=i,
        epoch=i,
        warmup=False,
        t_end_s=float(i),
        images=images,
        step_ms=100.0,
        data_wait_ms=0.0,
        h2d_ms=0.0,
        forward_ms=50.0,
        backward_ms=50.0,
        comm_wait_ms=0.0,
        optimizer_ms=0.0,
        other_ms=0.0,
        optimizer_stepped=True,
    )


def trial(world: int, batch: int, loader_batch: int, images: int, ran: int, status: str = "ok") -> TrialResult:
    spec = TrialSpec(
        "t1",
        Knobs(batch, 0, False, False, "off", "default"),
        world,
        "cpu",
        [],
        "m.yaml",
        "/d.yaml",
        64,
        "SGD",
        0,
        2,
        {},
    )
    ranks = [
        RankRecords(
            r,
            info(r, world, loader_batch, images),
            [step(r, i, ran) for i in range(2)],
            RankEnd(r, status, 100.0, "rss", error="out of memory" if status == "oom" else None),
        )
        for r in range(world)
    ]
    return aggregate.aggregate(spec, ranks, LaunchOutcome(0 if status == "ok" else 1, wall_s=5.0))


# -- records -----------------------------------------------------------------------------------------


def test_batch_that_runs_is_ultralytics_cap_then_the_ranks_shard():
    assert batch_that_runs(1024, 512, 1) == 512  # build_dataloader: min(batch, len(dataset))
    assert batch_that_runs(128, 512, 8) == 64  # 8 DistributedSampler shards of 64 images
    assert batch_that_runs(64, 512, 8) == 64 and batch_that_runs(16, 20, 1) == 16  # fits: as asked
    assert batch_that_runs(4, 10, 4) == 3  # ceil(10 / 4): the sampler pads every shard to 3


def test_a_capped_trial_records_the_batch_that_ran_and_says_so():
    r = trial(world=1, batch=1024, loader_batch=512, images=512, ran=512)
    assert (r.status, r.batch_per_rank_effective, r.batch_effective, r.batch_capped) == ("ok", 512, 512, True)
    assert r.knobs.batch == 1024  # the configuration keeps its name; what ran is beside it
    assert "ran at batch 512 per rank, not 1024: Ultralytics caps the batch at the dataset's 512 images." in r.notes, (
        r.notes
    )
    assert r.img_per_s == pytest.approx(512 / 0.1)  # images that ran over the time they took, as before


def test_a_ddp_trial_runs_at_the_ranks_shard_when_the_shard_is_smaller_than_a_batch():
    # the H200 case before the dataset was sized: 8 ranks x 128 on the 512-image built-in dataset
    r = trial(world=8, batch=1024, loader_batch=128, images=512, ran=64)
    assert (r.batch_per_rank_effective, r.batch_effective) == (64, 512)
    assert any(
        n.startswith(
            "ran at batch 64 per rank (512 in all), not 128 (1024): each of the 8 ranks loads a "
            "shard of 64 of the dataset's 512 images"
        )
        for n in r.notes
    ), r.notes


def test_a_trial_that_ran_as_asked_has_no_note_and_an_oom_keeps_the_batch_that_ran():
    ok = trial(world=2, batch=16, loader_batch=8, images=512, ran=8)
    assert (ok.batch_per_rank_effective, ok.batch_effective, ok.batch_capped, ok.notes) == (8, 16, False, [])
    oom = trial(world=1, batch=2048, loader_batch=512, images=512, ran=512, status="oom")
    assert oom.status == "oom" and oom.batch_effective == 512 and oom.batch_capped


def test_the_new_field_round_trips_and_old_records_read_as_not_recorded():
    r = trial(world=1, batch=1024, loader_batch=512, images=512, ran=512)
    back = from_dict(TrialResult, json.loads(json.dumps(to_dict(r))))
    assert back == r and back.batch_effective == 512
    old = to_dict(r)
    del old["batch_per_rank_effective"]  # a result.json written before the field
    was = from_dict(TrialResult, old)
    assert was.batch_per_rank_effective is None and was.batch_effective is None and not was.batch_capped
    assert was.batch_ran == 1024  # read as what it asked: nothing else is known
    p = ComputePoint(1024, True, "ok", peak_mem_mib=9000.0, batch_effective=512)
    assert from_dict(ComputePoint, json.loads(json.dumps(to_dict(p)))) == p and p.capped and p.batch_ran == 512
    legacy = from_dict(ComputePoint, {"batch": 64, "amp": True, "status": "ok"})
    assert legacy.batch_effective is None and legacy.batch_ran == 64 and not legacy.capped


def test_results_csv_carries_the_batch_that_ran_and_the_note():
    from yoloprof.reports import csv_table

    capped = trial(world=1, batch=1024, loader_batch=512, images=512, ran=512)
    text = csv_table.render([capped], rank_trials([capped]))
    row = next(csv.DictReader(io.StringIO(text)))
    assert (row["batch"], row["batch_effective"]) == ("1024", "512")
    assert "ran at batch 512 per rank, not 1024" in row["notes"]


def test_the_report_shows_the_batch_that_ran_beside_the_one_asked_and_the_note(cpu_scan_copy):
    import dataclasses

    from yoloprof.reports import config_files, html
    from yoloprof import pipeline

    out = pipeline.collect(cpu_scan_copy)
    first = out.results[0]
    note = f"ran at batch 2 per rank (4 in all), not {first.knobs.batch // 2} ({first.knobs.batch}): a test note."
    capped = dataclasses.replace(first, batch_per_rank_effective=2, notes=[note])
    out = dataclasses.replace(out, results=[capped] + out.results[1:])
    page = html.render(out, config_files.best_config(out.meta, out.best), title="t")
    assert f'title="{note}">(ran 4)</span>' in page.replace("&#39;", "'")
    assert f"Note: {note}" in page


def test_the_fixtures_read_without_the_field_and_re_aggregate_it_from_their_rank_records(cpu_scan_copy):
    from yoloprof import pipeline

    saved = json.loads(next((cpu_scan_copy / "trials").glob("*/result.json")).read_text())
    assert "batch_per_rank_effective" not in saved  # recorded before the field
    out = pipeline.collect(cpu_scan_copy)
    assert all(r.batch_effective == r.knobs.batch and not r.batch_capped for r in out.results if r.status == "ok")


# -- the memory fit and the OOM bookkeeping count the batch that ran -----------------------------------


def test_the_memory_fit_draws_no_line_through_a_batch_that_never_ran():
    # 1000 MiB + 100 MiB per image; the point asked at 1024 ran 512 (a 512-image dataset) and measured 512's memory
    pts = [
        ComputePoint(256, True, "ok", peak_mem_mib=26600.0, batch_effective=256),
        ComputePoint(512, True, "ok", peak_mem_mib=52200.0, batch_effective=512),
        ComputePoint(1024, True, "ok", peak_mem_mib=52200.0, batch_effective=512),
    ]
    # 90% of 143771 MiB = 129393.9 MiB: (129393.9 - 1000) / 100 = 1283
    assert max_batch_fit(pts, 143771.0, 0.10) == 1283
    read_as_asked = [ComputePoint(p.batch, p.amp, p.status, peak_mem_mib=p.peak_mem_mib) for p in pts]
    assert max_batch_fit(read_as_asked, 143771.0, 0.10) != 1283  # the line through (1024, 52200 MiB) is flatter
    # two asked batches that both ran 512: one batch, no line
    assert max_batch_fit([pts[1], pts[2]], 143771.0, 0.10) is None


def test_an_oom_at_a_capped_batch_limits_at_the_batch_that_ran():
    pts = [
        ComputePoint(64, True, "ok", peak_mem_mib=7400.0, batch_effective=64),
        ComputePoint(128, True, "ok", peak_mem_mib=13800.0, batch_effective=128),
        ComputePoint(1024, True, "oom", batch_effective=300),
    ]  # a 300-image dataset: 1024 ran as 300
    assert max_batch_fit(pts, 143771.0, 0.10) == 299
    ceil = ComputeCeiling("cuda", "H200", 143771.0, pts)
    pruned = prune(auto_space(GPU1, dataset_fits_ram=True), Ceilings(compute=ceil), GPU1)
    assert pruned.max_fit[True] == 299  # amp on: below the OOM that ran at 300, not at 1024


def test_the_oom_tracker_and_the_search_count_an_oom_at_the_batch_that_ran():
    oom = trial(world=1, batch=2048, loader_batch=512, images=512, ran=512, status="oom")
    tracker = OomTracker()
    tracker.record(oom)

    def spec(b):
        return TrialSpec("t", Knobs(b, 0, False, False, "off", "default"), 1, "cpu", [], "m", "/d", 64, "SGD", 0, 2, {})

    assert tracker.skip_reason(spec(1024)) and "oom at batch 512" in tracker.skip_reason(spec(1024))
    assert tracker.skip_reason(spec(256)) is None


def test_an_epochs_predicted_time_counts_the_images_that_ran():
    from yoloprof.analysis import epoch
    from yoloprof.records import RunPlan

    r = trial(world=8, batch=1024, loader_batch=128, images=512, ran=64)  # one batch of 64 per rank an epoch
    assert r.batches_per_epoch == 1 and r.img_per_s == pytest.approx(8 * 64 / 0.1)
    p = epoch.predict(r, None, None, RunPlan())
    assert p.steps_s == pytest.approx(0.1)  # 512 images at 5120 img/s: the step it took, not 1024 images' 0.2 s


# -- the built-in dataset, sized to the scan -----------------------------------------------------------


def test_the_built_in_dataset_is_sized_to_the_largest_planned_batch():
    from yoloprof.scan.orchestrate import planned_batches
    from yoloprof.search import baselines
    from yoloprof.scan import ceilings

    # 8 GPUs, the default auto space: 8-128 per rank, so 1024 global at most
    grid = plan.make_plan(H200x8, {})
    largest = max(planned_batches(H200x8, {}, "auto", grid, None, with_defaults=True))
    assert largest == 1024
    n = images_for(largest)
    assert n == 16384 and n // largest >= MIN_STEPS_PER_EPOCH == 16
    assert dataset.SyntheticSpec(images=n).key != dataset.SyntheticSpec().key  # the cache key holds the count
    specs = ceilings.compute_specs(
        H200x8,
        [8 * b for b in (8, 16, 32, 64, 128)],
        [True],
        model="m",
        data="/d",
        imgsz=640,
        optimizer="SGD",
        warmup=1,
        steps=1,
    )
    assert max(s.knobs.batch for s in specs) == 128 < n  # the compute probe's batches run as asked
    assert batch_that_runs(128, n, 8) == 128  # and so does every trial: shards of 2048 images

    # the default CPU scan: 2 ranks, 4-16 per rank and Ultralytics' 16: the 512 images it always had
    cpu = max(planned_batches(CPU2, {}, "auto", plan.make_plan(CPU2, {}), None, with_defaults=True))
    assert cpu == 32 and images_for(cpu) == DEFAULT_IMAGES == 512
    assert images_for(max(planned_batches(CPU2, {}, "grid", plan.make_plan(CPU2, {}), None, True))) == 512
    # your settings count too: a --baseline batch larger than the grid's
    mine = baselines.parse_baseline("batch=2048", H200x8)
    assert (
        max(
            planned_batches(
                H200x8, {"batch": [256]}, "grid", plan.make_plan(H200x8, {"batch": [256]}), mine, with_defaults=True
            )
        )
        == 2048
    )


def test_a_scan_without_data_generates_the_sized_dataset_once(tmp_path, monkeypatch):
    import functools

    from rich.console import Console

    from yoloprof.scan import request

    monkeypatch.setenv("YOLOPROF_CACHE", str(tmp_path))
    monkeypatch.setattr(request, "SyntheticSpec", functools.partial(SyntheticSpec, width=64, height=48, val_images=2))
    console = Console(record=True, width=400)
    info = request.resolve_data(request.ScanRequest(), console, images=600)  # the first 512, then 88 in a helper
    assert info.synthetic and info.train_images == 600 and "/synthetic-600-64x48-" in info.data
    assert (
        "Generating the built-in synthetic dataset (600 images, 64x48, 16 steps an epoch at the largest batch"
        in console.export_text()
    )
    again = request.resolve_data(request.ScanRequest(), Console(record=True), images=600)
    assert again.data == info.data  # from the cache, keyed by the count
    small = request.resolve_data(request.ScanRequest(), Console(quiet=True), images=DEFAULT_IMAGES)
    assert "/synthetic-512-64x48-" in small.data and small.train_images == 512


def test_images_for_has_a_floor_a_ceiling_and_never_falls_below_the_batch():
    assert images_for(1) == images_for(32) == DEFAULT_IMAGES  # 16 x 32 = 512
    assert images_for(64) == 1024 and images_for(1024) == MAX_IMAGES == 16384
    assert images_for(2048) == MAX_IMAGES  # 8 steps an epoch: the ceiling wins over the steps
    assert images_for(32768) == 32768  # a batch beyond the ceiling still runs as asked (one step an epoch)


def test_a_larger_dataset_keeps_the_first_512_images_and_is_the_same_made_by_any_number_of_processes(
    tmp_path, monkeypatch
):
    # small numbers for speed: the first 8 images as always made, then blocks of 4 each from a seed of its own
    monkeypatch.setattr(dataset, "DEFAULT_IMAGES", 8)
    monkeypatch.setattr(dataset, "BLOCK", 4)
    spec = SyntheticSpec(images=18, width=64, height=48, val_images=3)
    assert dataset.parts(spec) == [(0, 8), (8, 12), (12, 16), (16, 18)]
    one = dataset.generate(tmp_path / "one", spec, processes=1).parent
    two = dataset.generate(tmp_path / "two", spec, processes=2).parent  # spawned processes, one block each at a time
    base = dataset.generate(tmp_path / "base", SyntheticSpec(images=8, width=64, height=48, val_images=3)).parent

    def files(root, split):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "images" / split).glob("*"))}

    assert len(files(one, "train")) == 18 and files(one, "train") == files(two, "train")
    assert files(one, "val") == files(two, "val") == files(base, "val")  # validation as it always was
    head = {k: v for k, v in files(one, "train").items() if int(Path(k).stem) < 8}
    assert head == files(base, "train")  # the first images are the smaller dataset's, byte for byte
    labels = sorted((two / "labels" / "train").glob("*.txt"))
    assert len(labels) == 18 and all(p.read_text() for p in labels)


# -- a user's dataset: planned batches it cannot run are dropped, with why ---------------------------------


def test_planned_batches_larger_than_a_users_dataset_are_dropped_with_the_reason():
    the_plan = plan.make_plan(CPU2, {"batch": [4, 16, 32]})
    plan.drop_over_the_data(the_plan, CPU2, train_images=16, flag=True)  # 2 ranks: shards of 8
    assert the_plan.axes.batch == [4, 16] and {k.batch for k in the_plan.knobs} == {4, 16}
    assert (
        "batch 32 (16 per rank): each of the 2 ranks loads 8 of the dataset's 16 training images an epoch, so "
        "it would run as batch 8 per rank (16 in all)"
    ) in the_plan.dropped
    with pytest.raises(
        UsageError,
        match=r"--batch 64,128: larger than the dataset's 16 training images can run on "
        r"2 ranks .* give --batch 16 or smaller",
    ):
        plan.drop_over_the_data(plan.make_plan(CPU2, {"batch": [64, 128]}), CPU2, train_images=16, flag=True)
    one = plan.make_plan(GPU1, {"batch": [8, 64]})
    plan.drop_over_the_data(one, GPU1, train_images=40, flag=True)
    assert one.axes.batch == [8] and one.dropped[-1] == (
        "batch 64: the dataset has 40 training images and "
        "Ultralytics caps the batch at the dataset's size, so it "
        "would run as batch 40"
    )


def test_the_auto_space_drops_them_too_and_the_built_in_dataset_drops_none():
    s = auto_space(H200x8, dataset_fits_ram=True, train_images=300)  # shards of 38: 64 and 128 per rank cannot run
    assert s.values["batch"] == [64, 128, 256]
    assert any(
        d.knob == "batch" and d.value == "1024" and "would run as batch 38 per rank (304 in all)" in d.reason
        for d in s.dropped
    )
    sized = auto_space(H200x8, dataset_fits_ram=True, train_images=images_for(1024))
    assert sized.values["batch"] == [64, 128, 256, 512, 1024]
    with pytest.raises(
        UsageError,
        match="--batch 4096: larger than the dataset's 300 training images can run on 8 "
        "ranks; give --batch 304 or smaller",
    ):
        auto_space(H200x8, {"batch": [4096]}, train_images=300)


@pytest.mark.parametrize("strategy", ["grid", "auto"])
def test_a_batch_list_the_users_dataset_cannot_run_is_one_line_and_exit_2(
    strategy, tiny_data, tmp_path, monkeypatch, capsys
):
    from yoloprof.probes import environment
    from test_bad_input import fake_env
    from yoloprof import cli

    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env([]))  # 2 CPU ranks
    code = cli.main(
        ["scan", "--data", str(tiny_data), "--batch", "32,64", "--strategy", strategy, "--out", str(tmp_path / "s")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--batch 32,64: larger than the dataset's 16 training images can run on 2 ranks" in err[0]
    assert "give --batch 16 or smaller" in err[0] and not (tmp_path / "s").exists()


# -- for real: a tiny dataset with fewer images than the batch asked ---------------------------------------


@pytest.mark.slow
def test_a_real_trial_on_fewer_images_than_its_batch_records_the_batch_that_ran(tiny_data, tmp_path, _private_cache):
    """16 images, 2 gloo ranks, batch 32 asked (16 per rank): each rank's shard is 8 images, so every step
    runs 8 per rank. The images per step are the probe's own count, independent of the info line."""
    from yoloprof.scan import launch

    spec = TrialSpec(
        "t01-b32-w0-fp32",
        Knobs(32, 0, False, False, "off", "default"),
        2,
        "cpu",
        [],
        str(TINY_MODEL),
        str(tiny_data),
        64,
        "SGD",
        1,
        3,
        {"OMP_NUM_THREADS": "1"},
    )
    tdir = tmp_path / "t"
    outcome = launch.run_trial(spec, tdir, cache_dir=_private_cache)
    ranks = aggregate.read_ranks(tdir)
    r = aggregate.aggregate(spec, ranks, outcome)
    assert r.status == "ok", (r.error, aggregate.log_tail(tdir / "launcher.log"))
    assert [x.info.batch_per_rank for x in ranks] == [16, 16]  # Ultralytics' loader: min(16, 16 images)
    assert {s.images for x in ranks for s in x.steps} == {8} == {math.ceil(16 / 2)}  # what every step really held
    assert (r.batch_per_rank_effective, r.batch_effective, r.batch_capped) == (8, 16, True)
    assert any(n.startswith("ran at batch 8 per rank (16 in all), not 16 (32)") for n in r.notes), r.notes
