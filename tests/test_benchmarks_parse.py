"""The pure helpers of benchmarks/overhead.py, fidelity.py and optimizer_cost.py, on hand-made numbers."""

from __future__ import annotations

import math
import statistics

import pytest

from conftest import load_benchmark as _load


overhead = _load("overhead")
fidelity = _load("fidelity")
optimizer_cost = _load("optimizer_cost")


# -- overhead ------------------------------------------------------------------------------------
def test_schedule_mirrors_pairs():
    assert overhead.schedule(8) == [False, True, True, False, False, True, True, False]


def test_pairs_are_adjacent_on_off_and_off_off_neighbours():
    states = overhead.schedule(8)
    values = [100, 110, 99, 90, 92, 101, 100, 100]
    on_off, off_off = overhead.pair_logs(states, values)
    assert on_off == pytest.approx([math.log(1.1), math.log(99 / 90), math.log(101 / 92), math.log(1.0)])
    assert off_off == pytest.approx([math.log(92 / 90)])  # windows 3 and 4; 7 has no later neighbour
    nan = float("nan")
    on_off, _ = overhead.pair_logs(states, [100, nan, 99, 90, 92, 101, 100, 100])
    assert len(on_off) == 3  # the pair with a missing window drops


def test_ratio_interval_from_log_ratios():
    ci = overhead.log_ratio_ci([math.log(1.01), math.log(1.03)])
    assert ci.ratio == pytest.approx(math.sqrt(1.01 * 1.03))
    sd = (math.log(1.03) - math.log(1.01)) / math.sqrt(2)
    assert ci.sd == pytest.approx(sd)
    half = 12.706 * sd / math.sqrt(2)
    assert ci.low == pytest.approx(ci.ratio * math.exp(-half))
    assert ci.high == pytest.approx(ci.ratio * math.exp(half))
    assert overhead.log_ratio_ci([0.1]) is None


def test_verdicts():
    ci = overhead.RatioCI
    assert overhead.verdict(ci(1.005, 0.995, 1.015, 20, 0.01)) == "overhead +0.50% (95% -0.50% to +1.50%): under 2%"
    assert overhead.verdict(ci(1.05, 1.03, 1.07, 20, 0.01)).endswith("OVER 2%")
    assert overhead.verdict(ci(1.02, 0.98, 1.07, 20, 0.09)).endswith("cannot be told from noise of +-4.4%")
    assert overhead.verdict(ci(1.02, 1.01, 1.03, 20, 0.01)).endswith("not shown under 2% (the interval straddles it)")


# -- fidelity ------------------------------------------------------------------------------------
RESULTS = """epoch,time,train/box_loss,train/cls_loss,metrics/mAP50(B),lr/pg0
1,14.5,3.1,4.2,0,0.01
2,26.25,3.0,4.0,0,0.0098
3,38.0,2.9,3.9,0.001,0.0096
4,50.5,2.8,3.8,0.002,0.0094
"""


def test_epoch_times_are_differences_of_the_cumulative_time():
    assert fidelity.epoch_times(RESULTS) == [(1, 14.5), (2, 11.75), (3, 11.75), (4, 12.5)]
    padded = RESULTS.replace("epoch,time", "   epoch,    time")  # older releases padded the header
    assert fidelity.epoch_times(padded)[1] == (2, 11.75)
    assert fidelity.epoch_times("") == []
    with pytest.raises(ValueError, match="no epoch/time"):
        fidelity.epoch_times("a,b\n1,2\n")


SCAN_CSV = """trial_id,status,world_size,img_per_s,img_per_s_ci_low,img_per_s_ci_high,img_per_s_config,\
img_per_s_config_ci_low,img_per_s_config_ci_high,epoch_s,epoch_s_low,epoch_s_high,run_h
t02-b16-w0-fp32,ok,1,60.5,58,63,,,,9.5,9,10.25,0.3
t01-b8-w0-fp32,ok,1,50,48,52,51,49,53,11,10,12,
"""


def test_prediction_read_by_column_name():
    p = fidelity.prediction(SCAN_CSV, "t02-b16-w0-fp32")
    assert (p["epoch_s"], p["epoch_s_low"], p["epoch_s_high"], p["run_h"]) == (9.5, 9.0, 10.25, 0.3)
    assert (p["img_per_s"], p["img_per_s_config"], p["world_size"]) == (60.5, None, 1.0)
    assert fidelity.prediction(SCAN_CSV, "t01-b8-w0-fp32")["run_h"] is None
    with pytest.raises(ValueError, match="not in the scan"):
        fidelity.prediction(SCAN_CSV, "t09")
    old = "trial_id,status,img_per_s\nt01,ok,50\n"
    with pytest.raises(ValueError, match="no epoch_s, epoch_s_low, epoch_s_high, run_h column"):
        fidelity.prediction(old, "t01")


def test_steady_steps_skip_each_epochs_first_steps_and_a_partial_batch():
    log = [
        {"epoch": 0, "t": 0.0, "batch": 4, "images": 10, "batches": 3},
        {"epoch": 0, "t": 1.0},
        {"epoch": 0, "t": 1.5},
        {"epoch": 0, "t": 2.25},  # the last: 2 images, dropped
        {"epoch": 1, "t": 3.0, "batch": 4, "images": 10, "batches": 3},
        {"epoch": 1, "t": 4.0},
        {"epoch": 1, "t": 4.5},
        {"epoch": 1, "t": 5.0},
    ]
    assert fidelity.steady_steps(log, 1) == ([4, 4], [500.0, 500.0])
    assert fidelity.steady_steps(log, 0) == ([4, 4, 4, 4], [1000.0, 500.0, 1000.0, 500.0])
    log[0]["images"] = log[4]["images"] = 12  # full last batches are kept
    assert fidelity.steady_steps(log, 2) == ([4, 4], [750.0, 500.0])


def test_ratio_and_judgement():
    r = fidelity.ratio(10.5, 10.0, 11.0, 10.0, 9.7, 10.3)
    half = math.hypot(0.5 / 10.5, 0.3 / 10.0)
    assert (r.ratio, r.low, r.high) == pytest.approx((1.05, 1.05 * math.exp(-half), 1.05 * math.exp(half)))
    one = fidelity.combine([r])  # one round is its own figure
    assert (one.ratio, one.low, one.high) == pytest.approx((r.ratio, r.low, r.high))
    assert fidelity.judge(fidelity.Ratio(1.03, 1.01, 1.04), 0.05) == "PASS (target within 5%)"
    assert fidelity.judge(fidelity.Ratio(1.03, 0.9, 1.1), 0.05).endswith("the interval reaches past +-5%")
    assert fidelity.judge(fidelity.Ratio(0.88, 0.85, 0.91), 0.10) == "MISS (target within 10%)"
    m, lo, hi = fidelity.mean_ci([10.0, 12.0])
    assert (m, lo, hi) == pytest.approx((11.0, 11.0 - 12.706, 11.0 + 12.706))


def test_best_env_exports():
    text = "# why\nexport OMP_NUM_THREADS=2\nexport NCCL_ALGO='Ring'\n# note: x\n"
    assert fidelity.env_file(text) == {"OMP_NUM_THREADS": "2", "NCCL_ALGO": "Ring"}


def test_time_in_the_step_loop_per_epoch():
    log = [
        {"epoch": 0, "t": 10.0, "batch": 4, "images": 8, "batches": 2},
        {"epoch": 0, "t": 11.0},
        {"epoch": 0, "t": 12.5},
        {"epoch": 1, "t": 14.0, "batch": 4, "images": 8, "batches": 2},
        {"epoch": 1, "t": 15.0},
        {"epoch": 1, "t": 16.0},
        {"epoch": 2, "t": 18.0, "batch": 4, "images": 8, "batches": 2},  # stopped before its first batch ended
    ]
    assert fidelity.in_steps(log) == {0: 2.5, 1: 2.0}


def test_median_interval_from_order_statistics():
    logs = [math.log(1 + i / 100) for i in range(20)]  # 1.00 .. 1.19
    med, lo, hi = overhead.median_ci(list(reversed(logs)))
    assert med == pytest.approx(math.sqrt(1.09 * 1.10))
    assert (lo, hi) == pytest.approx((1.05, 1.14))  # k = 6: 2 P(Bin(20, 1/2) <= 5) = 4.1%
    assert overhead.median_ci(logs[:6])[1:] == pytest.approx((1.0, 1.05))  # k = 1: the extremes
    assert overhead.median_ci(logs[:5]) is None


def test_rounds_combine():
    e = math.exp
    two = fidelity.combine(
        [fidelity.Ratio(1.1, 1.1 * e(-0.05), 1.1 * e(0.05)), fidelity.Ratio(0.9, 0.9 * e(-0.05), 0.9 * e(0.05))]
    )
    half = math.sqrt(2 * 0.05**2) / 2  # each 5%: together 3.5%
    assert (two.ratio, two.low, two.high) == pytest.approx(
        (math.sqrt(0.99), math.sqrt(0.99) * math.exp(-half), math.sqrt(0.99) * math.exp(half))
    )
    spread = fidelity.combine([fidelity.Ratio(x, x * 0.99, x * 1.01) for x in (0.8, 1.0, 1.25)])
    logs = [math.log(0.8), 0.0, math.log(1.25)]
    half = 4.303 * statistics.stdev(logs) / math.sqrt(3)  # the rounds disagree more than their intervals say
    assert (spread.low, spread.high) == pytest.approx((math.exp(-half), math.exp(half)))


# -- optimizer_cost ------------------------------------------------------------------------------
def test_block_means_stay_within_a_run_and_pool_over_runs():
    runs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 10, 10, 10]]
    assert optimizer_cost.block_means(runs) == [2.5, 6.5, 10.0]  # the 9th value fills no block of 4
    m = optimizer_cost.mean_of(runs)
    assert m.mean == pytest.approx(85 / 13) and m.n == 13 and m.df == 2
    assert m.se == pytest.approx(statistics.stdev([2.5, 6.5, 10.0]) / math.sqrt(3))
    assert optimizer_cost.mean_of([[1.0, 2.0]]).text() == "1.5 (no interval)"  # too few values for two blocks
    assert optimizer_cost.mean_of([[]]) is None


def test_ratio_of_two_means_and_the_cost_per_training_step():
    a, b = optimizer_cost.Mean(30.0, 1.5, 9, 40), optimizer_cost.Mean(10.0, 0.2, 9, 40)
    r, lo, hi = optimizer_cost.ratio(a, b)
    half = 2.262 * math.sqrt(0.05**2 + 0.02**2)
    assert (r, lo, hi) == pytest.approx((3.0, 3.0 * (1 - half), 3.0 * (1 + half)))
    assert optimizer_cost.per_training_step(80.0, batch=8) == 10.0  # nbs 64 at batch 8: one step in 8
    assert optimizer_cost.per_training_step(80.0, batch=128) == 80.0  # no accumulation past nbs


# -- fidelity, the run level ---------------------------------------------------------------------------
fidelity_run = _load("fidelity_run")


def test_a_runs_parts_come_from_its_callback_log_and_ignore_event_lines_elsewhere():
    log = [
        {"event": "pretrain", "epoch": 0, "t": 104.0},
        {"epoch": 0, "t": 110.0, "batch": 4, "images": 8, "batches": 2},
        {"epoch": 0, "t": 111.0},
        {"epoch": 0, "t": 112.0},
        {"event": "fit_end", "epoch": 0, "t": 113.5},
        {"epoch": 1, "t": 114.0, "batch": 4, "images": 8, "batches": 2},
        {"epoch": 1, "t": 115.0},
        {"epoch": 1, "t": 116.5},
        {"event": "fit_end", "epoch": 1, "t": 117.0},
        {"event": "fit_end", "epoch": 1, "t": 119.0},  # final_eval's own call of the callback
        {"event": "train_end", "epoch": 1, "t": 120.0},
    ]
    parts = fidelity_run.run_parts(log, launched=100.0, exited=121.0)
    assert (parts.wall_s, parts.startup_s, parts.setup_s, parts.final_s) == (21.0, 4.0, 6.0, 4.0)
    assert parts.epoch_s == {0: 4.0, 1: 3.0} and parts.mean([0, 1]) == 3.5 and parts.mean([5]) is None
    # the epoch level's parsers read the same log: event lines are not steps
    assert fidelity.steady_steps(log, 0) == ([4, 4, 4, 4], [1000.0, 1000.0, 1000.0, 1500.0])
    assert fidelity.in_steps(log) == {0: 2.0, 1: 2.5}


def test_a_runs_epochs_by_kind_as_ultralytics_counts_them():
    # 15 epochs of 32 steps, defaults: warm-up over the first 96 iterations (ni <= 96 reaches epoch 3's first step),
    # the last 10 without mosaic
    assert fidelity_run.phases(15, 32, 3.0, 10) == {
        "warm-up": [0, 1, 2, 3],
        "mosaic": [4],
        "close_mosaic": list(range(5, 15)),
    }
    assert fidelity_run.phases(6, 32, 0.0, 0) == {"warm-up": [], "mosaic": [0, 1, 2, 3, 4, 5], "close_mosaic": []}
    assert fidelity_run.phases(2, 10, 3.0, 0)["warm-up"] == [0, 1]  # min(3, epochs - 1) = 1 epoch: ni <= 10


def test_a_runs_table_names_each_part_and_says_na_where_nothing_is_predicted():
    parts = fidelity_run.RunParts(
        wall_s=30.0, startup_s=3.0, setup_s=2.0, epoch_s={0: 5.0, 1: 4.0, 2: 3.0}, final_s=2.5
    )
    lines = fidelity_run.table(
        parts,
        {"epoch_s": 4.2, "no_mosaic_epoch_s": 3.1, "setup_s": 1.9, "val_s": 0.5},
        {"warm-up": [0], "mosaic": [1], "close_mosaic": [2]},
    )
    assert lines[0] == "    start-up (launch to trainer): plain 3.0 s, predicted n/a"
    assert "close_mosaic epochs 3-3: plain 3.0 s (mean 3.0 s), predicted 3.1 s each" in lines[4]
    assert lines[-1].endswith("plain 2.5 s, predicted validation 0.5 s")
    closed = fidelity_run.table(parts, {"epoch_s": 4.2}, {"close_mosaic": [2]})  # priced at the mosaic rate
    assert "predicted 4.2 s each (the mosaic rate)" in closed[2]


# -- drift -------------------------------------------------------------------------------------------------
drift = _load("drift")


def test_drift_keeps_only_steps_inside_a_window():
    log = [{"epoch": 0, "t": 0.0, "batch": 4, "images": 8, "batches": 9}] + [
        {"epoch": 0, "t": t} for t in (1.0, 2.0, 3.5, 10.0, 10.5, 11.0)
    ]
    # window 1 holds the steps 1->2 and 2->3.5; 3.5->10 straddles a pause; window 2 holds 10->10.5 and 10.5->11
    assert drift.window_means(log, [(0.5, 4.0), (9.0, 11.5), (20.0, 21.0)])[:2] == [1250.0, 500.0]
    assert math.isnan(drift.window_means(log, [(20.0, 21.0)])[0])


def test_drift_tells_the_machines_spread_from_the_processes():
    machine = [[950.0, 955.0, 948.0], [830.0, 828.0, 833.0], [880.0, 884.0, 879.0]]  # every process slow together
    rot, proc = drift.spreads(machine)
    assert rot > 0.05 and proc < 0.005
    own = [[800.0, 900.0], [805.0, 905.0], [798.0, 897.0]]  # each process its own speed
    rot, proc = drift.spreads(own)
    assert proc > 0.07 and rot < 0.005


def test_drift_reads_a_trial_ranks_own_steps_and_pairs_them_with_plain_by_rotation():
    """A trial's steps come from its rank's records (start = end - step_ms): warm-up and epoch-boundary steps
    left out; the ratio is taken per rotation, so a machine that slows for a whole rotation cancels out."""
    log = [
        {"kind": "info"},
        {"kind": "step", "warmup": True, "t_end_s": 101.0, "step_ms": 1000.0},
        {"kind": "step", "t_end_s": 102.0, "step_ms": 1000.0},
        {"kind": "step", "t_end_s": 103.5, "step_ms": 1500.0, "epoch_boundary": True},
        {"kind": "step", "t_end_s": 104.0, "step_ms": 500.0},
        {"kind": "step", "t_end_s": 110.0, "step_ms": 800.0},
    ]
    assert drift.trial_window_means(log, [(100.0, 105.0), (109.0, 110.0)]) == pytest.approx([750.0, 800.0])
    kinds = ["plain", "trial", "plain", "trial"]
    table = [[1000.0, 1030.0, 1000.0, 1030.0], [1200.0, 1236.0, 1200.0, 1236.0], [900.0, 927.0, 900.0, 927.0]]
    m, lo, hi, n = drift.paired(table, kinds)
    assert (round(m, 6), n) == (1.03, 3) and lo == pytest.approx(1.03) and hi == pytest.approx(1.03)
    assert drift.paired(table, ["plain"] * 4) is None


def test_drift_leaves_a_plain_step_that_holds_an_epoch_end_out():
    log = [{"t": 0.0}, {"t": 1.0}, {"epoch": 1, "t": 1.1, "batches": 32}, {"t": 3.0}, {"t": 4.0}]
    assert drift.window_means(log, [(0.0, 5.0)]) == [1000.0]  # 0-1 and 3-4; 1-3 held the epoch's end


def test_drift_pairs_any_two_kinds_it_ran():
    table = [[1000.0, 900.0], [1100.0, 990.0]]
    m, lo, hi, n = drift.paired(table, ["plain", "closed"], "closed", "plain")
    assert (round(m, 6), n) == (0.9, 2) and lo == pytest.approx(0.9)


# -- fidelity_side -------------------------------------------------------------------------------
side = _load("fidelity_side")


def test_side_takes_a_processs_stopped_seconds_off_its_own_clock():
    stops = [(10.0, 14.0), (20.0, 21.0)]
    assert side.stopped_within(9.0, 12.0, stops) == pytest.approx(2.0)
    assert side.stopped_within(0.0, 30.0, stops) == pytest.approx(5.0)
    assert [side.own_clock(t, stops) for t in (5.0, 12.0, 15.0, 25.0)] == pytest.approx([5.0, 10.0, 11.0, 20.0])
    log = [{"event": "pretrain", "t": 2.0}, {"epoch": 0, "t": 15.0, "batches": 2}, {"epoch": 0, "t": 22.0}]
    moved, launched, exited = side.unstop_log(log, 1.0, 30.0, stops)
    assert [e["t"] for e in moved] == pytest.approx([2.0, 11.0, 17.0]) and (launched, exited) == (1.0, 25.0)
    assert moved[0]["event"] == "pretrain" and log[1]["t"] == 15.0  # the input is left as it was


def test_side_takes_the_stop_out_of_the_step_it_fell_in_and_its_data_wait():
    """A step spans [t_end_s - step_ms, t_end_s]; a stop that fell inside it (just after the previous step's
    end, in its data wait) is taken out of both; a step the stop missed is left alone."""
    rows = [
        {"kind": "info"},
        {"kind": "step", "step": 0, "t_end_s": 100.0, "step_ms": 1000.0, "data_wait_ms": 100.0},
        {
            "kind": "step",
            "step": 1,
            "t_end_s": 104.0,
            "step_ms": 4000.0,
            "data_wait_ms": 3100.0,
            "host_data_wait_ms": 3100.0,
        },
        {"kind": "step", "step": 2, "t_end_s": 105.0, "step_ms": 1000.0, "data_wait_ms": 100.0},
    ]
    out, fixed = side.unstop_steps(rows, [(100.01, 103.01)])
    assert fixed == 1 and out[1] == rows[1] and out[3] == rows[3]
    assert (out[2]["step_ms"], out[2]["data_wait_ms"], out[2]["host_data_wait_ms"]) == pytest.approx((1000, 100, 100))
    assert rows[2]["step_ms"] == 4000.0


def test_side_stops_a_scan_only_after_a_step_that_is_not_its_last():
    step = '{"kind": "step", "step": %d}'
    assert side.safe_step(step % 3, 74) and not side.safe_step(step % 74, 74)
    assert not side.safe_step('{"kind": "end"}', 74) and not side.safe_step('{"kind": "st', 74)
    assert side.safe_step(step % 80, None)
