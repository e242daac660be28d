"""`yoloprof probe loader|compute|allreduce`: one ceiling alone, with the scan's checks and context."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from yoloprof.analysis import dataset_fit
from yoloprof.errors import UsageError
from yoloprof.scan import cluster
from yoloprof.scan.ceiling_runs import run_ceilings
from yoloprof.scan.orchestrate import lead, prepare
from yoloprof.scan.request import ScanRequest, prepare_out


def run(kind: str, req: ScanRequest, console: Console) -> Path:
    """`yoloprof probe loader|compute|allreduce`: one ceiling, standalone, into runs/yoloprof/probe-N."""
    ctx = prepare(req, console)
    out = prepare_out(req, kind="probe")
    console.print(f"[bold]yoloprof probe {kind}[/] -> {out}   ({ctx.hw_why}; model {ctx.model}, imgsz {ctx.imgsz})")
    if kind == "loader":
        console.print(f"  memory: {dataset_fit.summary(ctx.fit())}", markup=False, highlight=False)
    buckets = []
    if kind == "allreduce":
        from yoloprof.probes import model_check

        buckets = model_check.ddp_bucket_sizes(ctx.model, len(ctx.dataset.classes))
    leader = None
    if ctx.nodes.multi:
        if kind != "allreduce":
            raise UsageError(f"probe {kind} measures one node; --nnodes is for the allreduce probe")
        leader = lead(ctx.nodes, out, cluster.hello(ctx.hw, ctx.dataset, ctx.model, ctx.imgsz), console)
    with cluster.leading(leader):
        run_ceilings(out, ctx, req, console, bucket_sizes=buckets, which=(kind,))
    return out
