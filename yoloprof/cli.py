"""Command line: flag parsing only; the work is in scan, outputs and dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from yoloprof import __version__
from yoloprof.errors import ScanFailed, UsageError


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


def _follower(args) -> bool:
    from yoloprof import nodes

    n = nodes.parse(args.nnodes, args.node_rank, args.rdzv_endpoint)
    return n.multi and not n.leader


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="yoloprof", description="Measure and tune multi-GPU Ultralytics YOLO training.")
    p.add_argument("--version", action="version", version=f"yoloprof {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

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
    se.add_argument("--steps", type=int, default=20, help="measured steps per trial, at least (default 20)")
    se.add_argument("--max-steps", type=int, help="measured steps per trial, at most (default 3 x --steps)")
    se.add_argument(
        "--precision",
        help="measure each trial until its images/s is known within this, 95%% "
        "interval half-width (default 3%%; 'off': exactly --steps)",
    )
    se.add_argument("--warmup", type=int, default=5, help="warm-up steps per trial, not measured (default 5)")
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
    for flag, example in (
        ("batch", "16,32 (global, all ranks)"),
        ("workers", "2,8 (per rank)"),
        ("amp", "on,off,bf16"),
        ("pin-memory", "on,off"),
        ("cache", "off,ram,disk"),
        ("nccl", "default,ring,tree"),
        ("deterministic", "on,off (off gives up bit-reproducible runs)"),
        ("compile", "off,default,reduce-overhead,max-autotune-no-cudagraphs"),
        ("channels-last", "on,off (NHWC on CUDA)"),
    ):
        k.add_argument(f"--{flag}", help=f"comma list, e.g. {example}")

    pred = s.add_argument_group("the prediction and its price", "the run the epoch, run and cost figures predict")
    _run_flags(pred)
    pred.add_argument("--mem-limit", metavar="SIZE", help=MEM_LIMIT_HELP)
    _node_flags(s.add_argument_group("nodes", "a scan across several machines: the same command on each"))

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
    pr.add_argument("--steps", type=int, default=20, help="timed steps or batches (default 20)")
    pr.add_argument("--warmup", type=int, default=5, help="steps or batches run before timing (default 5)")
    pr.add_argument("--mem-limit", metavar="SIZE", help=MEM_LIMIT_HELP)
    pr.add_argument(
        "--max-mib",
        type=float,
        help="allreduce: the sweep's largest message in MiB (default 256 on GPUs, "
        "32 on CPU; the model's bucket sizes are always added)",
    )
    _node_flags(pr)

    r = sub.add_parser("report", help="rebuild report.html, results.csv and best.* from a scan folder")
    r.add_argument("dir", help="a scan folder")
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
    return p


def _cmd_scan(args, argv: list[str], console: Console) -> int:
    from reports.terminal import ranked_table
    from yoloprof.scan import orchestrate as scan

    keys = (
        "gpus",
        "device",
        "nproc",
        "model",
        "data",
        "imgsz",
        "optimizer",
        "steps",
        "warmup",
        "out",
        "batch",
        "workers",
        "amp",
        "pin_memory",
        "cache",
        "nccl",
        "deterministic",
        "compile",
        "channels_last",
        "trial_timeout",
        "no_ceilings",
        "no_epoch_job",
        "baseline",
        "no_defaults",
        "ranks",
        "strategy",
        "budget",
        "precision",
        "max_steps",
        "no_reuse",
        "cfg",
        "epochs",
        "gpu_hour_price",
        "currency",
        "nnodes",
        "node_rank",
        "rdzv_endpoint",
        "mem_limit",
    )
    req = scan.ScanRequest(
        **{k: getattr(args, k) for k in keys if k != "optimizer"},
        command=["yoloprof", *argv],
        optimizer=args.optimizer or "auto",
    )
    if args.resume:  # the saved plan's optimizer: --optimizer is refused below, as every setting of the plan is
        kept = (
            "trial_timeout",
            "no_ceilings",
            "no_epoch_job",
            "steps",
            "warmup",
            "no_reuse",
            "nnodes",
            "node_rank",
            "rdzv_endpoint",
        )
        others = [k for k in keys if k not in kept and getattr(args, k) not in (None, False)]
        if others:
            raise UsageError(f"--resume runs the saved plan as it was; drop --{others[0].replace('_', '-')}")
        out, folder, code = scan.resume(args.resume, req, console)
    elif _follower(args):
        return scan.follow(req, console)
    else:
        out, folder, code = scan.run(req, console)
    _print_outputs(console, out, folder, ranked_table)
    if code == scan.NO_TRIAL_OK:
        print(
            f"yoloprof: no trial finished; each trial's error is in {folder / 'results.csv'} and its rank logs "
            f"in {folder / 'trials'}/<trial>/",
            file=sys.stderr,
        )
    return code


def _cmd_probe(args, argv: list[str], console: Console) -> int:
    from yoloprof.scan import orchestrate as scan

    keys = (
        "gpus",
        "device",
        "nproc",
        "model",
        "data",
        "imgsz",
        "optimizer",
        "steps",
        "warmup",
        "out",
        "batch",
        "workers",
        "amp",
        "cache",
        "nccl",
        "nnodes",
        "node_rank",
        "rdzv_endpoint",
        "mem_limit",
    )
    req = scan.ScanRequest(
        **{k: getattr(args, k) for k in keys if k != "optimizer"},
        command=["yoloprof", *argv],
        optimizer=args.optimizer or "auto",
    )
    if args.max_mib is not None:
        if args.max_mib < 0.0625:
            raise UsageError(
                f"--max-mib {args.max_mib}: give a size in MiB, at least 0.0625 (the sweep starts at 64 KiB)"
            )
        req.allreduce_max_bytes = int(args.max_mib * 2**20)
    if _follower(args):
        return scan.follow(req, console)
    out = scan.run_probe(args.kind, req, console)
    from yoloprof.analysis import against
    from yoloprof.analysis.scaling import link_losses

    for loss in link_losses(against.load(out).allreduce):
        console.print(f"Across nodes: {loss.text}", markup=False, highlight=False)
    console.print(f"Wrote: {', '.join(str(p) for p in sorted(out.glob('*.json')))}")
    return 0


def _print_outputs(console: Console, out, folder: Path, ranked_table) -> None:
    from reports.terminal import scaling_table, search_summary

    console.print(ranked_table(out.results, out.ranking, predictions=out.predictions, run_plan=out.meta.run_plan))
    scaled = scaling_table(out.results, out.predictions, out.meta.run_plan)
    if scaled is not None:
        console.print(scaled)
    summary = search_summary(out.meta)
    if summary:
        console.print(summary)
    console.print(f"[bold]{out.headline}[/]")
    if out.memory_line:
        console.print(f"Memory: {out.memory_line}", markup=False, highlight=False)
    for line in trade_off_lines(out):
        console.print(line, markup=False, highlight=False)
    from yoloprof.analysis.scaling import link_losses

    for loss in link_losses(out.ceilings.allreduce):
        console.print(f"Across nodes: {loss.text}", markup=False, highlight=False)
    names = ["scan.json", "results.csv", "ranking.json", "report.html", "best.yaml", "best.env", "best.sh"]
    console.print("Wrote: " + ", ".join(str(folder / n) for n in names if (folder / n).exists()))
    if (folder / "best.sh").exists() and getattr(out.meta, "nnodes", 1) > 1:  # `yolo train` runs one node only
        console.print(f"Train with it on each of the {out.meta.nnodes} nodes: NODE_RANK=k {folder / 'best.sh'}")
    elif (folder / "best.sh").exists():
        console.print(f"Train with it: source {folder / 'best.env'} && yolo train cfg={folder / 'best.yaml'}")


def trade_off_lines(out) -> list[str]:
    """What the recommended settings give up, and compile's start-up against the run, one line each."""
    from yoloprof.analysis import tradeoffs

    images = out.meta.dataset.train_images
    lines = [
        f"Gives up: {knob}: {text}"
        for knob, text in (
            tradeoffs.config_notes(out.results, out.best, images, payoff=False).items() if out.best else []
        )
    ]
    return lines + [f"Compile: {p.text}" for p in tradeoffs.compile_payoffs(out.results, images)]


def _cmd_report(args, console: Console) -> int:
    from reports.terminal import ranked_table
    from yoloprof import outputs

    outputs.load_meta(Path(args.dir))  # a folder that is no scan: one line, before anything is changed
    outputs.replan(Path(args.dir), args.epochs, args.gpu_hour_price, args.currency)
    out = outputs.write_all(Path(args.dir))
    _print_outputs(console, out, Path(args.dir), ranked_table)
    return 0


def _cmd_compare(args, console: Console) -> int:
    from reports import html
    from yoloprof import outputs, paths
    from yoloprof.analysis.compare import compare

    a, b = outputs.collect(Path(args.dir_a)), outputs.collect(Path(args.dir_b))
    out = Path(args.out) if args.out else paths.next_run_dir("compare")
    out.mkdir(parents=True, exist_ok=True)
    result = compare(a, b)
    (out / "compare.html").write_text(html.render_compare(result, str(args.dir_a), str(args.dir_b)))
    console.print(f"[bold]{result.summary}[/]")
    for m in result.phases:
        if m.delta_ms is not None:
            console.print(
                f"  {m.phase.replace('_ms', ''):<14} {m.a_ms:8.1f} -> {m.b_ms:8.1f} ms/step ({m.delta_ms:+.1f})"
            )
    for p in result.pairs:
        if p.ratio is not None:
            console.print(
                f"  same settings: {p.a.trial_id} {p.a.img_per_s:.1f} -> {p.b.trial_id} {p.b.img_per_s:.1f} img/s ({p.ratio:.2f}x)"
            )
    for what, x, y in result.env_changes:
        console.print(f"  changed: {what}: {x} -> {y}")
    console.print(f"Wrote: {out / 'compare.html'}")
    return 0


def _cmd_doctor(args, console: Console) -> int:
    from reports.terminal import doctor_view
    from yoloprof.scan import preflight, orchestrate as scan
    from yoloprof.analysis.doctor import one_line
    from yoloprof.records import to_dict, write_json

    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: give seconds > 0 (default 60)")
    req = scan.ScanRequest(gpus=args.gpus, device=args.device, nproc=args.nproc)
    scan.check_numbers(req)
    report, found, why = preflight.examine(req, args.timeout, console)
    for part in doctor_view(report, found, why):
        console.print(part)
    if args.json:
        write_json(Path(args.json), {"report": to_dict(report), "findings": [to_dict(f) for f in found]})
    errors = [one_line(f) for f in found if f.severity == "error"]
    for line in errors:
        print(f"yoloprof: error: {line}", file=sys.stderr)
    return 2 if errors else 0


def _cmd_dataset(args, console: Console) -> int:
    from yoloprof.data.dataset import SyntheticSpec, generate

    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {args.size}: give WxH, e.g. 640x480") from None
    if args.images < 2 or min(w, h) < 32:
        raise UsageError("--images must be >= 2 and --size at least 32x32")
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; give a new folder")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the parent folder {out.parent} does not exist")
    spec = SyntheticSpec(images=args.images, width=w, height=h, val_images=max(args.images // 16, 2), task=args.task)
    path = generate(out, spec)
    what = "data folder (classify)" if args.task == "classify" else "data yaml"
    console.print(f"Wrote {args.images} {args.task} training images ({w}x{h}); {what}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 160))  # logs and CI: keep the table readable
    try:
        if argv[:1] in (["train"], ["slurm"]):  # their own parsers: arguments pass through to Ultralytics, the scan
            from yoloprof import slurm, train

            return (train if argv[0] == "train" else slurm).main(argv[1:])
        args, extra = _parser().parse_known_args(argv)
        if extra:  # argparse would name the top-level parser; the user typed a subcommand's flags
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see yoloprof {args.cmd} --help)")
        if args.cmd == "scan":
            return _cmd_scan(args, argv, console)
        if args.cmd == "probe":
            return _cmd_probe(args, argv, console)
        if args.cmd == "compare":
            return _cmd_compare(args, console)
        if args.cmd == "report":
            return _cmd_report(args, console)
        if args.cmd == "doctor":
            return _cmd_doctor(args, console)
        return _cmd_dataset(args, console)
    except UsageError as exc:
        print(f"yoloprof: error: {exc}", file=sys.stderr)
        return 2
    except ScanFailed as exc:
        print(f"yoloprof: scan stopped: {exc}", file=sys.stderr)
        return 1
