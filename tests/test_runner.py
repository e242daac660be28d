"""The scan's trial loop: the cache=ram skip, and the default stall watchdog against a real hang."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import pytest
from rich.console import Console

from conftest import CPU_SCAN
from yoloprof import pipeline
from yoloprof.scan import launch, runner
from yoloprof.analysis.aggregate import LaunchOutcome
from yoloprof.records import TrialResult, TrialSpec, read_json

RECORDED = CPU_SCAN / "trials" / "t01-b8-w0-fp32"  # a real 2-rank trial: what the fake launcher "runs"


def _plan(tmp_path, train_images):
    meta = pipeline.load_meta(CPU_SCAN)
    meta.dataset = replace(meta.dataset, train_images=train_images)
    base = read_json(RECORDED / "spec.json", TrialSpec)
    ram = replace(base, trial_id="t01-ram", knobs=replace(base.knobs, cache="ram"))
    off = replace(base, trial_id="t02-off", knobs=replace(base.knobs, cache="off"))
    out = tmp_path / "scan"
    (out / "trials").mkdir(parents=True)
    return out, meta, [ram, off]


@pytest.fixture
def fake_launch(monkeypatch):
    """launch.run_trial that 'runs' a trial by laying down the recorded trial's rank records."""
    launched = []

    def run_trial(spec, tdir, **kw):
        launched.append(spec.trial_id)
        tdir.mkdir(parents=True, exist_ok=True)
        for f in RECORDED.glob("rank*"):
            shutil.copy(f, tdir / f.name)
        shutil.copy(RECORDED / "spec.json", tdir / "spec.json")
        (tdir / "spec.json").write_text((tdir / "spec.json").read_text().replace(RECORDED.name, spec.trial_id))
        return read_json(RECORDED / "launch.json", LaunchOutcome)

    monkeypatch.setattr(launch, "run_trial", run_trial)
    return launched


# 65536 images at imgsz 128, 3 bytes a pixel: 3072 MiB a copy, 2 ranks -> 6144 MiB; the limit is 80% of free RAM,
# so 6144 / 0.8 = 7680 MiB free is the least that runs.
@pytest.mark.parametrize("free_mib,skipped", [(4096.0, True), (7679.0, True), (7680.0, False), (8192.0, False)])
def test_cache_ram_trial_is_skipped_when_the_copies_would_not_fit(
    tmp_path, monkeypatch, fake_launch, free_mib, skipped
):
    import yoloprof.probes.environment

    monkeypatch.setattr(yoloprof.probes.environment, "available_ram_mib", lambda: free_mib)
    out, meta, specs = _plan(tmp_path, train_images=65536)
    assert specs[0].imgsz == 128 and specs[0].world_size == 2
    code = runner.execute(out, specs, meta, launch.HangPolicy(), Console(file=io.StringIO()), reuse=False)
    assert code == 0
    ram = read_json(out / "trials" / "t01-ram" / "result.json", TrialResult)
    off = read_json(out / "trials" / "t02-off" / "result.json", TrialResult)
    assert off.status == "ok" and off.img_per_s > 0  # the cache=off trial of the same plan still runs
    if skipped:
        assert fake_launch == ["t02-off"]  # never launched
        assert not list((out / "trials" / "t01-ram").glob("rank*"))
        assert ram.status == "skipped" and ram.img_per_s is None
        assert ram.error == (
            "cache=ram skipped: every rank caches its own copy of the dataset (2 ranks x up to 3.0 GiB = 6.0 GiB) "
            f"and only {free_mib / 1024:.1f} GiB RAM is free; the machine would run out of memory. Use cache=disk"
        )
    else:
        assert fake_launch == ["t01-ram", "t02-off"]
        assert ram.status == "ok"
        assert (
            f"cache=ram under DDP holds one copy of the dataset per rank (2 ranks x up to 3.0 GiB = 6.0 GiB; "
            f"{free_mib / 1024:.1f} GiB free)"
        ) in ram.notes


def test_the_cache_ram_check_counts_every_rank(tmp_path, monkeypatch, fake_launch):
    """One copy (3 GiB) would fit in 5 GiB free; two ranks' copies (6 GiB) do not."""
    import yoloprof.probes.environment

    monkeypatch.setattr(yoloprof.probes.environment, "available_ram_mib", lambda: 5120.0)
    out, meta, specs = _plan(tmp_path, train_images=65536)
    runner.execute(out, specs, meta, launch.HangPolicy(), Console(file=io.StringIO()), reuse=False)
    assert read_json(out / "trials" / "t01-ram" / "result.json", TrialResult).status == "skipped"


# --- the default stall watchdog --------------------------------------------------------------------


def test_stall_limit_is_factor_times_median_step_with_a_floor(tmp_path):
    watch = launch.TrialWatch(tmp_path, 1)
    policy = launch.HangPolicy(startup_s=60.0, stall_factor=10.0, min_stall_s=3.0)
    assert watch.stall_limit_s(policy) == 60.0  # no step yet
    watch.step_ms = [500.0, 2400.0, 100.0]
    assert watch.stall_limit_s(policy) == pytest.approx(
        5.0
    )  # 10 x the 500 ms median, not the mean (10 s), the middle record or the last
    watch.step_ms = [100.0, 200.0, 250.0]
    assert watch.stall_limit_s(policy) == pytest.approx(3.0)  # 10 x 200 ms = 2 s is under the 3 s floor
    assert launch.HangPolicy() == launch.HangPolicy(None, 900.0, 20.0, 120.0)  # the README's defaults


@pytest.mark.slow
def test_default_watchdog_ends_a_real_hang_by_the_stall_rule(tiny_data, tmp_path, _private_cache):
    """No --trial-timeout: rank 1 sleeps forever after step 2, rank 0 blocks in AllReduce; the stall rule
    (5 x the median step, at least 4 s here) must end the trial long before the 240 s start-up allowance."""
    import os

    import psutil

    from yoloprof.analysis import aggregate
    from yoloprof.records import Knobs

    spec = TrialSpec(
        trial_id="t01-hang",
        knobs=Knobs(4, 0, False, False, "off", "default"),
        world_size=2,
        device="cpu",
        gpus=[],
        model="yolo11n.yaml",
        data=str(tiny_data),
        imgsz=64,
        optimizer="SGD",
        warmup_steps=1,
        measured_steps=3,
        env={"YOLOPROF_TEST_FAULT": "hang@2:rank1"},
    )
    policy = launch.HangPolicy(total_s=None, startup_s=240.0, stall_factor=5.0, min_stall_s=4.0)
    tdir = tmp_path / "t"
    outcome = launch.run_trial(spec, tdir, cache_dir=_private_cache, policy=policy)
    assert outcome.timed_out and not outcome.interrupted, outcome
    reason = outcome.timeout_reason
    assert reason.startswith("no step for ") and "x the median step, at least 4 s)" in reason, reason
    assert "--trial-timeout" not in reason and "no first step" not in reason
    stalled = float(reason.split("no step for ")[1].split(" s")[0])
    limit = float(reason.split("(limit ")[1].split(" s")[0])
    assert 4.0 <= limit <= stalled + 1 and stalled <= limit + 1.5  # fired at its limit (0.25 s polls, rounded)
    assert outcome.wall_s - stalled > 1.0  # the stall counts from the last step, not from the launch
    assert outcome.wall_s < 240.0  # it did not wait for the start-up allowance
    ranks = aggregate.read_ranks(tdir)
    assert [r.steps[-1].step for r in ranks] == [2, 2]  # rank 0 never finished step 3: it waited for rank 1
    res = aggregate.aggregate(spec, ranks, outcome)
    assert res.status == "timeout" and res.error.startswith("hung: no step for ")
    assert "rank 1 last finished step 2" in res.error
    # nothing of the trial is left: torchrun, its ranks and their workers shared one process group
    assert outcome.release_note is None
    rank_pids = {r.info.pid for r in ranks if r.info is not None}
    assert len(rank_pids) == 2
    left = []
    for proc in psutil.process_iter(["cmdline", "pid", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if (
            proc.info["pid"] != os.getpid()
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and (str(tdir) in cmd or proc.info["pid"] in rank_pids)
        ):
            left.append(cmd[:120])
    assert left == []
