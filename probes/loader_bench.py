"""The input ceiling: the user's Ultralytics training dataloader alone, no model.

One process per rank, all at once (they share the machine's cores as the ranks of a training run
do), each building the dataset and loader the way DetectionTrainer does (same augmentation,
imgsz, batch per rank, cache, and Ultralytics' workers cap) and timing batches after its workers
have started. The processes line up on a file barrier before timing, so their windows overlap.

    python -m probes.loader_bench --data D --imgsz 640 --batch 16 --workers 8 --rank 0 --ranks 4 \\
        --barrier DIR --out OUT.json [--device cuda|cpu] [--cache off|ram|disk] [--batches 20 --warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _barrier(folder: Path, rank: int, ranks: int, timeout_s: float = 600.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready{rank}").write_text("")
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob("ready*"))) < ranks:
        if time.monotonic() > deadline:
            raise TimeoutError("the other loader processes never became ready")
        time.sleep(0.01)


def build_loader(data_yaml: str, imgsz: int, batch: int, workers: int, cache: str, device: str, model: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    from yoloprof.worker import offline

    offline.patch_ultralytics()
    cfg = get_cfg(overrides=dict(data=data_yaml, imgsz=imgsz, batch=batch, workers=workers, model=model,
                                 cache={"off": False}.get(cache, cache), close_mosaic=0))  # fmt: skip
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train", rect=False, stride=32)
    import torch

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    return build_dataloader(dataset, batch=batch, workers=workers, shuffle=True, rank=-1, device=dev)


def _forever(loader):
    """Epoch after epoch, as training iterates (the loader's workers persist across epochs)."""
    while True:
        yield from loader


def run(args) -> dict:
    loader = build_loader(args.data, args.imgsz, args.batch, args.workers, args.cache, args.device, args.model)
    it = _forever(loader)
    for _ in range(args.warmup):
        next(it)
    if args.barrier:
        _barrier(Path(args.barrier), args.rank, args.ranks)
    me = psutil.Process()
    cpu0, t0, images = _cpu_seconds(me), time.perf_counter(), 0
    for _ in range(args.batches):
        images += int(next(it)["img"].shape[0])
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds(me) - cpu0
    out = dict(rank=args.rank, workers_effective=loader.num_workers, images=images, elapsed_s=elapsed,
               img_per_s=images / elapsed, cpu_pct=100.0 * cpu / elapsed, status="ok", error=None)  # fmt: skip
    if hasattr(loader, "close"):
        loader.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probes.loader_bench")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="yolo11n.yaml")
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="per rank")
    p.add_argument("--workers", type=int, required=True, help="per rank")
    p.add_argument("--cache", default="off")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--barrier")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        result = run(args)
    except Exception as exc:  # noqa: BLE001 - recorded, the scan goes on
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = dict(rank=args.rank, status="error", error=f"{type(exc).__name__}: {line}")
    Path(args.out).write_text(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0 if result["status"] == "ok" else 1)  # skip teardown: the loader's workers are closed


if __name__ == "__main__":
    main()
