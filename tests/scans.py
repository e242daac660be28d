"""Helpers the real-scan tests share: a small real CPU scan's command, its results, the processes it left, and
waiting for a trial held by an injected fault (YOLOPROF_TEST_FAULT, YOLOPROF_TEST_RELEASE)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from yoloprof.records import TrialResult, read_json

BIN = Path(sys.executable).parent
SMALL = [
    *"--device cpu --nproc 2 --imgsz 64 --steps 3 --warmup 1 --no-ceilings --no-defaults --precision off".split(),
]


def scan_cmd(data, out, *extra, epoch_job: bool = False):
    """A small real scan; without the epoch job unless a test is about it (it adds a launch per world size)."""
    return [
        str(BIN / "yoloprof"),
        "scan",
        *SMALL,
        *([] if epoch_job else ["--no-epoch-job"]),
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]


def held_at(out: Path, trial: str, step: int) -> bool:
    """The trial's rank 0 recorded `step`: with a `wait@<step>` fault it is now held there, still running."""
    f = out / "trials" / trial / "rank0.jsonl"
    return f.exists() and f'"kind": "step", "rank": 0, "step": {step},' in f.read_text()


def held(fault: str, release: Path) -> dict:
    """Environment for a scan whose trials block where `fault` says until `release` exists."""
    return {**os.environ, "YOLOPROF_TEST_FAULT": fault, "YOLOPROF_TEST_RELEASE": str(release)}


def run_scan(data, out, *extra, fault=None, timeout=600):
    env = {**os.environ, **({"YOLOPROF_TEST_FAULT": fault} if fault else {})}
    return subprocess.run(scan_cmd(data, out, *extra), capture_output=True, text=True, env=env, timeout=timeout)


def leftovers(out: Path) -> list[str]:
    """Processes of this scan still alive: anything whose command line names its folder."""
    found = []
    for p in psutil.process_iter(["cmdline", "pid"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(out) in cmd and p.info["pid"] != os.getpid():
            found.append(cmd[:120])
    return found


def results(out: Path) -> dict[str, TrialResult]:
    return {p.parent.name: read_json(p, TrialResult) for p in sorted(out.glob("trials/*/result.json"))}


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
