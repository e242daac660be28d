"""What an epoch adds beyond its steps: the worker's "epoch" mode, its aggregation, the scan's job."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from yoloprof.analysis import aggregate, epoch_costs
from yoloprof.records import EpochCosts, Knobs, RankEnd, StepSample, TrialSpec, read_json, to_dict, write_json
from yoloprof.records.epoch import RankEpochParts
from yoloprof.scan import epoch_job, launch
from yoloprof.scan.orchestrate import ScanRequest
from tests.conftest import CPU_SCAN

KNOBS = Knobs(batch=4, workers=1, amp=False, pin_memory=False, cache="off", nccl="default")


def tiny_spec(data: Path, **kw) -> TrialSpec:
    base = dict(
        trial_id="epoch-w2",
        knobs=KNOBS,
        world_size=2,
        device="cpu",
        gpus=[],
        model="yolo11n.yaml",
        data=str(data),
        imgsz=64,
        optimizer="SGD",
        warmup_steps=2,
        measured_steps=16,
        env={"OMP_NUM_THREADS": "1"},
        mode="epoch",
    )
    return TrialSpec(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# The pure side: hand-built rank lines


def _step(rank, i, ms, mosaic, boundary=False, end_ms=None, warmup=False) -> StepSample:
    return StepSample(
        rank=rank,
        step=i,
        epoch=0,
        warmup=warmup,
        t_end_s=float(i),
        images=4,
        step_ms=ms,
        data_wait_ms=1.0,
        h2d_ms=None,
        forward_ms=None,
        backward_ms=None,
        comm_wait_ms=None,
        optimizer_ms=0.0,
        other_ms=None,
        optimizer_stepped=True,
        epoch_boundary=boundary,
        epoch_end_ms=end_ms,
        mosaic=mosaic,
    )


def _write_rank(tdir: Path, rank: int, steps: list[StepSample], parts: RankEpochParts) -> None:
    lines = [{"kind": "step", **to_dict(s)} for s in steps] + [{"kind": "epoch_parts", **to_dict(parts)}]
    (tdir / f"rank{rank}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_mosaic_phases_on_both_sides_cancel_a_drift_of_the_machine(tmp_path):
    """Mosaic makes no difference here, but the machine slows by 20% linearly over the job: the phase without
    mosaic, in the middle, is as slow as the mean of the two around it, so the ratio reads 1.0, where mosaic
    on then off alone would read 0.94: the drift taken for mosaic's effect."""
    slow = lambda i: 100.0 * (1.0 + 0.2 * i / 35)  # noqa: E731 - step i's time on a machine that drifts
    for r in (0, 1):
        steps = [_step(r, i, slow(i), True) for i in range(0, 12)]
        steps += [_step(r, i, slow(i), False) for i in range(12, 24)]
        steps += [_step(r, i, slow(i), True) for i in range(24, 36)]
        _write_rank(tmp_path, r, steps, RankEpochParts(rank=r, mosaic_off_step=12, mosaic_back_step=24))
    ratio, ci, why = epoch_costs.no_mosaic_ratio(aggregate.read_ranks(tmp_path))
    assert ratio == pytest.approx(1.0, abs=0.01) and ci[0] < 1.0 < ci[1] and why is None
    first_only = [s for s in aggregate.read_ranks(tmp_path)[0].steps if s.step < 24]
    on = statistics.mean(s.step_ms for s in first_only if s.mosaic)
    off = statistics.mean(s.step_ms for s in first_only if not s.mosaic)
    assert on / off == pytest.approx((1 + 0.2 * 5.5 / 35) / 1.1) and on / off < 0.94  # one phase after the other


def test_aggregation_takes_the_slowest_rank_and_scales_the_val_loop(tmp_path):
    slow = {0: 1.0, 1: 1.1}  # rank 1 is 10% slower in every step
    for r in (0, 1):
        steps = [_step(r, 0, 500.0, True, warmup=True)]
        steps += [_step(r, i, 100.0 * slow[r], True) for i in range(1, 13)]
        steps += [_step(r, 13, (150.0 if r else 90.0), True, boundary=True, end_ms=20.0)]
        steps += [_step(r, 14, 400.0, False, warmup=True)]  # the loader's restart after close_mosaic
        steps += [_step(r, i, 80.0 * slow[r], False) for i in range(15, 27)]
        parts = RankEpochParts(
            rank=r,
            setup_s=3.0 + r,
            startup_s=5.0 - r,
            mosaic_off_step=14,
            end_s=[0.02, 0.01 + r * 0.01],
            val_s=[1.0 + r * 0.1, 0.5 + r * 0.1],
            val_loop_s=[0.6 + r * 0.1, 0.3 + r * 0.1],
            val_images=[8, 8],
            val_capped=True,
            val_batches=2,
            val_images_total=64,
            save_s=[0.4 - r * 0.1, 0.2],
        )
        _write_rank(tmp_path, r, steps, parts)
    spec = tiny_spec(Path("/nowhere/data.yaml"))
    costs = epoch_costs.build(spec, aggregate.read_ranks(tmp_path), epoch_costs.read_parts(tmp_path), "ok")
    assert costs.status == "ok" and costs.setup_s == 4.0 and costs.startup_s == 5.0  # the slowest rank's
    assert costs.end.s == pytest.approx([0.02, 0.02]) and costs.save.s == pytest.approx([0.4, 0.2])
    # 16 of 64 images timed: the slowest pass plus its batch loop three more times
    assert (costs.val_images_timed, costs.val_images_total) == (16, 64)
    assert costs.val.s == pytest.approx([1.1 + 0.7 * 3, 0.6 + 0.4 * 3]) and costs.val.estimate == pytest.approx(1.8)
    assert costs.boundary_ms == pytest.approx(150.0 - 20.0 - 110.0)  # its epoch end left out
    assert costs.no_mosaic_ratio == pytest.approx(110.0 / 88.0)
    assert costs.no_mosaic_ratio_ci == pytest.approx([1.25, 1.25])  # no spread: a zero-width interval
    assert any("16 of 64 images" in n for n in costs.notes)
    line = epoch_costs.summary_line(costs)
    assert line.startswith("Epoch costs (2 ranks): validation 1.80 s (16 of 64 images), saving 0.20 s, epoch end")
    assert "without mosaic x1.25 img/s" in line

    # `yoloprof report` rebuilds the record from the rank records, as a trial's result: a corrected rank file
    # (benchmarks/fidelity_side.py takes stopped seconds out) changes what the scan's folder loads
    out = tmp_path / "scan"
    job = out / epoch_costs.EPOCH_DIR / "w2"
    shutil.copytree(tmp_path, job, ignore=shutil.ignore_patterns("scan"))
    write_json(epoch_costs.record_path(out, 2), costs)
    assert epoch_costs.load(out)[2] == costs  # no spec or launch outcome beside the records: the saved record
    write_json(job / "spec.json", dataclasses.replace(spec, world_size=2))
    write_json(job / "launch.json", aggregate.LaunchOutcome(returncode=0, wall_s=60.0))
    for r in (0, 1):  # each rank's end record, as a rank writes it last
        end = RankEnd(r, "ok", None, "rss", None, None, 26, None, 100.0, 3.0 + r)
        with open(job / f"rank{r}.jsonl", "a") as f:
            f.write(json.dumps({"kind": "end", **to_dict(end)}) + "\n")
    assert epoch_costs.load(out)[2].no_mosaic_ratio == pytest.approx(110.0 / 88.0)
    rows = [json.loads(x) for x in (job / "rank1.jsonl").read_text().splitlines()]
    for r in rows:
        if r.get("kind") == "step" and not r["mosaic"] and not r["warmup"]:
            r["step_ms"] = 110.0  # rank 1 now as slow without mosaic as with it
    (job / "rank1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert epoch_costs.load(out)[2].no_mosaic_ratio == pytest.approx(1.0)


def test_the_runs_end_is_the_slowest_ranks_with_its_validation_scaled_to_the_split():
    a = RankEpochParts(
        rank=0, val_capped=True, val_images_total=64, final_s=3.0, final_val_loop_s=0.5, final_val_images=8
    )
    b = RankEpochParts(
        rank=1, val_capped=True, val_images_total=64, final_s=2.0, final_val_loop_s=0.4, final_val_images=8
    )
    assert epoch_costs.final([a, b]) == pytest.approx(3.0 + 0.5 * (64 / 16 - 1))  # 16 of 64 images timed
    a.val_capped = b.val_capped = False
    assert epoch_costs.final([a, b]) == 3.0
    b.final_s = None
    assert epoch_costs.final([a, b]) is None  # a rank that did not time it: unknown


def test_a_rank_without_epoch_parts_is_an_error_and_a_failed_trial_keeps_its_error(tmp_path):
    spec = tiny_spec(Path("/nowhere/data.yaml"))
    parts = [RankEpochParts(rank=0, val_s=[1.0], val_loop_s=[1.0], val_images=[4], val_images_total=4)]
    assert epoch_costs.build(spec, [], parts, "ok").error == "rank 1 wrote no epoch-end timings"
    failed = epoch_costs.build(spec, [], [], "timeout", "hung: no first step within 900 s")
    assert (failed.status, failed.error) == ("timeout", "hung: no first step within 900 s")
    assert "not measured (timeout)" in epoch_costs.summary_line(failed)


def test_the_recorded_epoch_costs_load_and_round_trip(tmp_path):
    costs = epoch_costs.load(CPU_SCAN)
    assert set(costs) == {2}
    c = costs[2]
    assert c.status == "ok" and c.world_size == 2 and len(c.val.s) == len(c.save.s) == len(c.end.s) == 2
    assert 0 < c.val_images_timed <= c.val_images_total and c.setup_s > 0
    write_json(tmp_path / "w2.json", c)
    assert read_json(tmp_path / "w2.json", EpochCosts) == c


def test_the_job_keeps_a_record_it_has_and_picks_the_recommended_trial(cpu_scan_copy, monkeypatch):
    monkeypatch.setattr(launch, "run_trial", lambda *a, **k: pytest.fail("a recorded world size ran again"))
    out = io.StringIO()
    done = epoch_job.run(cpu_scan_copy, None, None, ScanRequest(), Console(file=out, width=200))
    assert [c.world_size for c in done] == [2] and out.getvalue() == ""
    from yoloprof import pipeline

    scan = pipeline.collect(cpu_scan_copy)
    chosen = epoch_job.pick(scan.results, scan.ranking.best_trial_id, [])
    assert chosen[2].trial_id == scan.ranking.best_trial_id
    assert done[0].knobs == chosen[2].knobs  # the fixture was measured with the recommended settings


def test_each_world_size_gets_the_recommended_trial_or_its_best_placed_one():
    from yoloprof.records import TrialResult

    def r(tid, w, status="ok"):
        return TrialResult(tid, status, KNOBS, w, "cpu")

    results = [r("a1", 1), r("b1", 1), r("c2", 2), r("d2", 2), r("e4", 4, "oom")]
    chosen = epoch_job.pick(results, "d2", ["d2", "b1", "c2", "a1"])
    assert {w: t.trial_id for w, t in chosen.items()} == {1: "b1", 2: "d2"}  # none at 4: nothing finished there
    assert epoch_job.pick([r("x", 2, "error")], None, []) == {}


# ---------------------------------------------------------------------------------------------
# Real 2-rank gloo runs


@pytest.mark.slow
def test_epoch_mode_times_every_part_on_both_ranks(tmp_path):
    from yoloprof.data.dataset import SyntheticSpec, generate

    # 80 val images: more than the 64 a CPU pass validates, so the capped loader and the scaling run for real
    data = generate(tmp_path / "data", SyntheticSpec(images=16, width=160, height=120, val_images=80, seed=2))
    tdir = tmp_path / "epoch" / "w2"
    costs = epoch_job.measure(tiny_spec(data), tdir)
    assert costs.status == "ok", costs.error
    for part in (costs.val, costs.save, costs.end):
        assert len(part.s) == 2 and all(math.isfinite(x) and x > 0 for x in part.s)
    # 8 batches of 4 per rank and pass (the persistent iterator wraps around in the second)
    assert (costs.val_images_timed, costs.val_images_total) == (64, 80)
    assert any("64 of 80 images" in n for n in costs.notes)
    parts = epoch_costs.read_parts(tdir)
    assert all(p.val_capped and p.val_batches == 8 and p.val_images == [32, 32] for p in parts)
    assert all(v > max(p.val_s[i] for p in parts) for i, v in enumerate(costs.val.s))  # scaled up to 80 images
    assert costs.setup_s > 0
    # each rank's own start (a fresh process under torchrun) to its trainer: at least the torch import
    assert all(0.5 < p.startup_s < 120 for p in parts) and costs.startup_s == max(p.startup_s for p in parts)
    # the run's end: final_eval and Ultralytics' plots (its default), more than a validation pass, and drawn
    assert costs.final_plots is True and costs.final_s > costs.val.estimate
    assert all(p.final_val_images == 32 for p in parts)  # 8 of 80 val images a rank: scaled like a pass
    assert (tdir / "ultralytics" / "results.png").is_file() and list((tdir / "ultralytics").glob("*confusion_matrix*"))
    low, high = costs.no_mosaic_ratio_ci
    assert math.isfinite(costs.no_mosaic_ratio) and 0 < low <= costs.no_mosaic_ratio <= high < math.inf
    assert costs.boundary_ms is not None  # 4 batches per epoch: the steps crossed several
    # the step records tell the phases apart, the loader's restart counted as warm-up
    ranks = aggregate.read_ranks(tdir)
    off, back = parts[0].mosaic_off_step, parts[0].mosaic_back_step
    assert (off, back) == (18, 36) and all(s.mosaic == (not off <= s.step < back) for r in ranks for s in r.steps)
    assert all(s.warmup for r in ranks for s in r.steps if off <= s.step < off + 2 or back <= s.step < back + 2)
    assert max(s.step for s in ranks[0].steps) == 53  # mosaic on, off, on again: 2 + 16, 2 + 16, 2 + 16 steps
    assert (tdir / "ultralytics" / "weights" / "last.pt").is_file()  # save_model wrote into the job's folder
    write_json(tmp_path / "w2.json", costs)
    assert read_json(tmp_path / "w2.json", EpochCosts) == costs


@pytest.mark.slow
def test_an_injected_failure_is_a_record_not_an_exception(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOPROF_TEST_FAULT", "raise@3:rank1:trial=epoch")
    costs = epoch_job.measure(tiny_spec(tiny_data, warmup_steps=1, measured_steps=4), tmp_path / "w2")
    assert costs.status == "error" and "injected failure at step 3 on rank 1" in costs.error
    assert costs.val.s == [] and costs.setup_s is None


@pytest.mark.slow
def test_a_hung_job_times_out_and_the_scan_goes_on(tiny_data, cpu_scan_copy, monkeypatch):
    from yoloprof import pipeline

    best = pipeline.collect(cpu_scan_copy).ranking.best_trial_id
    (cpu_scan_copy / "epoch").rename(cpu_scan_copy / "epoch-recorded")
    spec_path = cpu_scan_copy / "trials" / best / "spec.json"
    spec = read_json(spec_path, TrialSpec)
    write_json(
        spec_path, tiny_spec(tiny_data, trial_id=best, knobs=spec.knobs, mode="train", warmup_steps=1, measured_steps=4)
    )
    monkeypatch.setenv("YOLOPROF_TEST_FAULT", "hang@1:trial=epoch")
    out = io.StringIO()
    done = epoch_job.run(cpu_scan_copy, None, None, ScanRequest(trial_timeout=5), Console(file=out, width=300))
    assert [c.status for c in done] == ["timeout"] and "--trial-timeout 15 s reached" in done[0].error
    assert read_json(cpu_scan_copy / "epoch" / "w2.json", EpochCosts) == done[0]
    assert (
        f"the settings of {best}" in out.getvalue()
        and "Epoch costs (2 ranks): not measured (timeout)" in out.getvalue()
    )
