"""Epoch and run prediction: the arithmetic over hand-built records, checked by hand, and the outputs
that carry it (results.csv, terminal, report, `yoloprof report --epochs/--gpu-hour-price`)."""

from __future__ import annotations

import csv

import pytest

from yoloprof import pipeline
from yoloprof.analysis import epoch, epoch_costs
from yoloprof.errors import UsageError
from yoloprof.records import (
    Breakdown,
    EpochCosts,
    EpochPart,
    Knobs,
    RunPlan,
    TelemetrySummary,
    TrialResult,
    read_json,
    write_json,
)

K = Knobs(16, 2, False, False, "off", "default")


def trial(**kw) -> TrialResult:
    r = TrialResult(
        "t1",
        "ok",
        K,
        2,
        "cpu",
        img_per_s=100.0,
        img_per_s_ci_low=90.0,
        img_per_s_ci_high=110.0,
        batches_per_epoch=32,
        accumulate=4,
        breakdown=Breakdown(0, 0, 0, 0, 0, 10.0, 0, 100.0),
    )
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def costs(**kw) -> EpochCosts:
    c = EpochCosts(
        2,
        "cpu",
        K,
        "ok",
        val=EpochPart([2.0, 1.0, 1.2]),
        val_images_total=64,
        val_images_timed=64,
        save=EpochPart([0.3, 0.2]),
        end=EpochPart([0.05, 0.04]),
        boundary_ms=150.0,
        setup_s=4.0,
        startup_s=3.0,
        final_s=2.5,
        no_mosaic_ratio=1.25,
        no_mosaic_ratio_ci=[1.1, 1.4],
    )
    for k, v in kw.items():
        setattr(c, k, v)
    return c


RP = RunPlan(epochs=10, close_mosaic=2, warmup_epochs=1.0, nbs=64, gpu_hour_price=2.5)


def test_an_epoch_is_its_steps_plus_each_measured_part_with_a_band():
    p = epoch.predict(trial(), costs(), None, RP)
    assert p.steps_s == pytest.approx(32 * 16 / 100)  # 5.12 s
    assert (p.boundary_s, p.val_s, p.save_s, p.end_s) == pytest.approx((0.15, 1.1, 0.2, 0.04))  # later passes
    assert p.epoch_s == pytest.approx(5.12 + 0.15 + 0.04 + 1.1 + 0.2)
    assert p.epoch_s_low == pytest.approx(512 / 110 + 0.15 + 0.04 + 1.0 + 0.2)  # fastest rate, fastest passes
    assert p.epoch_s_high == pytest.approx(512 / 90 + 0.15 + 0.05 + 2.0 + 0.3)
    assert p.parts_missing == []


def test_without_the_runs_end_timed_the_final_validation_stands_in_and_the_rest_is_named():
    timed, old = epoch.predict(trial(), costs(), None, RP), epoch.predict(trial(), costs(final_s=None), None, RP)
    assert timed.final_s == 2.5 and old.final_s is None
    assert timed.once_s - old.once_s == pytest.approx(2.5 - 1.1)  # one validation pass instead
    assert old.parts_missing == [
        "the run's end beyond the final validation (stripping checkpoints, plots): not measured"
    ]


def test_a_run_without_a_measured_start_up_names_it_and_leaves_it_out():
    with_it, without = (
        epoch.predict(trial(), costs(), None, RP),
        epoch.predict(trial(), costs(startup_s=None), None, RP),
    )
    assert with_it.run_h * 3600 - without.run_h * 3600 == pytest.approx(3.0) and without.startup_s is None
    assert without.parts_missing == [
        "the process's start-up (interpreter, torch and Ultralytics imports): not measured"
    ]


def test_the_run_counts_close_mosaic_epochs_warmup_set_up_and_the_final_validation():
    p = epoch.predict(trial(), costs(), None, RP)
    no_mosaic = 5.12 / 1.25 + 0.15 + 0.04 + 1.1 + 0.2
    assert p.no_mosaic_epoch_s == pytest.approx(no_mosaic)
    # warm-up: accumulate ramps 1 -> 4 over 32 iterations: 6 at 1, 11 at 2, 10 at 3, 5 at 4 = 16.08 steps, not 8
    assert epoch.warmup_extra_steps(32, RP, 16) == pytest.approx(6 + 11 / 2 + 10 / 3 + 5 / 4 - 8)
    # set-up, the process's start-up, 40 ms per optimizer step, final val
    once = 4.0 + 3.0 + epoch.warmup_extra_steps(32, RP, 16) * 0.040 + 2.5  # ... and the run's end as timed
    assert p.once_s == pytest.approx(once) and p.startup_s == 3.0
    assert p.run_h * 3600 == pytest.approx(8 * p.epoch_s + 2 * no_mosaic + once)
    assert p.run_h_low < p.run_h < p.run_h_high
    assert p.cost_epoch == pytest.approx(p.epoch_s / 3600 * 2 * 2.5)  # 2 ranks at 2.5 an hour
    assert p.cost_run == pytest.approx(p.run_h * 2 * 2.5)


def test_a_no_mosaic_ratio_inside_its_noise_prices_close_mosaic_epochs_at_the_mosaic_rate():
    """x0.86 with 95% 0.74-1.00 is no measurable effect: the epochs without mosaic cost what mosaic epochs do,
    and the band still spans what the interval allows."""
    p = epoch.predict(trial(), costs(no_mosaic_ratio=0.86, no_mosaic_ratio_ci=[0.74, 1.001]), None, RP)
    assert p.no_mosaic_epoch_s == pytest.approx(p.epoch_s)
    assert p.run_h * 3600 == pytest.approx(10 * p.epoch_s + p.once_s)
    assert epoch_costs.priced_ratio(0.86, [0.74, 1.001]) == 1.0 and epoch_costs.priced_ratio(1.25, [1.1, 1.4]) == 1.25
    assert epoch_costs.priced_ratio(0.9, None) == 0.9 and epoch_costs.priced_ratio(None, None) is None
    assert epoch_costs.ratio_text(0.86, [0.74, 1.001]) == "x0.86 img/s (0.74-1.00, no measurable effect)"
    assert epoch_costs.ratio_text(1.25, [1.1, 1.4]) == "x1.25 img/s (1.10-1.40)"
    for ci in (None, [0.0, 2.0]):  # no interval, or one that reaches 0 (a step many times its neighbours)
        q = epoch.predict(trial(), costs(no_mosaic_ratio=0.7, no_mosaic_ratio_ci=ci), None, RP)
        assert q.no_mosaic_epoch_s is None and q.run_h * 3600 == pytest.approx(10 * q.epoch_s + q.once_s)
        assert "x0.70 measured without an interval" in " ".join(q.parts_missing)


def test_what_was_not_measured_is_left_out_and_named_never_guessed():
    p = epoch.predict(trial(img_per_s_ci_low=None, img_per_s_ci_high=None), None, None, RP)
    assert p.epoch_s == pytest.approx(5.12) and p.val_s is None
    assert p.once_s == pytest.approx(epoch.warmup_extra_steps(32, RP, 16) * 0.040)  # measured in the trial itself
    assert p.epoch_s_low is None and p.epoch_s_high is None and p.run_h_low is None  # no band, not a tight one
    few = epoch.predict(trial(img_per_s_ci_low=None, img_per_s_ci_high=None), costs(), None, RP)  # a few steps only
    assert few.no_mosaic_epoch_s == pytest.approx(5.12 / 1.25 + 0.15 + 0.04 + 1.1 + 0.2)
    text = " ".join(p.parts_missing)
    for word in ("throughput interval", "validation", "without mosaic", "set-up"):
        assert word in text, word
    failed = epoch.predict(trial(), costs(status="timeout", error="timed out after 60 s"), None, RP)
    assert "timed out after 60 s" in " ".join(failed.parts_missing) and failed.val_s is None
    assert epoch.predict(trial(status="oom", img_per_s=None), costs(), None, RP).epoch_s is None


def test_the_trials_own_epoch_start_carries_the_end_work_the_jobs_does_not():
    p = epoch.predict(trial(epoch_boundary_ms_p50=400.0), costs(), None, RP)
    assert p.boundary_s == pytest.approx(0.4) and p.end_s is None  # its span holds the end work: not twice
    assert p.epoch_s == pytest.approx(5.12 + 0.4 + 1.1 + 0.2)
    p = epoch.predict(trial(epoch_boundary_ms_p50=-64.0), costs(), None, RP)  # noise: the job's parts instead
    assert (p.boundary_s, p.end_s) == pytest.approx((0.15, 0.04))
    p = epoch.predict(trial(), costs(boundary_ms=None), None, RP)
    assert p.boundary_s is None and p.end_s == pytest.approx(0.04)
    assert p.epoch_s == pytest.approx(5.12 + 0.04 + 1.1 + 0.2)
    assert any("restart" in m for m in p.parts_missing)


def test_set_up_is_the_trials_own_where_it_recorded_one():
    # a cache=ram trial pays its caching in its own set-up; the epoch job's is for the recommended settings
    p = epoch.predict(trial(setup_s=30.0), costs(), None, RP)
    assert p.once_s == pytest.approx(30.0 + 3.0 + epoch.warmup_extra_steps(32, RP, 16) * 0.040 + 2.5)


def test_val_and_save_off_move_them_to_the_final_epoch():
    rp = RunPlan(epochs=10, close_mosaic=0, warmup_epochs=0, val=False, save=False)
    p = epoch.predict(trial(), costs(), None, rp)
    assert p.epoch_s == pytest.approx(5.12 + 0.15 + 0.04)
    assert p.once_s == pytest.approx(4.0 + 3.0 + 2.5 + 1.1 + 0.2)  # start-up, the run's end, final epoch's val, save
    assert p.run_h * 3600 == pytest.approx(10 * (5.12 + 0.15 + 0.04) + p.once_s)


def test_energy_is_the_steps_counter_and_says_so():
    tel = TelemetrySummary("ok", energy_j_per_img=2.0)
    p = epoch.predict(trial(telemetry=tel), costs(), None, RP)
    assert p.energy_epoch_kwh == pytest.approx(2.0 * 512 / 3.6e6)
    assert p.energy_run_kwh == pytest.approx(10 * p.energy_epoch_kwh)
    assert any("not metered" in m for m in p.parts_missing)
    assert epoch.predict(trial(), costs(), None, RP).energy_epoch_kwh is None  # CPU: no counter, n/a


def test_steps_per_epoch_from_the_split_as_the_distributed_sampler_shards_it():
    from yoloprof.records import DatasetInfo

    d = DatasetInfo("d.yaml", 1001, 10, ["a"], False)
    assert epoch.steps_per_epoch(trial(batches_per_epoch=None), d) == 63  # ceil(ceil(1001 / 2) / 8)
    assert epoch.steps_per_epoch(trial(), d) == 32  # Ultralytics' own count wins


def test_durations_are_in_the_unit_a_team_plans_in():
    assert [epoch.duration(x) for x in (0.19, 4.2, 42, 708, 70920, None)] == [
        "190 ms",
        "4.2 s",
        "42 s",
        "11.8 min",
        "19.7 h",
        "n/a",
    ]
    assert [epoch.amount(x) for x in (1234.5, 0.0312, None)] == ["1,234.50", "0.0312", "n/a"]
    assert epoch.duration_band(708, 672, 750) == "11.8 min (11.2-12.5)"
    assert epoch.duration_band(0.19, 0.17, 0.25) == "190 ms (170-250)"
    p = epoch.predict(trial(), costs(), None, RunPlan(epochs=100))
    assert epoch.one_line(p, 100).startswith(
        f"{epoch.duration(p.epoch_s)} an epoch, "
    ) and "for 100 epochs" in epoch.one_line(p, 100)


def test_the_run_plan_takes_flags_over_the_config_over_ultralytics():
    assert epoch.plan_run().epochs == 100 and epoch.plan_run().close_mosaic == 10
    rp = epoch.plan_run({"epochs": 300, "close_mosaic": 0, "val": False})
    assert (rp.epochs, rp.close_mosaic, rp.val, rp.source) == (300, 0, False, "your config")
    rp = epoch.plan_run({"epochs": 300}, epochs=50, price=2.5, currency="EUR")
    assert (rp.epochs, rp.source, rp.gpu_hour_price, rp.currency) == (50, "--epochs", 2.5, "EUR")
    for kw in (dict(epochs=0), dict(price=-1.0), dict(currency="dollars!")):
        with pytest.raises(UsageError):
            epoch.plan_run(None, **kw)


def test_outputs_carry_epoch_run_and_cost_and_report_re_prices(cpu_scan_copy):
    write_json(cpu_scan_copy / "epoch" / "w2.json", costs())
    assert pipeline.replan(cpu_scan_copy, epochs=50, price=3.0, currency="EUR").epochs == 50
    assert read_json(cpu_scan_copy / "scan.json")["run_plan"]["gpu_hour_price"] == 3.0  # kept for later rebuilds
    out = pipeline.write_all(cpu_scan_copy)
    rows = list(csv.DictReader((cpu_scan_copy / "results.csv").open()))
    for row in rows:
        assert float(row["epoch_s_low"]) <= float(row["epoch_s"]) <= float(row["epoch_s_high"])
        assert float(row["cost_run"]) == pytest.approx(float(row["run_h"]) * 2 * 3.0, rel=1e-4)
        assert row["energy_epoch_kwh"] == ""  # CPU: no energy counter
    best = rows[0]
    p = out.predictions[best["trial_id"]]
    assert float(best["epoch_s"]) == pytest.approx(p.epoch_s, rel=1e-5)
    assert f"{epoch.duration(p.epoch_s)} an epoch" in out.headline and "for 50 epochs" in out.headline
    page = (cpu_scan_copy / "report.html").read_text()
    assert "What the training will take" in page and "EUR" in page and "64 images" in page
    before = p.run_h
    pipeline.replan(cpu_scan_copy, epochs=100)
    assert pipeline.collect(cpu_scan_copy).predictions[best["trial_id"]].run_h == pytest.approx(
        before + 50 * p.epoch_s / 3600, rel=1e-6
    )  # 50 more mosaic epochs, the rest unchanged


def test_the_scaling_table_reads_ranks_epoch_run_cost_and_efficiency(tmp_path):
    import shutil

    from rich.console import Console

    from yoloprof.reports.terminal import scaling_table
    from tests.conftest import FIXTURES

    d = tmp_path / "s"
    shutil.copytree(FIXTURES / "cpu-scan-scaling", d)
    pipeline.replan(d, epochs=50, price=2.5, currency="EUR")
    out = pipeline.collect(d)
    console = Console(width=200, record=True)
    console.print(scaling_table(out.results, out.predictions, out.meta.run_plan))
    text = console.export_text()
    assert "cost EUR" in text
    lines = [ln for ln in text.splitlines() if " min " in ln]
    assert len(lines) == 2  # 1 and 2 ranks
    for ln, r in zip(lines, sorted(out.results, key=lambda r: r.world_size)):
        p = out.predictions[r.trial_id]
        assert epoch.duration(p.epoch_s) in ln and f" {epoch.amount(p.cost_run)} " in ln
        assert p.cost_run == pytest.approx(p.run_h * r.world_size * 2.5)


def test_report_command_re_prices_and_refuses_a_bad_price_in_one_line(cpu_scan_copy, capsys):
    from yoloprof import cli

    assert cli.main(["report", str(cpu_scan_copy), "--epochs", "300", "--gpu-hour-price", "2.5"]) == 0
    text = capsys.readouterr().out
    assert "for 300 epochs" in text and "USD" in text
    assert cli.main(["report", str(cpu_scan_copy), "--gpu-hour-price", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpu-hour-price -1.0: give the price of one GPU-hour, > 0" in err[0]
    assert (
        read_json(cpu_scan_copy / "scan.json")["run_plan"]["gpu_hour_price"] == 2.5
    )  # the refused one changed nothing
