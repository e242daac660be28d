"""The three ceilings as a scan runs them: which probes, with which of the scan's knobs, printed as they end.

Called by the scan's plan (orchestrate), by `--strategy auto` before its search, and by `yoloprof probe`; it
takes the scan's prepared context (orchestrate.Context) and imports nothing above it.
"""

from __future__ import annotations

from pathlib import Path
from rich.console import Console

from yoloprof import paths
from yoloprof.analysis import dataset_fit
from yoloprof.search import usercfg


def run_ceilings(
    folder: Path,
    ctx,  # orchestrate.Context: not imported, orchestrate sits above this module
    req,  # request.ScanRequest
    console: Console,
    *,
    bucket_sizes: list[int],
    which: tuple[str, ...] = ("loader", "compute", "allreduce"),
) -> None:
    """The three ceilings for this scan's knobs: workers for input, batch x AMP for compute, presets for link."""
    from yoloprof.reports import terminal
    from yoloprof.scan import ceilings

    hw, axes, n = ctx.hw, ctx.plan.axes, max(ctx.hw.world_size, 1)
    if "loader" in which:
        console.print("Input ceiling: the dataloader alone, one loader per rank at once, warm then cold...")
        c = ceilings.loader(
            folder,
            data=ctx.dataset.data,
            model=ctx.model,
            imgsz=ctx.imgsz,
            batch_per_rank=max(min(axes.batch) // n, 1),
            workers=axes.workers,
            ranks=hw.per_node,
            device=hw.device,
            cache=axes.cache[0],
            cache_dir=paths.cache_dir(),
            batches=req.steps,
            pin_memory=axes.pin_memory,
            gpus=hw.gpus,
            caches=disk_too(ctx),
            cold=dataset_fit.cold_skip(ctx.fit()) or True,
        )
        console.print(terminal.loader_table(c))
    if "compute" in which:
        console.print("Compute ceiling: the training step on one device, batch already there...")
        specs = ceilings.compute_specs(hw, axes.batch, axes.amp, **ctx.trial_args(req))
        specs = usercfg.for_compute(specs, ctx.train_cfg_args, n)  # --cfg: its arguments hold here too
        gpu = next((g for g in ctx.env.gpus if hw.gpus and g.index == hw.gpus[0]), None)
        c = ceilings.compute(
            folder,
            specs,
            cache_dir=paths.cache_dir(),
            device_name=gpu.name if gpu else "cpu",
            device_mem_total_mib=gpu.mem_total_mib if gpu else None,
        )
        console.print(terminal.compute_table(c))
    if "allreduce" in which:
        if n < 2:
            console.print("Link ceiling: not measured (one rank runs no AllReduce).")
            return
        biggest = req.allreduce_max_bytes or (256 if hw.device == "cuda" else 32) * 2**20  # gloo: memcpy speed by then
        console.print(
            "Link ceiling: AllReduce sweep on the scan's ranks"
            + (f", across {hw.nnodes} nodes, then within node 0" if hw.nnodes > 1 else "")
            + "..."
        )
        for preset in axes.nccl:
            c = ceilings.allreduce(
                folder, hw=hw, preset=preset, bucket_sizes=bucket_sizes, cache_dir=paths.cache_dir(), sizes_max=biggest
            )
            console.print(terminal.allreduce_table(c))
            if hw.nnodes > 1 and hw.per_node > 1:
                c = ceilings.allreduce(
                    folder,
                    hw=hw,
                    preset=preset,
                    bucket_sizes=bucket_sizes,
                    cache_dir=paths.cache_dir(),
                    sizes_max=biggest,
                    one_node=True,
                )
                console.print(terminal.allreduce_table(c))
            elif hw.nnodes > 1:
                console.print("  within one node: not measured (one rank per node runs no intra-node AllReduce)")


def disk_too(ctx) -> list[str]:
    """cache=disk for the input ceiling as well, where the dataset does not fit and the scan may try it: its
    cold rate is what a cache=disk trial's epochs read at."""
    cache = ctx.plan.axes.cache
    may = "disk" in cache or (ctx.strategy == "auto" and "disk" in (ctx.given.get("cache") or ["disk"]))
    return ["disk"] if ctx.fit().fits is False and cache[0] != "disk" and may else []
