"""A watched run's records (yoloprof train) -> epochs, drifts, verdict and run.html, on hand-made records with
round numbers. The real 2-rank run is in tests/test_run_watch.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from yoloprof.analysis import run_drift
from yoloprof.records.run import RunEpoch, RunStart
from yoloprof.reports import html


def start(rank=0, **kw) -> RunStart:
    return RunStart(rank, 2, "cpu", 1, 0.0, "host", epochs=6, close_mosaic=0, **kw)


def epoch(rank, e, *, step=100.0, wait=5.0, comm=5.0, busy=None, mem=1000.0, epoch_s=10.0, train_s=8.0):
    busy = step - wait - comm if busy is None else busy
    return RunEpoch(
        rank,
        e,
        10,
        40,
        train_s,
        step,
        step,
        step * 1.1,
        busy,
        wait,
        comm,
        40.0,
        40.0,
        1.0,
        900.0,
        1.5,
        epoch_s,
        mem,
        0.0,
    )


def write(folder, starts, rows, torn: bool = False):
    d = folder / "yoloprof"
    d.mkdir(parents=True)
    for r in (0, 1):
        lines = [json.dumps(dataclasses.asdict(s)) for s in starts if s.rank == r]
        lines += [json.dumps(dataclasses.asdict(x)) for x in rows if x.rank == r]
        (d / f"rank{r}.jsonl").write_text("\n".join(lines) + "\n" + ('{"rank": 0, "epoch": 9, "st' if torn else ""))
    return folder


def steady(changes=None, n=6):
    """Two ranks, n epochs of round figures; changes: (rank, epoch) -> epoch() arguments from that epoch on."""
    changes = changes or {}
    rows = []
    for e in range(n):
        for r in (0, 1):
            kw = {}
            for (rank, since), args in changes.items():
                if rank in (r, None) and e >= since:
                    kw.update(args)
            rows.append(epoch(r, e, **kw))
    return rows


def test_a_steady_run_has_no_drift_and_holds_its_prediction(tmp_path):
    run = write(
        tmp_path, [start(predicted_epoch_s=10.0, predicted_low_s=9.0, predicted_high_s=11.0), start(1)], steady()
    )
    s = run_drift.summarize(run)
    assert s.drifts == [] and s.measured_epoch_s == 10.0
    assert s.verdict == "the prediction held: a steady epoch took 10.0 s (median of 5), predicted 10.0 s (9.0-11.0)"
    assert [v.bound for v in s.epochs] == ["compute"] * 6 and s.epochs[1].img_per_s == pytest.approx(80 / 8.0)


def test_a_data_wait_rise_is_called_at_the_epoch_it_began_and_explains_the_miss(tmp_path):
    rows = steady({(None, 3): {"wait": 30.0, "step": 125.0, "epoch_s": 12.5}})
    run = write(tmp_path, [start(predicted_epoch_s=10.0, predicted_low_s=9.0, predicted_high_s=11.0), start(1)], rows)
    s = run_drift.summarize(run)
    kinds = [(d.kind, d.epoch, d.rank) for d in s.drifts]
    assert ("data_wait", 3, 0) in kinds and ("data_wait", 3, 1) in kinds  # 0-based epoch 3: "from epoch 4"
    assert ("outside_band", 3, None) in kinds
    d = next(d for d in s.drifts if d.kind == "data_wait")
    assert d.evidence.startswith("rank 0's data wait rose from 5% to 24% of its step (30 ms a step) from epoch 4")
    assert s.measured_epoch_s == 12.5  # epochs 1..5: 10, 10, 12.5, 12.5, 12.5
    assert s.verdict.startswith("the prediction missed by +25%: a steady epoch took 12.5 s (median of 5)")
    assert "because rank 0's data wait rose" in s.verdict and s.epochs[3].bound == "input"


def test_a_one_epoch_blip_is_not_a_drift_but_a_change_in_the_last_epoch_is(tmp_path):
    rows = steady()
    rows = [epoch(x.rank, x.epoch, wait=40.0) if x.epoch == 2 else x for x in rows]  # epoch 2 only
    assert run_drift.drifts(run_drift.read(write(tmp_path / "a", [start()], rows))[1]) == []
    last = [epoch(x.rank, x.epoch, wait=40.0) if x.epoch == 5 else x for x in steady()]
    found = run_drift.drifts(run_drift.read(write(tmp_path / "b", [start()], last))[1])
    assert [(d.kind, d.epoch) for d in found] == [("data_wait", 5), ("data_wait", 5)]


def test_a_straggler_appearing_and_memory_creeping_are_named_with_their_rank_and_epoch(tmp_path):
    rows = steady({(1, 2): {"busy": 130.0, "comm": 5.0}, (0, 4): {"mem": 1200.0}})
    found = run_drift.drifts(run_drift.read(write(tmp_path, [start()], rows))[1])
    assert [(d.kind, d.epoch, d.rank) for d in found] == [("straggler", 2, 1), ("memory", 4, 0)]
    assert "rank 1 became a straggler in epoch 3: its own work 130 ms a step against the other ranks' 90 ms (+44%" in (
        found[0].evidence
    )
    assert "grew from 1000 to 1200 MiB (+20%) from epoch 5" in found[1].evidence


def test_a_straggler_from_the_start_is_no_drift(tmp_path):
    rows = steady({(1, 0): {"busy": 130.0}})
    assert run_drift.drifts(run_drift.read(write(tmp_path, [start()], rows))[1]) == []


def test_every_rank_slower_with_no_cause_is_called_slower(tmp_path):
    rows = steady({(None, 3): {"train_s": 10.0, "epoch_s": 12.0}})
    found = run_drift.drifts(run_drift.read(write(tmp_path, [start()], rows))[1])
    assert [(d.kind, d.epoch) for d in found] == [("slower", 3)]
    assert found[0].evidence.startswith("epoch 4's steps took 10.0 s against 8.0 s before (+25%)")


def test_a_killed_run_keeps_its_finished_epochs_and_the_no_mosaic_epochs_have_their_own_prediction(tmp_path):
    rows = [x for x in steady() if not (x.rank == 1 and x.epoch == 5)]  # rank 1 died in epoch 6
    s0 = start(predicted_epoch_s=10.0, predicted_no_mosaic_epoch_s=8.0)
    s0 = dataclasses.replace(s0, close_mosaic=2)
    run = write(tmp_path, [s0, start(1)], rows, torn=True)
    s = run_drift.summarize(run)
    assert [v.epoch for v in s.epochs] == [0, 1, 2, 3, 4]  # epoch 5: not every rank finished it
    assert [v.predicted_s for v in s.epochs] == [None, 10.0, 10.0, 10.0, 8.0]  # epochs 4, 5 of 6 close mosaic
    assert "with no band to hold it against" in s.verdict


def test_the_run_page_is_built_from_the_records_alone(tmp_path):
    rows = steady({(None, 3): {"wait": 30.0, "step": 125.0, "epoch_s": 12.5}})
    run = write(tmp_path, [start(predicted_epoch_s=10.0, predicted_low_s=9.0, predicted_high_s=11.0), start(1)], rows)
    page = html.render_run(run_drift.summarize(run))
    assert "<b>epoch 4, data wait</b>: rank 0&#39;s data wait rose from 5% to 24%" in page
    assert "the prediction missed by" in page and "<svg" in page and 'src="http' not in page and "<link" not in page
    assert '<td class="l">input</td>' in page


def test_a_noisy_steady_epoch_of_another_rank_does_not_hide_a_straggler(tmp_path):
    rows = steady({(1, 3): {"busy": 200.0}})
    rows = [epoch(0, 1, busy=135.0) if (x.rank, x.epoch) == (0, 1) else x for x in rows]  # rank 0, one epoch
    found = run_drift.drifts(run_drift.read(write(tmp_path, [start()], rows))[1])
    assert [(d.kind, d.epoch, d.rank) for d in found] == [("straggler", 3, 1)]


def test_a_blip_just_before_a_change_does_not_move_the_change_earlier(tmp_path):
    # rank 1: 25% over the limit in epoch 2 (a 4-step epoch on a busy machine), slowed by 100% from epoch 3
    rows = steady({(1, 2): {"busy": 115.0}, (1, 3): {"busy": 180.0}})
    found = run_drift.drifts(run_drift.read(write(tmp_path / "a", [start()], rows))[1])
    assert [(d.kind, d.epoch, d.rank) for d in found] == [("straggler", 3, 1)]
    # a creep has no blip: 1100, 1200, 1300 MiB from epoch 2 is called where it first lasts
    rows = steady({(0, 2): {"mem": 1150.0}, (0, 3): {"mem": 1300.0}, (0, 4): {"mem": 1450.0}})
    found = run_drift.drifts(run_drift.read(write(tmp_path / "b", [start()], rows))[1])
    assert [(d.kind, d.epoch, d.rank) for d in found] == [("memory", 2, 0)]


def telemetry(folder, clocks: dict[int, float], reasons_from: int, node: int = 0):
    """node's telemetry file: 2 GPUs sampled every second through epochs 0-5 (epoch e's steps: 100 + 10 e to
    108 + 10 e); GPU 1 at clocks[e] MHz with sw_thermal from epoch reasons_from, GPU 0 steady."""
    lines = [{"kind": "header", "interval_s": 1.0, "gpus": [0, 1], "nvml_indices": [0, 1], "gpu_status": "ok"}]
    for e in range(6):
        for t in range(101 + 10 * e, 108 + 10 * e):
            for gpu in (0, 1):
                hot = gpu == 1 and e >= reasons_from
                lines.append(
                    {
                        "kind": "gpu",
                        "t_s": float(t),
                        "gpu": gpu,
                        "sm_util_pct": 90.0,
                        "sm_clock_mhz": clocks[e] if gpu == 1 else 1980.0,
                        "temp_c": 88.0 if hot else 70.0,
                        "power_w": 650.0,
                        "throttle_reasons": ["sw_thermal"] if hot else [],
                    }
                )
            lines.append(
                {
                    "kind": "cpu",
                    "t_s": float(t),
                    "cpu_pct_per_core": [50.0, 70.0],
                    "loader_workers": 2,
                    "loader_cpu_pct": 80.0,
                    "loader_rss_mib": 500.0,
                    "ranks_cpu_pct": 100.0,
                    "ranks_rss_mib": 2000.0,
                    "mem_available_mib": 9000.0,
                }
            )
    (folder / "yoloprof" / f"telemetry-node{node}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def timed(rows):
    """Epoch e's steps from 100 + 10 e for 8 s; its line written 1.5 s later (validation and saving)."""
    return [dataclasses.replace(x, t_end_s=100.0 + 10 * x.epoch + 8.0 + 1.5) for x in rows]


def test_gpu_clocks_falling_with_a_thermal_slowdown_are_a_drift_of_that_gpus_rank(tmp_path):
    clocks = {0: 1980.0, 1: 1980.0, 2: 1970.0, 3: 1985.0, 4: 1600.0, 5: 1590.0}
    run = write(tmp_path, [start(), start(1)], timed(steady({(1, 4): {"busy": 120.0}})))
    telemetry(run, clocks, reasons_from=4)
    s = run_drift.summarize(run)
    clock = [d for d in s.drifts if d.kind == "clocks"]
    assert [(d.epoch, d.rank) for d in clock] == [(4, 1)]
    assert clock[0].evidence.startswith(
        "GPU 1 of node 0 (rank 1): its SM clock fell from 1980 to 1600 MHz (-19%) from epoch 5, NVML naming "
        "sw_thermal in 100% of its samples, 88 C at most, 650 W"
    )
    # the straggler it makes is named too, and the clocks explain the epoch first
    assert [(d.kind, d.epoch) for d in s.drifts][:2] == [("clocks", 4), ("straggler", 4)]
    v = s.epochs[4]
    assert (v.sm_clock_mhz_min, v.gpu_temp_c_max, v.throttle_reasons) == (1600.0, 88.0, ["sw_thermal"])
    assert (v.gpu_util_pct, v.cpu_util_pct, v.loader_cpu_pct, v.telemetry_samples) == (90.0, 60.0, 80.0, 21)
    assert s.telemetry == ["node 0: 2 GPU(s), 84 samples; CPU 42 samples"]
    assert "sw_thermal" in html.render_run(s)


def test_clocks_that_fall_without_a_slowdown_reason_or_for_one_epoch_are_no_drift(tmp_path):
    low = {0: 1980.0, 1: 1980.0, 2: 1980.0, 3: 1980.0, 4: 1500.0, 5: 1500.0}
    run = write(tmp_path / "a", [start()], timed(steady()))
    telemetry(run, low, reasons_from=99)  # a light load lowers the clocks: NVML names no slowdown
    assert [d for d in run_drift.summarize(run).drifts if d.kind == "clocks"] == []
    blip = {0: 1980.0, 1: 1980.0, 2: 1500.0, 3: 1980.0, 4: 1980.0, 5: 1980.0}
    run = write(tmp_path / "b", [start()], timed(steady()))
    telemetry(run, blip, reasons_from=2)  # hot in epoch 3 only... and on: the clocks came back
    assert [d for d in run_drift.summarize(run).drifts if d.kind == "clocks"] == []


def test_a_run_without_telemetry_says_so(tmp_path):
    s = run_drift.summarize(write(tmp_path, [start()], steady()))
    assert s.telemetry[0].startswith("not measured: no telemetry file") and s.epochs[1].gpu_util_pct is None


def test_a_miss_with_only_epochs_outside_the_band_says_nothing_in_the_run_explains_it(tmp_path):
    # every epoch 30% slower than the band from the start (seen: a real run while the machine was slower)
    rows = steady({(None, 0): {"epoch_s": 13.0}})
    run = write(tmp_path, [start(predicted_epoch_s=10.0, predicted_low_s=9.0, predicted_high_s=11.0), start(1)], rows)
    s = run_drift.summarize(run)
    assert [d.kind for d in s.drifts] == ["outside_band"]
    assert s.verdict == (
        "the prediction missed by +30%: a steady epoch took 13.0 s (median of 5), predicted 10.0 s, "
        "with no drift in the run to explain it"
    )
