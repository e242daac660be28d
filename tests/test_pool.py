"""Rank pools (one launch, many trials) and the stopping rule, on real 2-rank gloo trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scans import leftovers, results, run_scan
from yoloprof.records import RankInfo, from_dict

pytestmark = pytest.mark.slow


def _pids(out: Path, trial: str) -> set[int]:
    pids = set()
    for f in (out / "trials" / trial).glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            obj = json.loads(line)
            if obj.pop("kind") == "info":
                pids.add(from_dict(RankInfo, obj).pid)
    return pids


def _measured(out: Path, trial: str) -> list[int]:
    """Measured (non-warm-up) steps each rank recorded."""
    counts = []
    for f in sorted((out / "trials" / trial).glob("rank*.jsonl")):
        steps = [json.loads(x) for x in f.read_text().splitlines() if x.startswith('{"kind": "step"')]
        counts.append(sum(1 for s in steps if not s["warmup"]))
    return counts


def test_a_pool_runs_trials_in_the_same_ranks_and_a_failure_gets_a_fresh_launch(tiny_data, tmp_path):
    out = tmp_path / "s"
    proc = run_scan(
        tiny_data, out, "--batch", "2,4", "--workers", "0,1", "--precision", "off", fault="raise@2:trial=t02"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results(out)
    assert [r[t].status for t in sorted(r)] == ["ok", "error", "ok", "ok"], {t: r[t].error for t in r}
    assert "injected failure at step 2" in r["t02-b2-w1-fp32"].error
    # t01 and t02 ran in the first pool's processes; the failure ended it, t03 and t04 share a second one
    t01, t02, t03, t04 = (_pids(out, t) for t in sorted(r))
    assert len(t01) == 2 and t01 == t02
    assert len(t03) == 2 and t03 == t04 and not (t03 & t01)
    jobs = {p.name: sorted(j.name for j in p.glob("job-*.json")) for p in (out / "pools").iterdir()}
    assert jobs == {
        "pool-1": ["job-0001.json", "job-0002.json"],
        "pool-2": ["job-0001.json", "job-0002.json", "job-0003.json"],
    }  # the third: stop
    assert json.loads((out / "pools" / "pool-2" / "job-0003.json").read_text()) == {"stop": True}
    # a reused trial costs its steps and a trainer, not a launch: the pool's first trial pays torchrun and imports
    assert r["t04-b4-w1-fp32"].wall_s < r["t03-b4-w0-fp32"].wall_s
    for t in ("t01-b2-w0-fp32", "t03-b4-w0-fp32", "t04-b4-w1-fp32"):
        assert r[t].measured_steps > 0 and r[t].img_per_s > 0
    assert leftovers(out) == []


def test_a_trial_measures_until_its_interval_is_tight_and_every_rank_stops_on_the_same_step(tiny_data, tmp_path):
    """16 to 24 measured steps: a loose target (90%) is met at the first check, a tight one (0.01%) never."""
    loose, tight = tmp_path / "loose", tmp_path / "tight"
    common = ("--batch", "2", "--workers", "0", "--steps", "16", "--max-steps", "24")
    for out, precision in ((loose, "90%"), (tight, "0.0001")):
        proc = run_scan(tiny_data, out, *common, "--precision", precision)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert _measured(loose, "t01-b2-w0-fp32") == [16, 16]
    assert _measured(tight, "t01-b2-w0-fp32") == [24, 24]
    r = results(loose)["t01-b2-w0-fp32"]
    assert r.status == "ok"
