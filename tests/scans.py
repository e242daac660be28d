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


NETBLOCK = Path(__file__).parent / "netblock"
SECRETS = {
    "MY_API_TOKEN": "tok-5e5e5e",
    "NCCL_TEST_KEY": "key-6f6f6f",
    "AWS_SECRET_ACCESS_KEY": "sec-7a7a7a",
    "CUDA_DB_PASSWORD": "pw-8b8b8b",
}


def shared_scan(data, root: Path):
    """The real scan test_scan_cpu.py and test_scan_ceilings.py both read (one launch of each kind, not two): two
    trials (workers 0 and 1), the three ceilings and the epoch job, with the network blocked for every process, a
    fresh HOME and secrets in the environment. Returns the scan folder, the finished process and `root`."""
    out, home, netlog = root / "s", root / "home", root / "net.log"
    home.mkdir()
    path = os.pathsep.join([str(NETBLOCK)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {
        **os.environ,
        **SECRETS,
        "PYTHONPATH": path,
        "YOLOPROF_TEST_NETLOG": str(netlog),
        "HOME": str(home),
        "NCCL_DEBUG": "WARN",
        "OMP_PROC_BIND": "false",
    }
    probe = "import socket\ntry: socket.create_connection(('203.0.113.7', 80), timeout=1)\nexcept OSError: pass"
    subprocess.run([sys.executable, "-c", probe], env=env, timeout=30)
    assert "203.0.113.7" in netlog.read_text()  # the blocker is live in child processes
    netlog.unlink()
    flags = "--device cpu --nproc 2 --imgsz 64 --batch 4 --workers 0,1 --steps 3 --warmup 1 --no-defaults"
    proc = subprocess.run(
        [str(BIN / "yoloprof"), "scan", *flags.split(), "--precision", "off", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, root


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
