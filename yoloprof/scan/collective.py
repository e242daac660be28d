"""The parent side of the first-collective check: launch probes.collective_check, time it out, retry.

The ranks get seconds, not Ultralytics' 3 hours; a timeout ends the whole process group, and on
NCCL the check tries again with NCCL_P2P_DISABLE=1 so the doctor can name the setting that works.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from yoloprof.probes.collective_check import P2P_OFF, RESULT
from yoloprof.scan import launch
from yoloprof.analysis.aggregate import log_tail
from yoloprof.records import CollectiveCheck


def _once(
    world_size: int, backend: str, timeout_s: float, extra: dict[str, str], folder: Path, cuda_visible: Optional[str]
) -> CollectiveCheck:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = launch.torchrun_prefix(world_size, launch.free_port()) + [
        "-m",
        "yoloprof.probes.collective_check",
        "--dir",
        str(folder),
        "--backend",
        backend,
        "--timeout-s",
        str(timeout_s),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    start = time.monotonic()
    with open(folder / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout_s)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        finally:
            launch.kill_group(proc, grace_s=1.0)
    wall = time.monotonic() - start
    phases = []
    for r in range(world_size):
        try:
            phases.append(json.loads((folder / f"rank{r}.json").read_text())["phase"])
        except (OSError, ValueError, KeyError):
            phases.append("not started")
    check = CollectiveCheck(backend, world_size, dict(extra), "ok", timeout_s, wall, phases)
    try:
        result = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        result = None
    if hung:
        check.status, check.error = "hang", f"no answer within {timeout_s:.0f} s"
    elif result is None or proc.returncode != 0:
        check.status, check.error = "error", _tail(folder / "launcher.log") or f"exit code {proc.returncode}"
    elif not result["ok"]:
        check.status, check.error = "error", f"wrong sum: {result['got']} instead of {result['expected']}"
    return check


def _tail(log: Path) -> str:
    """The last line that says something (torchrun ends with its own summary, the cause is above it)."""
    lines = [x.strip() for x in log_tail(log, 200)]  # colour codes and progress redraws already gone
    causes = [x for x in lines if "Error" in x or "error" in x]
    return (causes or lines or [""])[-1][:300]


def run(
    world_size: int,
    *,
    backend: str,
    timeout_s: float,
    gpus: Optional[list[str]] = None,
    settings: Optional[list[dict[str, str]]] = None,
    work_dir: Optional[Path] = None,
) -> list[CollectiveCheck]:
    """One check per setting until one works. Default settings: as inherited, then (NCCL only, and
    only if it is not set already) with NCCL_P2P_DISABLE=1. gpus: CUDA_VISIBLE_DEVICES entries."""
    if settings is None:
        settings = [{}] if backend != "nccl" or os.environ.get("NCCL_P2P_DISABLE") == "1" else [{}, P2P_OFF]
    with tempfile.TemporaryDirectory(prefix="yoloprof-collective-") as tmp:
        base = Path(work_dir) if work_dir is not None else Path(tmp)
        out = []
        for k, extra in enumerate(settings):
            out.append(_once(world_size, backend, timeout_s, extra, base / f"try{k}", ",".join(gpus) if gpus else None))
            if out[-1].status == "ok":
                break
    return out
