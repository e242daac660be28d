"""Expected figures that do not come from the code under test.

Every number here is computed in the test from the raw rank<r>.jsonl lines with the json module and
plain arithmetic, or written by hand with round numbers; nothing is read back from a result.json
that aggregate() wrote. A wrong formula in aggregate, ranking or the verdict fails these tests.
"""

from __future__ import annotations

import dataclasses

import json
import statistics
from pathlib import Path

import pytest

from conftest import FIXTURES
from yoloprof import pipeline
from yoloprof.analysis import aggregate, ranking
from yoloprof.analysis.aggregate import LaunchOutcome
from yoloprof.records import Knobs, TelemetrySummary, TrialResult, TrialSpec, read_json

TRIAL_DIRS = sorted(p for p in FIXTURES.glob("*/trials/*") if (p / "rank0.jsonl").is_file())


def raw_steps(tdir: Path) -> list[list[dict]]:
    """Step records per rank, straight from the JSON lines (cut-short lines skipped)."""
    out = []
    for r in range(len(list(tdir.glob("rank*.jsonl")))):
        steps = []
        for line in (tdir / f"rank{r}.jsonl").read_text().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("kind") == "step":
                steps.append(obj)
        out.append(steps)
    return out


def expected_from_raw(tdir: Path) -> dict:
    """The headline figures by the README's rules, with nothing but dicts and sums."""
    ranks = raw_steps(tdir)
    measured = [{s["step"]: s for s in steps if not s["warmup"]} for steps in ranks]
    common = sorted(set.intersection(*(set(m) for m in measured)))
    steady = [i for i in common if not any(m[i].get("epoch_boundary") for m in measured)]
    used = steady or common
    slowest_step = [max(m[i]["step_ms"] for m in measured) for i in used]
    images = sum(m[i]["images"] for m in measured for i in used)
    span_s = max(sum(m[i]["step_ms"] for i in used) for m in measured) / 1000.0
    wait_fracs = [sum(m[i]["data_wait_ms"] for i in used) / sum(m[i]["step_ms"] for i in used) for m in measured]
    return {
        "measured_steps": len(used),
        "images": images,
        "img_per_s": images / span_s,
        "step_ms_p50": statistics.median(slowest_step),
        "data_wait_frac": statistics.median(wait_fracs),
    }


@pytest.mark.parametrize("tdir", TRIAL_DIRS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recorded_trials_aggregate_to_figures_computed_from_the_raw_lines(tdir):
    spec = read_json(tdir / "spec.json", TrialSpec)
    res = aggregate.aggregate(spec, aggregate.read_ranks(tdir), read_json(tdir / "launch.json", LaunchOutcome))
    if res.status != "ok":  # the failure fixture's crashed trials: no figure may be made up for them
        assert res.img_per_s is None and res.step_ms_p50 is None
        return
    want = expected_from_raw(tdir)
    assert res.measured_steps == want["measured_steps"]
    if spec.precision is None:
        assert want["measured_steps"] == spec.measured_steps
    else:  # measured until precise: at least the minimum, at most max_steps (epoch-boundary steps left out)
        assert spec.measured_steps <= want["measured_steps"] + res.epoch_boundary_steps <= spec.max_steps
    assert want["images"] == spec.knobs.batch * want["measured_steps"]  # every rank's batch share, every step
    # the one-time cost: the warm-up steps beyond as many steady steps, slowest rank (compile's start-up)
    extra = max(
        (
            sum(s["step_ms"] for s in st if s["warmup"])
            - sum(s["warmup"] for s in st) * statistics.median(s["step_ms"] for s in st if not s["warmup"])
        )
        / 1e3
        for st in raw_steps(tdir)
    )
    assert res.warmup_extra_s == pytest.approx(extra, rel=1e-9)
    assert res.img_per_s == pytest.approx(want["img_per_s"], rel=1e-9)
    assert res.step_ms_p50 == pytest.approx(want["step_ms_p50"], rel=1e-9)
    assert res.data_wait_frac == pytest.approx(want["data_wait_frac"], rel=1e-9)


def test_raw_rule_is_not_the_fastest_rank_nor_warmup_inclusive():
    """The raw rule above tells apart the formulas a slip in aggregate would produce."""
    tdir = FIXTURES / "cpu-scan" / "trials" / "t03-b16-w0-fp32"
    ranks = raw_steps(tdir)
    want = expected_from_raw(tdir)
    fastest_span = min(sum(s["step_ms"] for s in steps if not s["warmup"]) for steps in ranks) / 1000.0
    with_warmup = sum(s["images"] for steps in ranks for s in steps) / (
        max(sum(s["step_ms"] for s in steps) for steps in ranks) / 1000.0
    )
    assert abs(want["img_per_s"] / (want["images"] / fastest_span) - 1) > 1e-4
    assert abs(want["img_per_s"] / with_warmup - 1) > 1e-3


# Which trial must win each recorded scan, and why, from the raw lines.
WINNERS = {
    # batch 16 beats batch 8; at batch 16, workers 0 (t03, 41.9 img/s from the raw lines) beats workers 2 (t04,
    # 39.9 img/s) by 5%: the margin asserted is 4%, so a rate computed any other way than the README's moves the pick.
    "cpu-scan": ("t03-b16-w0-fp32", "t04-b16-w2-fp32", 0.04),
    # two ranks with 4 images each beat one rank with 4 by ~13%.
    "cpu-scan-scaling": ("t02-b8-w0-fp32-r2", "t01-b4-w0-fp32-r1", 0.10),
    # the only trial that finished: t01 ran out of memory, t02 raised, t03 was skipped.
    "cpu-scan-failures": ("t04-b4-w1-fp32", None, None),
}


@pytest.mark.parametrize("scan", sorted(WINNERS))
def test_recorded_scan_winner_is_pinned_by_the_raw_throughput(scan, tmp_path):
    import shutil

    winner, runner_up, margin = WINNERS[scan]
    copy = tmp_path / scan
    shutil.copytree(FIXTURES / scan, copy)
    out = pipeline.write_all(copy)
    assert out.ranking.best_trial_id == winner
    assert out.headline.startswith(f"Best: {winner} (")
    raw = {
        p.name: expected_from_raw(p)["img_per_s"]
        for p in sorted((copy / "trials").iterdir())
        if (p / "rank0.jsonl").is_file() and read_json(p / "launch.json", LaunchOutcome).returncode == 0
    }
    if runner_up is None:
        assert list(raw) == [winner]
        assert [r.trial_id for r in out.results if r.status == "ok"] == [winner]
        return
    assert max(raw, key=raw.get) == winner
    second = sorted(raw.values())[-2]
    assert second == raw[runner_up] and raw[winner] / second - 1 > margin
    positions = {v.trial_id: v.position for v in out.ranking.verdicts}
    assert [t for t, _ in sorted(raw.items(), key=lambda kv: -kv[1])] == sorted(positions, key=positions.get)


def test_recorded_winner_is_cpu_starved_and_its_worker_twin_is_not(cpu_scan_copy):
    """t03 waits 12.8% of its step for data (>= 10%) with every core busy in 76% of samples;
    t04 (2 workers) waits 1.7%: compute."""
    out = pipeline.write_all(cpu_scan_copy)
    v = {x.trial_id: x for x in out.ranking.verdicts}
    t03 = expected_from_raw(cpu_scan_copy / "trials" / "t03-b16-w0-fp32")["data_wait_frac"]
    t04 = expected_from_raw(cpu_scan_copy / "trials" / "t04-b16-w2-fp32")["data_wait_frac"]
    assert t03 >= ranking.INPUT_FRAC > t04
    # t03's exposed AllReduce is 7% with a 95% interval reaching 12%: both shares can bound a run of it
    assert (
        v["t03-b16-w0-fp32"].bottleneck == "input"
        and v["t03-b16-w0-fp32"].label == "input (CPU-starved) + communication"
    )
    assert v["t04-b16-w2-fp32"].bottleneck == "compute" and v["t04-b16-w2-fp32"].label is None
    assert "bound by input (CPU-starved)" in out.headline


# --- the CPU-starved label, both sides of the threshold -------------------------------------------

K = Knobs(16, 2, False, False, "off", "default")


def hand(tid, img, data=0.02, comm=None, busy_frac=None, status="ok"):
    tel = None if busy_frac is None else TelemetrySummary("none", cpu_busy_cores_frac=busy_frac)
    # distinct settings per trial id: trials with the same settings are runs of one configuration (analysis.noise)
    knobs = dataclasses.replace(K, batch=K.batch + sum(map(ord, tid)) % 1000)
    return TrialResult(tid, status, knobs, 2, "cpu", img_per_s=img, data_wait_frac=data, comm_frac=comm, telemetry=tel)


@pytest.mark.parametrize(
    "data,busy,bottleneck,label",
    [
        (0.30, 0.50, "input", "input (CPU-starved)"),  # at the threshold: starved
        (0.30, 1.00, "input", "input (CPU-starved)"),
        (0.30, 0.49, "input", None),  # just below: plain input
        (0.30, 0.0, "input", None),
        (0.30, None, "input", None),  # no telemetry: no claim about the cores
        (0.05, 1.00, "compute", None),  # busy cores alone do not make a trial input-bound
    ],
)
def test_cpu_starved_label_needs_input_bound_and_busy_cores(data, busy, bottleneck, label):
    rk = ranking.rank_trials([hand("a", 100.0, data=data, busy_frac=busy)])
    v = rk.verdicts[0]
    assert v.bottleneck == bottleneck and v.label == label
    if label:
        assert f"every core was busy in {100 * busy:.0f}% of samples" in v.evidence
        assert "bound by input (CPU-starved)" in ranking.headline([hand("a", 100.0, data=data, busy_frac=busy)], rk)
    else:
        assert "every core was busy" not in v.evidence


def test_cpu_starved_threshold_is_half_the_samples():
    assert ranking.CPU_STARVED_FRAC == 0.5


# --- gains over the Ultralytics defaults and over --baseline ---------------------------------------


def test_gains_over_defaults_and_baseline_are_the_best_over_each():
    rs = [hand("defaults", 100.0), hand("yours", 80.0), hand("best", 150.0), hand("mid", 120.0)]
    rk = ranking.rank_trials(rs)
    roles = {"Ultralytics defaults": "defaults", "your settings": "yours"}
    g = ranking.gains(rs, rk, roles)
    assert g[0][:2] == ("Ultralytics defaults", "defaults") and g[0][2] == pytest.approx(150 / 100 - 1)  # +50%
    assert g[1][:2] == ("your settings", "yours") and g[1][2] == pytest.approx(150 / 80 - 1)  # +87.5%
    text = ranking.headline(rs, rk, roles)
    assert "at 150.0 img/s, +50% over Ultralytics defaults (defaults), +88% over your settings (yours)." in text
    assert "x the slowest" not in text  # the gains replace the comparison with the slowest trial


def test_gain_when_a_baseline_is_the_best_or_did_not_finish():
    rs = [hand("defaults", 200.0), hand("yours", None, status="timeout"), hand("other", 100.0)]
    rs[1].error = "hung"
    rk = ranking.rank_trials(rs)
    roles = {"Ultralytics defaults": "defaults", "your settings": "yours"}
    g = ranking.gains(rs, rk, roles)
    assert g[0][2] == pytest.approx(0.0) and g[1][2] is None
    text = ranking.headline(rs, rk, roles)
    assert "which is Ultralytics defaults: nothing measured beat them" in text
    assert "your settings (yours) did not finish" in text and "1 of 3 trials did not finish" in text


def test_gain_is_best_over_baseline_not_baseline_over_best():
    # the best trial is 25% faster than the baseline: -20% would be the baseline over the best
    rs = [hand("base", 400.0), hand("best", 500.0)]
    rk = ranking.rank_trials(rs)
    assert ranking.gains(rs, rk, {"your settings": "base"})[0][2] == pytest.approx(0.25)
    assert "+25% over your settings (base)" in ranking.headline(rs, rk, {"your settings": "base"})
