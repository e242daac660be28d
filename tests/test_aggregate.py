"""Rank records -> TrialResult, on hand-made records with exact numbers and on the recorded real scan."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import CPU_SCAN
from yoloprof.analysis import aggregate
from yoloprof.analysis.aggregate import LaunchOutcome
from yoloprof.records import Knobs, RankEnd, RankRecords, StepSample, TrialSpec, read_json

KNOBS = Knobs(8, 2, False, False, "off", "default")
SPEC = TrialSpec("t1", KNOBS, 2, "cpu", [], "yolo11n.yaml", "/d.yaml", 64, "SGD", 1, 4, {})


def step(rank, i, step_ms, wait, comm_wait, images=4, warmup=False):
    fwd = (step_ms - wait - comm_wait) / 2
    return StepSample(
        rank=rank,
        step=i,
        epoch=0,
        warmup=warmup,
        t_end_s=float(i),
        images=images,
        step_ms=step_ms,
        data_wait_ms=wait,
        h2d_ms=0.0,
        forward_ms=fwd,
        backward_ms=fwd,
        comm_wait_ms=comm_wait,
        optimizer_ms=0.0,
        other_ms=0.0,
        optimizer_stepped=False,
        comm_ms=comm_wait * 2,
    )


def ranks_with(steps0, steps1):
    end = lambda r: RankEnd(r, "ok", 100.0 + r, "rss")  # noqa: E731
    return [RankRecords(0, None, steps0, end(0)), RankRecords(1, None, steps1, end(1))]


def test_exact_throughput_percentiles_and_fractions():
    warm = [step(0, 0, 999, 500, 0, warmup=True)]
    r0 = warm + [step(0, i, ms, 10, 20) for i, ms in enumerate([100, 100, 200, 100], start=1)]
    r1 = [step(1, 0, 999, 500, 0, warmup=True)] + [
        step(1, i, ms, 30, 5) for i, ms in enumerate([100, 100, 200, 100], start=1)
    ]
    res = aggregate.aggregate(SPEC, ranks_with(r0, r1), LaunchOutcome(0, wall_s=9.0))
    assert res.status == "ok" and res.measured_steps == 4
    # 4 steps x 2 ranks x 4 images over 0.5 s of the slowest rank (warm-up excluded)
    assert res.img_per_s == pytest.approx(32 / 0.5)
    assert res.step_ms_p50 == pytest.approx(100) and res.step_ms_p90 == pytest.approx(170)
    assert res.data_wait_frac == pytest.approx((40 / 500 + 120 / 500) / 2)
    assert res.comm_frac == pytest.approx((80 / 500 + 20 / 500) / 2)
    assert res.comm_wait_ms_p50 == pytest.approx(12.5)
    assert res.breakdown.step_ms == pytest.approx(125)
    assert res.peak_mem_mib == 101.0
    # busy = step - wait - comm: rank0 median 70, rank1 median 65
    assert res.rank_skew == pytest.approx(70 / 65 - 1)
    # per-step rates 80, 80, 40, 80 img/s: p10 interpolates 40 -> 80 at 0.3
    assert res.img_per_s_p10 == pytest.approx(52) and res.img_per_s_p90 == pytest.approx(80)


def test_only_steps_on_every_rank_count():
    r0 = [step(0, i, 100, 0, 0) for i in range(4)]
    r1 = [step(1, i, 100, 0, 0) for i in range(3)]  # rank 1 lost its last line
    res = aggregate.aggregate(SPEC, ranks_with(r0, r1), LaunchOutcome(0))
    assert res.measured_steps == 3


@pytest.mark.parametrize(
    "outcome,ends,status,words",
    [
        (
            LaunchOutcome(None, timed_out=True, wall_s=30.0),
            ("ok", "ok"),
            "timeout",
            "hung: after 30 s; rank 0 last finished step 0",
        ),
        (LaunchOutcome(1), ("oom", "error"), "oom", "injected oom"),
        (LaunchOutcome(1), ("ok", "error"), "error", "injected error"),
        (LaunchOutcome(1), ("ok", None), "error", "rank 1 ended without a record"),
        (LaunchOutcome(1, rank_exitcodes={"1": -9}), ("ok", None), "error", "rank 1 killed by SIGKILL"),
        (LaunchOutcome(None, interrupted=True), ("ok", "ok"), "interrupted", "interrupted"),
    ],
)
def test_failure_statuses(outcome, ends, status, words):
    ranks = []
    for r, st in enumerate(ends):
        end = None if st is None else RankEnd(r, st, 1.0, "rss", error=None if st == "ok" else f"injected {st}")
        ranks.append(RankRecords(r, None, [step(r, 0, 100, 0, 0)], end))
    res = aggregate.aggregate(SPEC, ranks, outcome)
    assert res.status == status and words in res.error
    assert res.img_per_s is None


def test_recorded_scan_throughput_is_images_over_the_slowest_ranks_measured_time():
    # expectations from the raw step records, never from the result.json aggregate() wrote
    # (tests/test_expectations.py does the same for every fixture, from the JSON lines themselves)
    for tdir in sorted((CPU_SCAN / "trials").iterdir()):
        spec = read_json(tdir / "spec.json", TrialSpec)
        ranks = aggregate.read_ranks(tdir)
        again = aggregate.aggregate(spec, ranks, read_json(tdir / "launch.json", LaunchOutcome))
        assert again.status == "ok" and again.measured_steps == spec.measured_steps
        measured = [[s for s in r.steps if not s.warmup and not s.epoch_boundary] for r in ranks]
        images = sum(s.images for steps in measured for s in steps)
        span = max(sum(s.step_ms for s in steps) for steps in measured) / 1e3
        assert again.img_per_s == pytest.approx(images / span, rel=1e-9)
        assert images == spec.knobs.batch * spec.measured_steps
        slowest = sorted(max(a.step_ms, b.step_ms) for a, b in zip(*measured))
        assert again.step_ms_p50 == pytest.approx((slowest[9] + slowest[10]) / 2, rel=1e-9)  # 20 steps


def test_a_missing_rank_file_is_an_error_not_a_crash(tmp_path):
    tdir = tmp_path / "t"
    shutil.copytree(next((CPU_SCAN / "trials").iterdir()), tdir)
    (tdir / "rank1.jsonl").unlink()
    spec = read_json(tdir / "spec.json", TrialSpec)
    res = aggregate.aggregate(spec, aggregate.read_ranks(tdir), LaunchOutcome(0))
    assert res.status == "error" and "rank 1" in res.error


def test_a_truncated_last_line_is_skipped(tmp_path):
    tdir = tmp_path / "t"
    shutil.copytree(next((CPU_SCAN / "trials").iterdir()), tdir)
    lines = (tdir / "rank0.jsonl").read_text().splitlines()
    (tdir / "rank0.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:30]]) + "\n")
    ranks = aggregate.read_ranks(tdir)
    assert ranks[0].end is None and len(ranks[0].steps) == len(json.loads("[" + ",".join(lines[1:-1]) + "]"))


def test_a_rank_sigkilled_while_ram_ran_out_is_oom():
    from yoloprof.records import CpuSample

    ranks = [
        RankRecords(0, None, [step(0, 0, 100, 0, 0)], RankEnd(0, "ok", 1.0, "rss")),
        RankRecords(1, None, [step(1, 0, 100, 0, 0)], None),
    ]
    outcome = LaunchOutcome(1, rank_exitcodes={"1": -9})
    cpu = lambda free: CpuSample(0.0, [100.0], 0, 0.0, 0.0, 0.0, 0.0, free)  # noqa: E731
    res = aggregate.aggregate(SPEC, ranks, outcome, (None, [], [cpu(20000.0), cpu(300.0)], []))
    assert res.status == "oom" and "free RAM fell from 20000 to 300 MiB" in res.error
    res = aggregate.aggregate(SPEC, ranks, outcome, (None, [], [cpu(20000.0), cpu(15000.0)], []))
    assert res.status == "error" and "killed by SIGKILL" in res.error


def test_hang_watchdog_limits_follow_the_trials_own_speed(tmp_path):
    import json as _json

    from yoloprof.scan.launch import HangPolicy, TrialWatch

    watch = TrialWatch(tmp_path, 2)
    policy = HangPolicy(startup_s=900, stall_factor=20, min_stall_s=120)
    assert not watch.poll() and watch.stall_limit_s(policy) == 900  # no step yet: the start-up allowance
    with open(tmp_path / "rank0.jsonl", "w") as f:
        for ms in (9000.0, 10000.0, 11000.0):
            f.write(_json.dumps({"kind": "step", "step_ms": ms}) + "\n")
        f.write('{"kind": "step", "step_ms": 1')  # a line being written is not read yet
    assert watch.poll() and watch.steps == [3, 0]
    assert watch.stall_limit_s(policy) == pytest.approx(200.0)  # 20 x the median step of 10 s
    fast = TrialWatch(tmp_path / "none", 1)
    fast.step_ms = [50.0]
    assert fast.stall_limit_s(policy) == 120.0  # never below the floor


def boundary_step(rank, i, step_ms, epoch_end_ms):
    s = step(rank, i, step_ms, 5, 5)
    s.epoch_boundary, s.epoch_end_ms = True, epoch_end_ms
    return s


def test_epoch_boundary_steps_are_left_out_of_the_steady_state_and_costed_apart():
    # 3 batches per epoch: steps 3 and 6 start an epoch and carry 200 ms (rank 0) / 180 ms (rank 1) of epoch end
    def rank(r, end_ms):
        return [
            boundary_step(r, i, 100 + end_ms, end_ms) if i in (3, 6) else step(r, i, 100, 5, 5) for i in range(1, 8)
        ]

    res = aggregate.aggregate(SPEC, ranks_with(rank(0, 200), rank(1, 180)), LaunchOutcome(0))
    assert res.measured_steps == 5 and res.epoch_boundary_steps == 2
    assert res.step_ms_p90 == pytest.approx(100)  # with the boundary steps in, p90 would be 300 ms
    assert res.img_per_s == pytest.approx(5 * 8 / 0.5)
    assert res.epoch_end_ms_p50 == pytest.approx(200)  # the slowest rank's end-of-epoch work
    assert res.epoch_boundary_ms_p50 == pytest.approx(200)  # 300 ms boundary step over the 100 ms steady step
    assert res.notes == []


def test_every_step_a_boundary_keeps_the_figures_and_says_why():
    r0 = [boundary_step(0, i, 150, 50) for i in range(1, 4)]
    r1 = [boundary_step(1, i, 150, 50) for i in range(1, 4)]
    ranks = ranks_with(r0, r1)
    ranks[0].info = None
    res = aggregate.aggregate(SPEC, ranks, LaunchOutcome(0))
    assert res.status == "ok" and res.measured_steps == 3 and res.step_ms_p50 == pytest.approx(150)
    assert res.epoch_boundary_ms_p50 is None  # no steady step to compare with
    assert any("Every measured step started an epoch" in n for n in res.notes)


def test_colour_codes_never_reach_the_result():
    ends = [
        RankEnd(0, "error", None, "rss", error="\x1b[34m\x1b[1mtrain: \x1b[0mNo labels found in /d/labels.cache"),
        RankEnd(1, "ok", None, "rss"),
    ]
    ranks = [RankRecords(0, None, [], ends[0]), RankRecords(1, None, [], ends[1])]
    res = aggregate.aggregate(SPEC, ranks, LaunchOutcome(1))
    assert res.error == "train: No labels found in /d/labels.cache"


def test_colour_codes_are_stripped_from_every_output(cpu_scan_copy):
    from yoloprof.reports.terminal import ranked_table
    from rich.console import Console

    from yoloprof import pipeline
    from yoloprof.text import error_line

    assert error_line(RuntimeError("\x1b[31mboom\x1b[0m\nsecond line")) == "RuntimeError: boom"
    rank1 = cpu_scan_copy / "trials" / "t02-b8-w2-fp32" / "rank1.jsonl"
    lines = rank1.read_text().splitlines()
    end = json.loads(lines[-1])
    end.update(status="error", error="\x1b[34m\x1b[1mtrain: \x1b[0mNo labels found in /d/labels.cache")
    rank1.write_text("\n".join(lines[:-1] + [json.dumps(end)]) + "\n")
    out = pipeline.write_all(cpu_scan_copy)
    bad = next(r for r in out.results if r.trial_id == "t02-b8-w2-fp32")
    assert bad.status == "error" and bad.error == "train: No labels found in /d/labels.cache"
    console = Console(record=True, width=200, color_system=None)
    console.print(ranked_table(out.results, out.ranking))
    for text in (
        (cpu_scan_copy / "results.csv").read_text(),
        (cpu_scan_copy / "report.html").read_text(),
        console.export_text(),
    ):
        assert "\x1b" not in text and "\\u001b" not in text
    assert "No labels found" in (cpu_scan_copy / "results.csv").read_text()


def test_rank_skew_is_paired_step_by_step_so_common_noise_is_no_straggler():
    # Both ranks slowed together by a neighbour in most slow steps; rank 0 alone slower once. The medians
    # of each rank (90 vs 45 ms) would call rank 0 a 100% straggler; step by step it is not.
    r0 = [step(0, i, ms, 0, 0) for i, ms in enumerate([40, 40, 90, 90, 90, 42, 95])]
    r1 = [step(1, i, ms, 0, 0) for i, ms in enumerate([41, 41, 88, 45, 92, 43, 93])]
    res = aggregate.aggregate(SPEC, ranks_with(r0, r1), LaunchOutcome(0))
    # step by step: rank 0 - rank 1 has median -1 ms, rank 1 - rank 0 median +1 ms (over rank 0's 90 ms)
    assert res.rank_skew == pytest.approx(1 / 90) and (res.slow_rank, res.fast_rank) == (1, 0)
    from yoloprof.analysis import ranking

    assert ranking.classify(res)[0] != "straggler"
    # a rank that is slower in most steps is one, and is named, though its median is not the higher one
    slow = [step(1, i, ms + 30, 0, 0) for i, ms in enumerate([41, 41, 88, 45, 92, 43, 93])]
    res = aggregate.aggregate(SPEC, ranks_with(r0, slow), LaunchOutcome(0))
    assert (res.slow_rank, res.fast_rank) == (1, 0) and res.rank_skew == pytest.approx(31 / 90)
    bottleneck, evidence = ranking.classify(res)
    assert bottleneck == "straggler" and evidence.startswith("rank 1 works"), evidence


def test_interval_of_the_global_rate_and_of_the_shares_by_batch_means():
    """12 steps -> 3 blocks of 4. Per block, the images of both ranks over the slowest rank's steps: 32 images per
    400, 800 and 400 ms -> 80, 40, 80 img/s; the interval is carried onto img_per_s (images over the slowest
    rank's total time)."""
    import math
    import statistics
    from dataclasses import replace

    times = [100] * 4 + [200] * 4 + [100] * 4
    r0 = [step(0, i, ms, 10, 20) for i, ms in enumerate(times)]
    r1 = [step(1, i, ms, 30 if i < 4 else 10, 5) for i, ms in enumerate(times)]
    spec = replace(SPEC, trial_id="t2", repeat_of="t1", measured_steps=12)
    res = aggregate.aggregate(spec, ranks_with(r0, r1), LaunchOutcome(0))
    assert res.repeat_of == "t1" and res.img_per_s == pytest.approx(96 / 1.6)
    half = 4.303 * statistics.stdev([80.0, 40.0, 80.0]) / math.sqrt(3)  # t975(2)
    assert res.img_per_s_ci_low == pytest.approx(max(60 - half, 0.0)) and res.img_per_s_ci_high == pytest.approx(
        60 + half
    )
    assert res.img_per_s_ci_method == "batch means over 3 blocks of 4 steps"
    # data wait: rank 0 10 ms of every step; rank 1 30 ms in the first block, 10 after; median rank's bounds
    s0 = [0.1, 10 / 200, 0.1]
    s1 = [0.3, 10 / 200, 0.1]
    bounds = lambda s: (sum(s) / 3, 4.303 * statistics.stdev(s) / math.sqrt(3))  # noqa: E731
    lows, highs = [], []
    for s, est in ((s0, 120 / 1600), (s1, 200 / 1600)):
        _, h = bounds(s)
        lows.append(max(est - h, 0.0))
        highs.append(min(est + h, 1.0))
    assert res.data_wait_frac_ci == [pytest.approx(sum(lows) / 2), pytest.approx(sum(highs) / 2)]
    assert res.comm_frac_ci is not None and res.comm_frac_ci[0] <= res.comm_frac <= res.comm_frac_ci[1]


def test_too_few_steps_leave_the_interval_empty_and_say_why():
    r0 = [step(0, i, 100, 10, 20) for i in range(1, 5)]
    r1 = [step(1, i, 100, 10, 20) for i in range(1, 5)]
    res = aggregate.aggregate(SPEC, ranks_with(r0, r1), LaunchOutcome(0))
    assert res.img_per_s_ci_low is None and res.img_per_s_ci_high is None and res.data_wait_frac_ci is None
    assert res.img_per_s_ci_method == "no interval: 4 steps are fewer than 3 blocks of 4" and res.repeat_of is None


def test_recorded_scan_intervals():
    """t03 of the recorded CPU scan: 20 steady steps -> 5 blocks of 4, +-7.9% at 95%."""
    tdir = CPU_SCAN / "trials" / "t03-b16-w0-fp32"
    spec = read_json(tdir / "spec.json", TrialSpec)
    res = aggregate.aggregate(spec, aggregate.read_ranks(tdir), read_json(tdir / "launch.json", LaunchOutcome))
    assert res.img_per_s_ci_method == "batch means over 5 blocks of 4 steps"
    assert (res.img_per_s_ci_low, res.img_per_s_ci_high) == (
        pytest.approx(38.600, abs=1e-3),
        pytest.approx(45.214, abs=1e-3),
    )
    assert res.data_wait_frac_ci == [pytest.approx(0.1215, abs=1e-4), pytest.approx(0.1336, abs=1e-4)]
    assert res.comm_frac_ci[0] < res.comm_frac < res.comm_frac_ci[1] < 0.13
