"""The command line's flags: one function per subcommand, its flags grouped as the docs are (docs/scanning.md).
Parsing only; yoloprof/cli.py dispatches."""

from __future__ import annotations

import argparse

from yoloprof import __version__
from yoloprof.errors import UsageError
from yoloprof.scan import STEPS, WARMUP
from yoloprof.search.knob_table import KNOBS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other input error; main() prints the prefix
        raise UsageError(f"{message} (see {self.prog} --help)")


def _run_flags(p, again: bool = False) -> None:
    """The run the epoch and cost figures predict; `report` re-prices a saved scan with them."""
    was = " (default: as the scan had it)" if again else ""
    p.add_argument(
        "--epochs",
        type=int,
        help="epochs of the training run to predict (default: your --cfg's epochs, else Ultralytics' 100)" + was,
    )
    p.add_argument(
        "--gpu-hour-price",
        type=float,
        metavar="PRICE",
        help="price of one GPU-hour (of one rank-hour on CPU ranks): adds cost per epoch and per run" + was,
    )
    p.add_argument("--currency", help="currency of --gpu-hour-price (default USD)" + was)


def _node_flags(p) -> None:
    """Several nodes: the same command on each, with its own --node-rank; node 0 writes the outputs."""
    p.add_argument("--nnodes", type=int, help="nodes the scan spans (default 1); run the same command on each")
    p.add_argument("--node-rank", type=int, help="this node: 0 plans and writes every output, 1..N-1 follow it")
    p.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="node 0's address and a free port: the scan's store and every trial's torchrun rendezvous start there",
    )


MEM_LIMIT_HELP = (
    "memory the dataset may use, with its unit: e.g. 512MiB, 1.5GiB, 800MB (a bare number is MiB; "
    "default: what the machine has available, or its cgroup's limit; also $YOLOPROF_MEM_LIMIT). A "
    "dataset larger than 80%% of it is read from storage every epoch: epochs are priced at the loaders' "
    "cold rate"
)


def follower(args) -> bool:
    from yoloprof import nodes

    n = nodes.parse(args.nnodes, args.node_rank, args.rdzv_endpoint)
    return n.multi and not n.leader


def parser() -> argparse.ArgumentParser:
    """Every subcommand's parser; a mistake raises UsageError (one line, exit 2)."""
    p = _Parser(prog="yoloprof", description="Measure and tune multi-GPU Ultralytics YOLO training.")
    p.add_argument("--version", action="version", version=f"yoloprof {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    _scan(sub)
    _probe(sub)
    _reports(sub)
    _dataset(sub)
    return p


def _scan(sub) -> None:
    """`yoloprof scan`: what to train, the search and its budget, the knobs, the prediction, nodes."""
    s = sub.add_parser("scan", help="run short real DDP trials over settings and rank them")
    w = s.add_argument_group("what to train", "the ranks, the model, the data; the optimizer and your own config")
    w.add_argument("--gpus", help="GPU indices, one rank each (default: every visible GPU)")
    w.add_argument("--device", help="'cpu' to run CPU ranks with gloo even where GPUs exist")
    w.add_argument("--nproc", type=int, help="CPU ranks (default 2)")
    w.add_argument("--model", help="model YAML or local .pt (default yolo26n.yaml, built without download)")
    w.add_argument(
        "--data",
        help="data yaml, or a classify folder (default: a synthetic dataset of the model's task, generated once)",
    )
    w.add_argument("--imgsz", type=int, help="image size (default 640 on GPU, 128 on CPU)")
    w.add_argument(
        "--optimizer",
        help="optimizer of every trial and of best.yaml, e.g. SGD, AdamW, MuSGD (default: "
        "auto, Ultralytics' own default, picked per trial for the planned run: MuSGD past 10000 optimizer "
        "iterations, else AdamW; best.yaml then leaves it to Ultralytics)",
    )
    w.add_argument(
        "--cfg",
        metavar="YAML",
        help="your Ultralytics training config (what `yolo train cfg=` takes): "
        "its arguments hold in every trial, its throughput settings are the baseline, best.yaml is it "
        "with only the measured settings changed",
    )

    se = s.add_argument_group("the search and its budget", "which trials run, how long each measures, where they go")
    se.add_argument(
        "--strategy",
        choices=("auto", "grid"),
        help="auto: ceilings, then a search over every knob within "
        "--budget (the default); grid: every combination of the lists (the default when you name lists)",
    )
    se.add_argument(
        "--budget", help="auto: wall time for the whole scan, e.g. 5m, 300s, 1h (default 5m on CPU, 10m on GPUs)"
    )
    se.add_argument("--steps", type=int, help=f"measured steps per trial, at least (default {STEPS})")
    se.add_argument("--max-steps", type=int, help="measured steps per trial, at most (default 3 x --steps)")
    se.add_argument(
        "--precision",
        help="measure each trial until its images/s is known within this, 95%% "
        "interval half-width (default 3%%; 'off': exactly --steps)",
    )
    se.add_argument("--warmup", type=int, help=f"warm-up steps per trial, not measured (default {WARMUP})")
    se.add_argument(
        "--baseline",
        metavar="K=V,...",
        help="your current settings, measured as a trial to compare with "
        "(e.g. batch=32,workers=4,amp=off; unnamed knobs keep Ultralytics' defaults)",
    )
    se.add_argument(
        "--ranks",
        help="world sizes to compare, e.g. 1,2,4 (scaling; same batch per rank; --batch is global at the largest)",
    )
    se.add_argument("--no-defaults", action="store_true", help="do not add a trial with Ultralytics' default settings")
    se.add_argument(
        "--no-ceilings", action="store_true", help="skip the input, compute and link ceilings after the trials"
    )
    se.add_argument(
        "--no-epoch-job",
        action="store_true",
        help="skip timing validation, saving and the epoch end once "
        "per world size (the epoch and run figures then say they leave them out)",
    )
    se.add_argument(
        "--no-reuse",
        action="store_true",
        help="launch torchrun for every trial instead of reusing ranks between trials of the same environment",
    )
    se.add_argument("--trial-timeout", type=float, help="seconds before a trial is ended as hung")
    se.add_argument("--resume", metavar="DIR", help="finish an interrupted scan: run only the trials without a result")
    se.add_argument("--out", help="scan folder (default runs/yoloprof/scan-N, never overwriting)")

    k = s.add_argument_group("the knobs", "the values to try; without any, --strategy auto searches them all")
    for knob in KNOBS:
        k.add_argument(knob.flag, help=f"comma list, e.g. {knob.example}")

    pred = s.add_argument_group("the prediction and its price", "the run the epoch, run and cost figures predict")
    _run_flags(pred)
    pred.add_argument("--mem-limit", metavar="SIZE", help=MEM_LIMIT_HELP)
    _node_flags(s.add_argument_group("nodes", "a scan across several machines: the same command on each"))


def _probe(sub) -> None:
    """`yoloprof probe`: one ceiling alone."""
    pr = sub.add_parser("probe", help="measure one ceiling alone: loader (input), compute, allreduce (link)")
    pr.add_argument(
        "kind",
        choices=("loader", "compute", "allreduce"),
        help="loader: the dataloader alone (input); compute: the training step on one device with the "
        "batch already there; allreduce: the AllReduce sweep on the ranks (link)",
    )
    pr.add_argument("--gpus", help="GPU indices, one rank each (default: every visible GPU)")
    pr.add_argument("--device", help="'cpu' to probe CPU ranks with gloo even where GPUs exist")
    pr.add_argument("--nproc", type=int, help="CPU ranks (default 2)")
    pr.add_argument(
        "--model",
        help="compute, allreduce: model YAML or local .pt (default yolo26n.yaml; its "
        "gradient buckets set the sweep's sizes)",
    )
    pr.add_argument("--data", help="loader, compute: data yaml or classify folder (default: the synthetic dataset)")
    pr.add_argument("--imgsz", type=int, help="loader, compute: image size (default 640 on GPU, 128 on CPU)")
    pr.add_argument("--out", help="folder for the probe's records (default runs/yoloprof/probe-N)")
    pr.add_argument("--batch", help="loader, compute: comma list, e.g. 16,32 (global, all ranks)")
    pr.add_argument("--workers", help="loader: comma list, e.g. 0,2,8 (per rank)")
    pr.add_argument("--amp", help="compute: comma list, e.g. on,off,bf16 (GPU; off on CPU)")
    pr.add_argument("--cache", help="loader: comma list, e.g. off,ram,disk")
    pr.add_argument("--nccl", help="allreduce: comma list, e.g. default,ring,tree (GPU)")
    pr.add_argument("--optimizer", help="compute: the optimizer (default auto, picked for 100 epochs of the data)")
    pr.add_argument("--steps", type=int, help=f"timed steps or batches (default {STEPS})")
    pr.add_argument("--warmup", type=int, help=f"steps or batches run before timing (default {WARMUP})")
    pr.add_argument("--mem-limit", metavar="SIZE", help=MEM_LIMIT_HELP)
    pr.add_argument(
        "--max-mib",
        type=float,
        help="allreduce: the sweep's largest message in MiB (default 256 on GPUs, "
        "32 on CPU; the model's bucket sizes are always added)",
    )
    _node_flags(pr)


def _reports(sub) -> None:
    """`report`, `compare`, `doctor`, `train` and `slurm` (the last two parse their own flags)."""
    r = sub.add_parser(
        "report", help="rebuild report.html, results.csv and best.* from a scan folder, or a run's run.html"
    )
    r.add_argument("dir", help="a scan folder, or a run folder of yoloprof train (its run.html and summary.json)")
    _run_flags(r, again=True)

    c = sub.add_parser("compare", help="a side-by-side report of two scans (before/after a change)")
    c.add_argument("dir_a", help="the scan before")
    c.add_argument("dir_b", help="the scan after")
    c.add_argument("--out", help="folder for compare.html (default runs/yoloprof/compare-N)")

    dr = sub.add_parser("doctor", help="check GPUs, driver, NCCL, /dev/shm, limits and a first AllReduce before a scan")
    dr.add_argument("--gpus", help="GPU indices a scan would use (default: every visible GPU)")
    dr.add_argument("--device", help="'cpu' to check CPU ranks with gloo even where GPUs exist")
    dr.add_argument("--nproc", type=int, help="CPU ranks (default 2)")
    dr.add_argument("--timeout", type=float, default=60.0, help="seconds for each AllReduce try (default 60)")
    dr.add_argument("--json", metavar="OUT", help="also write the readings and findings to this JSON file")

    # train and slurm parse their own arguments (Ultralytics' k=v, the scan's flags): listed here for --help
    sub.add_parser(
        "train",
        add_help=False,
        help="train with Ultralytics under torchrun with best.yaml/best.env, "
        "on one node or several (see yoloprof train --help)",
    )
    sub.add_parser(
        "slurm",
        add_help=False,
        help="write a SLURM batch script that runs a scan on every node of the allocation (see yoloprof slurm --help)",
    )


def _dataset(sub) -> None:
    """`yoloprof dataset`: the synthetic dataset."""
    d = sub.add_parser("dataset", help="write the synthetic YOLO dataset yoloprof uses by default")
    d.add_argument("--out", required=True, help="folder to create")
    d.add_argument("--images", type=int, default=512, help="training images (default 512)")
    d.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    d.add_argument(
        "--task",
        default="detect",
        choices=("detect", "segment", "pose", "obb", "classify"),
        help="label format: detect boxes (default), segment polygons, pose keypoints, obb rotated "
        "boxes, or classify class folders",
    )
