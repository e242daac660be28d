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
