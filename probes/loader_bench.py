"""The input ceiling: the user's Ultralytics training dataloader alone, no model.

One process per rank, all at once (they share the machine's cores as the ranks of a training run
do), each loading exactly as that rank of a trial does, then timing batches after its workers have
started. What "exactly" takes, and why:

- the same call: `build_dataloader(dataset, batch, workers, shuffle=True, rank=..., drop_last=...,
  pin_memory=..., device=...)` as DetectionTrainer.get_dataloader makes it, with the dataset built
  under `torch_distributed_zero_first` (rank 0 writes the labels cache, the others wait), and the
  seeds the trainer sets (`init_seeds(seed + 1 + RANK)`, RANK/LOCAL_RANK/WORLD_SIZE exported before
  Ultralytics is imported, as torchrun exports them to a trial);
- a per-rank shard: with more than one rank the processes form a gloo process group (a FileStore on
  a file the caller names: no port to race for) and pass rank=r, so Ultralytics builds its own
  DistributedSampler. A DistributedSampler of ours would have to copy what build_dataloader derives
  from it: the workers cap `min(os.cpu_count() // nd, workers, batches)` counts the shard's batches
  (and runs a one-batch shard with no workers at all), and the sampler's seed. Calling it as the
  trainer does keeps those rules Ultralytics' own, in this release and the next. One rank is a
  world-size-1 trial: rank -1, no sampler, as Ultralytics does when WORLD_SIZE is 1;
- the rank's own device: `--device cuda:N` is the CUDA index the trial's rank uses (gpus[r] in the
  scan's CUDA_VISIBLE_DEVICES, inherited unchanged), made current before the loader's iterator
  starts, because the pin-memory thread pins for the current device. Inheriting the environment
  also keeps nd (the devices Ultralytics divides the cores by) the trial's;
- pin_memory as the trial's (Ultralytics still turns it off without a GPU: `nd > 0 and pin_memory`);
- the model's task's dataset (`--model` decides, as in the trial): detect, segment, pose and obb build
  `build_yolo_dataset` with `task=` set (masks, keypoints or rotated boxes loaded and augmented),
  classify builds ClassificationTrainer's ClassificationDataset over the class folders.

The group's barrier lines the ranks' timed windows up. Each batch is timed, so the scan can put a
batch-means interval on the rate. Each process writes one JSON to --out, also on failure (status "error").

`--cold on` times a second window after rank 0 has evicted every file the loaders read from the page
cache (probes/page_cache.py): the rate of an epoch over a dataset larger than the memory the machine
can spare, which reads every image from storage. Only batches that reach the loader after the eviction
count (the ones in flight, workers x prefetch_factor, were read before it and are drained first), and
only within one pass of the sampler, since a second pass would re-read files the window brought back.
Rank 0 then reads the files back if the page cache held them before, so the next probe finds it as
it was. Where the eviction did not take (tmpfs, a file system that ignores the advice) the cold rate
is not measured and the reason is recorded.

    python -m probes.loader_bench --data D --imgsz 640 --batch 16 --workers 8 --rank 0 --ranks 4 \\
        --rendezvous FILE --out OUT.json [--device cuda:N|cpu] [--pin-memory on|off] [--cache off|ram|disk]
        [--batches 20 --warmup 3] [--cold on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil

from yoloprof.text import error_line

GROUP_TIMEOUT = timedelta(minutes=10)  # a peer that died closes its sockets sooner; the scan's timeout backs it up


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def distributed_env(rank: int, ranks: int) -> dict[str, str]:
    """What torchrun exports to a trial's rank; Ultralytics reads it once, at import (RANK, LOCAL_RANK)."""
    return {"WORLD_SIZE": str(ranks), "RANK": str(rank), "LOCAL_RANK": str(rank)} if ranks > 1 else {}


def join_group(rendezvous: str, rank: int, ranks: int) -> bool:
    """A gloo group of the probe processes, so build_dataloader shards as in training. False for one rank."""
    if ranks <= 1:
        return False
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=Path(rendezvous).resolve().as_uri(), rank=rank, world_size=ranks, timeout=GROUP_TIMEOUT
    )
    return True


def build_loader(
    data_yaml: str,
    imgsz: int,
    batch: int,
    workers: int,
    cache: str,
    device: str,
    model: str,
    pin_memory: bool,
    rank: int = -1,
):
    """The train loader of a trial's rank `rank` (-1: one rank, no sampler), on `device`."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.data import ClassificationDataset, build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset
    from ultralytics.utils import RANK
    from ultralytics.utils.torch_utils import init_seeds, torch_distributed_zero_first

    from yoloprof.probes import model_check, offline

    offline.patch_ultralytics()
    task = model_check.model_task(model)
    cfg = get_cfg(
        overrides=dict(
            data=data_yaml,
            imgsz=imgsz,
            batch=batch,
            workers=workers,
            model=model,
            task=task,
            cache={"off": False}.get(cache, cache),
            close_mosaic=0,
        )
    )
    init_seeds(cfg.seed + 1 + RANK, deterministic=cfg.deterministic)  # BaseTrainer.__init__
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # BaseTrainer._setup_ddp; the pin-memory thread pins for this device
    data = check_cls_dataset(data_yaml) if task == "classify" else check_det_dataset(data_yaml)
    with torch_distributed_zero_first(rank):
        if task == "classify":  # ClassificationTrainer.build_dataset
            dataset = ClassificationDataset(data["train"], cfg, augment=True, prefix="train", names=data["names"])
        else:  # DetectionTrainer.build_dataset, which segment, pose and obb use; cfg.task picks the labels
            dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train", rect=False, stride=32)
    return build_dataloader(
        dataset,
        batch=batch,
        workers=workers,
        shuffle=True,
        rank=rank,
        drop_last=bool(cfg.compile),
        pin_memory=pin_memory,
        device=dev,
    )


def _forever(loader):
    """Epoch after epoch, as training iterates (the loader's workers persist across epochs)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # as BaseTrainer does each epoch: a new shuffle per epoch
        yield from loader
        epoch += 1


def dataset_files(dataset) -> list[str]:
    """Every file the loader may read: the images, and the .npy copies Ultralytics reads instead where they exist."""
    samples = getattr(dataset, "samples", None)  # classify: [file, class, npy, im]
    images = list(getattr(dataset, "im_files", None) or [s[0] for s in samples or []])
    npys = list(getattr(dataset, "npy_files", None) or [s[2] for s in samples or [] if len(s) > 2])
    return [str(f) for f in images] + [str(f) for f in npys if Path(f).is_file()]


def _timed(it, batches: int) -> tuple[list[float], list[int]]:
    ms, images = [], []
    for _ in range(batches):
        t = time.perf_counter()
        images.append(int(next(it)["img"].shape[0]))
        ms.append(1e3 * (time.perf_counter() - t))
    return ms, images


def _broadcast(obj, grouped: bool):
    """Rank 0's object on every rank (its eviction's outcome decides what all ranks do next)."""
    if not grouped:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cold_window(it, loader, cache: str, batches: int, consumed: int, rank: int, grouped: bool) -> dict:
    """The cold fields of the result: the loaders' rate after the page cache lost the dataset's files."""
    from yoloprof.probes import page_cache

    if cache == "ram":
        return dict(cold_error="cache=ram: the images were decoded into RAM at set-up; an epoch reads no image file")
    nb, inflight = len(loader), loader.num_workers * (getattr(loader, "prefetch_factor", None) or 0)
    if nb - inflight < 1:
        return dict(
            cold_error=f"a pass of {nb} batches per rank is no longer than the {inflight} batches in flight "
            "(workers x prefetch_factor): no batch would be read after the eviction within one pass"
        )
    room = nb - consumed % nb - inflight  # this pass's batches dispatched after an eviction now
    if room < batches and room < nb - inflight:  # the next pass has more room: go there (fewer than `batches` batches)
        for _ in range(nb - consumed % nb):
            next(it)
        room = nb - inflight
    files = dataset_files(loader.dataset)
    out = {}
    if rank in (0, -1):
        before = page_cache.resident_frac(files)
        ev = page_cache.evict(files)
        out = dict(
            evicted_files=ev.files,
            evicted_bytes=ev.bytes,
            resident_frac_evicted=ev.resident_frac_after,
            resident_frac_before_evict=before,
        )
        if ev.errors:
            out["cold_error"] = f"the eviction failed on {len(ev.errors)} of {len(files)} files ({ev.errors[0]})"
        elif ev.resident_frac_after is not None and ev.resident_frac_after > MAX_RESIDENT_AFTER_EVICT:
            out["cold_error"] = (
                f"the file system kept {100 * ev.resident_frac_after:.0f}% of the files' pages cached "
                "after posix_fadvise(DONTNEED) (tmpfs, or pages another process maps): no cold read to time"
            )
    out = _broadcast(out, grouped)
    if out.get("cold_error"):
        return out
    for _ in range(inflight):  # read before the eviction
        next(it)
    if grouped:
        import torch.distributed as dist

        dist.barrier()
    ms, images = _timed(it, min(batches, room))
    out.update(cold_batch_ms=ms, cold_batch_images=images, cold_img_per_s=sum(images) / (sum(ms) / 1e3))
    if rank in (0, -1) and (out.get("resident_frac_before_evict") or 0) >= 0.5:
        page_cache.read_back(files)  # as the page cache held them before: the next probe's warm window is warm
    return out


MAX_RESIDENT_AFTER_EVICT = 0.05  # more than this still cached after the eviction: the cold window would not be cold


def run(args) -> dict:
    os.environ.update(distributed_env(args.rank, args.ranks))  # before Ultralytics is imported
    grouped = join_group(args.rendezvous, args.rank, args.ranks)
    loader = build_loader(
        args.data,
        args.imgsz,
        args.batch,
        args.workers,
        args.cache,
        args.device,
        args.model,
        args.pin_memory == "on",
        rank=args.rank if grouped else -1,
    )
    it = _forever(loader)
    for _ in range(args.warmup):
        next(it)
    resident = None
    if args.cold == "on" and args.rank == 0:
        from yoloprof.probes import page_cache

        resident = page_cache.resident_frac(dataset_files(loader.dataset))
    if grouped:
        import torch.distributed as dist

        dist.barrier()  # every rank's timed window starts together, as the ranks of a trial load at once
    me = psutil.Process()
    cpu0, t0 = _cpu_seconds(me), time.perf_counter()
    batch_ms, batch_images = _timed(it, args.batches)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds(me) - cpu0
    images = sum(batch_images)
    out = dict(
        rank=args.rank,
        device=str(args.device),
        pin_memory=args.pin_memory == "on",
        pin_memory_effective=bool(loader.pin_memory),
        sampler=type(loader.sampler).__name__,
        batches_per_epoch=len(loader),
        workers_effective=loader.num_workers,
        images=images,
        elapsed_s=elapsed,
        img_per_s=images / elapsed,
        cpu_pct=100.0 * cpu / elapsed,
        batch_ms=batch_ms,
        batch_images=batch_images,
        resident_frac_warm=resident,
        status="ok",
        error=None,
    )
    if args.cold == "on":
        try:  # the warm figure stands whatever happens to the cold one
            out.update(
                cold_window(
                    it,
                    loader,
                    args.cache,
                    args.batches,
                    args.warmup + args.batches,
                    args.rank if grouped else -1,
                    grouped,
                )
            )
        except Exception as exc:  # noqa: BLE001 - recorded as the reason the cold rate is n/a
            out["cold_error"] = f"the cold window failed: {error_line(exc)}"
    if hasattr(loader, "close"):
        loader.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yoloprof.probes.loader_bench")
    p.add_argument("--data", required=True)
    p.add_argument(
        "--model", default="yolo26n.yaml", help="its task picks the dataset (detect, segment, pose, obb, classify)"
    )
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="per rank")
    p.add_argument("--workers", type=int, required=True, help="per rank")
    p.add_argument("--cache", default="off")
    p.add_argument("--device", default="cpu", help="cpu, or cuda:N: the CUDA index this rank's trial uses")
    p.add_argument("--pin-memory", choices=("on", "off"), default="on", help="Ultralytics' default is on")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--rendezvous", help="a file all ranks name (absent or empty at start); needed for --ranks > 1")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--cold",
        choices=("on", "off"),
        default="off",
        help="also time the loaders after evicting the dataset's files from the page cache",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.ranks > 1 and not args.rendezvous:
            raise ValueError("--ranks > 1 needs --rendezvous FILE")
        result = run(args)
    except Exception as exc:  # noqa: BLE001 - recorded, the scan goes on
        result = dict(rank=args.rank, status="error", error=error_line(exc))
    Path(args.out).write_text(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0 if result["status"] == "ok" else 1)  # skip teardown: the loader's workers are closed


if __name__ == "__main__":
    main()
