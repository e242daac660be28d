"""The CLI in a subprocess: `report DIR` rebuilds outputs; a user's mistake is one line and exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from yoloprof.records import TrialResult, TrialSpec, read_json, write_json

BIN = Path(sys.executable).parent


def run(*args, **kw):
    return subprocess.run([str(BIN / "yoloprof"), *args], capture_output=True, text=True, timeout=300, **kw)


def test_report_rebuilds_outputs_from_records(cpu_scan_copy):
    assert not (cpu_scan_copy / "report.html").exists()  # the fixture keeps records only
    proc = run("report", str(cpu_scan_copy))
    assert proc.returncode == 0, proc.stderr
    assert "Best: t03-b16-w0-fp32" in proc.stdout
    assert all((cpu_scan_copy / n).is_file() for n in ("report.html", "results.csv", "best.yaml"))


@pytest.mark.parametrize(
    "args,words",
    [
        (["scan", "--batch", "0"], "--batch '0' is not a whole number >= 1"),
        (["scan", "--amp", "maybe"], "--amp 'maybe' is not one of"),
        (["scan", "--steps", "0"], "--steps 0"),
        (["scan", "--frobnicate"], "unrecognized arguments"),
        (["report", "/nonexistent/scan"], "is not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words):
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
    assert lines[0].startswith("yoloprof: error: ") and lines[0].count("yoloprof:") == 1  # one prefix
    if args[-1] == "--frobnicate":
        assert lines[0] == "yoloprof: error: unrecognized arguments: --frobnicate (see yoloprof scan --help)"


def fail_every_trial(scan: Path) -> None:
    """Leave each trial of a recorded scan with only an error result, as a scan whose trials all failed would."""
    for tdir in sorted((scan / "trials").iterdir()):
        spec = read_json(tdir / "spec.json", TrialSpec)
        shutil.rmtree(tdir)
        write_json(
            tdir / "result.json",
            TrialResult(spec.trial_id, "error", spec.knobs, spec.world_size, spec.device, error="RuntimeError: boom"),
        )


def assert_no_trial_finished(proc, scan: Path) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"yoloprof: no trial finished; each trial's error is in {scan / 'results.csv'} and its rank logs "
        f"in {scan / 'trials'}/<trial>/"
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "No trial finished" in proc.stdout  # the table and headline still come first
    assert all((scan / n).is_file() for n in ("results.csv", "report.html", "ranking.json"))


def test_resume_of_a_scan_where_no_trial_finished_exits_1(cpu_scan_copy):
    fail_every_trial(cpu_scan_copy)
    proc = run("scan", "--resume", str(cpu_scan_copy), "--no-ceilings")
    assert_no_trial_finished(proc, cpu_scan_copy)
    assert "4 of 4 trials have results; running 0" in proc.stdout
    # `report` only renders what is there: it succeeded at that, so it exits 0 (the headline says what happened)
    report = run("report", str(cpu_scan_copy))
    assert report.returncode == 0 and "No trial finished" in report.stdout, report.stderr


@pytest.mark.slow
def test_scan_where_every_trial_fails_exits_1_and_writes_everything(tiny_data, tmp_path):
    out = tmp_path / "s"
    small = [
        *"--device cpu --nproc 2 --imgsz 64 --steps 2 --warmup 1 --no-defaults --batch 2 --workers 0,1".split(),
    ]
    proc = subprocess.run(
        [str(BIN / "yoloprof"), "scan", *small, "--data", str(tiny_data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "YOLOPROF_TEST_FAULT": "raise@1"},
    )
    assert_no_trial_finished(proc, out)
    results = [read_json(p, TrialResult) for p in sorted(out.glob("trials/*/result.json"))]
    assert [r.status for r in results] == ["error", "error"], [(r.trial_id, r.error) for r in results]
    assert all("injected failure at step 1" in r.error for r in results)
    assert "Ceilings: not run, since no trial finished" in proc.stdout and not (out / "ceilings").exists()
