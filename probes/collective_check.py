"""Does the first collective work? A few small AllReduces across every rank, under a tight timeout.

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N ... -m probes.collective_check \\
        --dir DIR --backend nccl|gloo --timeout-s 60

A hang at the first collective is the most reported multi-GPU failure (peer-to-peer broken between
consumer GPUs, ACS/IOMMU, the wrong network interface), and Ultralytics waits 3 hours on it. `run`
(the parent side, no torch) gives the ranks seconds, ends the whole process group on a timeout and,
on NCCL, tries again with NCCL_P2P_DISABLE=1, so the doctor can name the setting that works.
Each rank writes where it is (start, init, all_reduce, done) to DIR/rank<R>.json as it goes, so a
hang says whether the ranks never met or met and then waited on the collective.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

from yoloprof import launch
from yoloprof.records import CollectiveCheck

HANG_ENV = "YOLOPROF_TEST_COLLECTIVE_HANG"  # tests only: "1" stalls rank 1 before its first AllReduce; "p2p" too, but
# only while NCCL_P2P_DISABLE is unset (broken peer-to-peer, simulated on gloo)
P2P_OFF = {"NCCL_P2P_DISABLE": "1"}
ITERS = 5
ELEMENTS = 1024
RESULT = "result.json"


def _phase(folder: Path, rank: int, phase: str) -> None:
    (folder / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "phase": phase}))


def _should_hang(rank: int) -> bool:
    how = os.environ.get(HANG_ENV, "")
    return rank == 1 and (how == "1" or (how == "p2p" and os.environ.get("NCCL_P2P_DISABLE") != "1"))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--backend", choices=("nccl", "gloo"), required=True)
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _phase(args.dir, rank, "start")
    import torch
    import torch.distributed as dist

    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    _phase(args.dir, rank, "init")
    dist.init_process_group(args.backend, timeout=timedelta(seconds=args.timeout_s))
    _phase(args.dir, rank, "all_reduce")
    while _should_hang(rank):
        time.sleep(1.0)
    expected = world * (world + 1) / 2  # every rank adds rank + 1
    got = []
    for _ in range(ITERS):
        x = torch.full((ELEMENTS,), float(rank + 1), device=device)
        dist.all_reduce(x)
        got.append((float(x.min()), float(x.max())))  # .item() waits for the GPU
    dist.destroy_process_group()
    ok = all(lo == hi == expected for lo, hi in got)
    _phase(args.dir, rank, "done")
    if rank == 0:
        result = {"ok": ok, "expected": expected, "got": got[-1], "collective_s": time.perf_counter() - t0}
        (args.dir / RESULT).write_text(json.dumps(result))
    return 0 if ok else 1


def _once(world_size: int, backend: str, timeout_s: float, extra: dict[str, str], folder: Path,
          cuda_visible: Optional[str]) -> CollectiveCheck:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    cmd = launch.torchrun_prefix(world_size, launch.free_port()) + [
        "-m", "probes.collective_check", "--dir", str(folder), "--backend", backend, "--timeout-s", str(timeout_s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    start = time.monotonic()
    with open(folder / "launcher.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # fmt: skip
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
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    causes = [x for x in lines if "Error" in x or "error" in x]
    return (causes or lines or [""])[-1][:300]


def run(world_size: int, *, backend: str, timeout_s: float, gpus: Optional[list[str]] = None,
        settings: Optional[list[dict[str, str]]] = None,
        work_dir: Optional[Path] = None) -> list[CollectiveCheck]:  # fmt: skip
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


if __name__ == "__main__":
    raise SystemExit(main())
