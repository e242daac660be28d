"""Trials that fail for real (injected with YOLOPROF_TEST_FAULT): recorded, cleaned up, and the scan goes on."""

from __future__ import annotations

import csv
import signal
import subprocess

import pytest


from scans import BIN, scan_cmd, held_at, held, run_scan, leftovers, results, wait_for

pytestmark = pytest.mark.slow


def test_oom_crash_and_skips(tiny_data, tmp_path):
    out = tmp_path / "s"
    # t01 b2 w0: a real allocation past the limit; t02 b2 w1: an exception on rank 0;
    # t03 b4 w0: skipped (oom at batch 2); t04 b4 w1: runs
    proc = run_scan(
        tiny_data, out, "--batch", "2,4", "--workers", "0,1", fault="alloc@1:rank1:trial=t01;raise@1:rank0:trial=t02"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results(out)
    assert [x.status for x in r.values()] == ["oom", "error", "skipped", "ok"], {
        k: (v.status, v.error) for k, v in r.items()
    }
    oom = r["t01-b2-w0-fp32"]
    assert "can't allocate memory" in oom.error and oom.knobs.batch == 2 and oom.peak_mem_mib > 0
    err = r["t02-b2-w1-fp32"]
    assert err.error == "RuntimeError: injected failure at step 1 on rank 0"
    assert any("injected failure" in line for line in err.stderr_tail)
    assert r["t03-b4-w0-fp32"].error.startswith("oom at batch 2")
    assert not (out / "trials" / "t03-b4-w0-fp32" / "rank0.jsonl").exists()  # skipped, never launched
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(x["trial_id"], x["position"]) for x in rows][0] == ("t04-b4-w1-fp32", "1")
    assert {x["bottleneck"] for x in rows if x["trial_id"].startswith("t01")} == {"memory"}
    assert leftovers(out) == []


def test_hang_and_signal(tiny_data, tmp_path):
    out = tmp_path / "s"
    # t01: rank 1 sleeps forever after step 2, rank 0 blocks in AllReduce; t02: rank 1 SIGKILLs itself; t03 runs
    proc = run_scan(
        tiny_data,
        out,
        "--batch",
        "2",
        "--workers",
        "0,1,2",
        "--trial-timeout",
        "25",
        fault="hang@2:rank1:trial=t01;kill@1:rank1:trial=t02",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results(out)
    assert [x.status for x in r.values()] == ["timeout", "error", "ok"], {k: (v.status, v.error) for k, v in r.items()}
    t = r["t01-b2-w0-fp32"]
    assert "--trial-timeout 25 s reached" in t.error and "rank 1 last finished step 2" in t.error
    assert "rank 1 killed by SIGKILL" in r["t02-b2-w1-fp32"].error
    assert leftovers(out) == []


def test_a_failure_every_trial_would_hit_stops_the_scan(tiny_data, tmp_path):
    out = tmp_path / "s"
    proc = run_scan(tiny_data, out, "--batch", "2", "--workers", "0,1", fault="fatal@0")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("yoloprof: scan stopped: trial t01-b2-w0-fp32 failed before")
    assert "FileNotFoundError: injected" in proc.stderr
    assert list(results(out)) == ["t01-b2-w0-fp32"]  # t02 never ran
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    assert leftovers(out) == []


def test_sigkill_mid_trial_and_between_trials_then_resume(tiny_data, tmp_path):
    out = tmp_path / "s"
    args = ("--batch", "2", "--workers", "0,1,2")
    # 1) SIGKILL while t01 trains (held at step 1, so certainly still running): its processes die with the scan
    env = held("wait@1:trial=t01", tmp_path / "never")
    p = subprocess.Popen(scan_cmd(tiny_data, out, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    assert wait_for(lambda: held_at(out, "t01-b2-w0-fp32", 1))
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert wait_for(lambda: not leftovers(out), timeout=20), leftovers(out)
    assert results(out) == {}
    # 2) resume; SIGKILL after t01's result lands, while t02 is held at step 1 (between trials, no race)
    p = subprocess.Popen(
        [str(BIN / "yoloprof"), "scan", "--resume", str(out), "--no-ceilings", "--no-epoch-job"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=held("wait@1:trial=t02", tmp_path / "never"),
    )
    assert wait_for(
        lambda: (out / "trials" / "t01-b2-w0-fp32" / "result.json").exists() and held_at(out, "t02-b2-w1-fp32", 1)
    )
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert wait_for(lambda: not leftovers(out), timeout=20), leftovers(out)
    assert list(results(out)) == ["t01-b2-w0-fp32"]
    # 3) resume again: only what is missing runs, and the outputs are those of a whole scan
    done = subprocess.run(
        [str(BIN / "yoloprof"), "scan", "--resume", str(out), "--no-ceilings", "--no-epoch-job"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 of 3 trials have results; running 2" in done.stdout
    r = results(out)
    assert list(r) == ["t01-b2-w0-fp32", "t02-b2-w1-fp32", "t03-b2-w2-fp32"] and all(
        x.status == "ok" for x in r.values()
    )
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(int(x["position"]) for x in rows) == [1, 2, 3]
    assert all((out / n).is_file() for n in ("report.html", "best.yaml", "best.env", "best.sh", "ranking.json"))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_ends_the_trial_writes_results_and_says_how_to_resume(tiny_data, tmp_path, sig, code):
    out = tmp_path / "s"
    p = subprocess.Popen(
        scan_cmd(tiny_data, out, "--batch", "2", "--workers", "0,1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=held("wait@1:trial=t01", tmp_path / "never"),
    )
    assert wait_for(lambda: held_at(out, "t01-b2-w0-fp32", 1))  # held there: the signal meets a running trial
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == code, stderr[-2000:]
    assert f"yoloprof scan --resume {out}" in stdout
    r = results(out)
    assert list(r) == ["t01-b2-w0-fp32"] and r["t01-b2-w0-fp32"].status == "interrupted"
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    assert leftovers(out) == []
