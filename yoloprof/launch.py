"""Run one trial: torchrun in a session of its own, a free port, the trial's environment.

Every process of a trial (torchrun, its ranks, their DataLoader workers) shares one process
group, so a timeout or an interrupt ends all of them with one killpg and nothing outlives the scan.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from yoloprof.aggregate import LaunchOutcome
from yoloprof.records import TrialSpec, write_json


def offline_env(cache_dir: Path) -> dict[str, str]:
    """Variables that keep Ultralytics off the network and out of the user's home folders."""
    cache_dir = Path(cache_dir)
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(cache_dir / "ultralytics"),
        "MPLCONFIGDIR": str(cache_dir / "matplotlib"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(spec: TrialSpec, spec_path: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={spec.world_size}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m", "yoloprof.worker", str(spec_path),
    ]  # fmt: skip


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the trial's process group, then SIGKILL whatever is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; stragglers (DataLoader workers) may remain in the group
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


class TrialInterrupted(Exception):
    """The scan was asked to stop (SIGINT/SIGTERM) while a trial ran."""


def run_trial(
    spec: TrialSpec,
    trial_dir: Path,
    *,
    cache_dir: Path,
    timeout_s: float,
    on_poll: Optional[Callable[[], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    extra_env: Optional[dict[str, str]] = None,
) -> LaunchOutcome:
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    spec_path = trial_dir / "spec.json"
    write_json(spec_path, spec)
    env = {**os.environ, **offline_env(cache_dir), **spec.env, **(extra_env or {})}
    port = free_port()
    cmd = torchrun_command(spec, spec_path, port)
    (trial_dir / "cmd.txt").write_text(" ".join(cmd) + "\n")
    start = time.monotonic()
    with open(trial_dir / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        timed_out = interrupted = False
        try:
            while proc.poll() is None:
                if on_poll is not None:
                    on_poll()
                if time.monotonic() - start > timeout_s:
                    timed_out = True
                    break
                if should_stop is not None and should_stop():
                    interrupted = True
                    break
                time.sleep(0.25)
        finally:
            kill_group(proc)
    return LaunchOutcome(
        returncode=proc.returncode,
        timed_out=timed_out,
        interrupted=interrupted,
        wall_s=time.monotonic() - start,
    )
