"""Does the first collective work? A few small AllReduces across every rank, under a tight timeout.

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N ... -m probes.collective_check \\
        --dir DIR --backend nccl|gloo --timeout-s 60

A hang at the first collective is the most reported multi-GPU failure (peer-to-peer broken between
consumer GPUs, ACS/IOMMU, the wrong network interface), and Ultralytics waits 3 hours on it. `run`
(yoloprof.scan.collective, the parent side, no torch) gives the ranks seconds, ends the whole process group on a timeout and,
on NCCL, tries again with NCCL_P2P_DISABLE=1, so the doctor can name the setting that works.
Each rank writes where it is (start, init, all_reduce, done) to DIR/rank<R>.json as it goes, so a
hang says whether the ranks never met or met and then waited on the collective.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional


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


if __name__ == "__main__":
    raise SystemExit(main())
