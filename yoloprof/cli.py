"""Command line: each subcommand's handler, thin; the flags are in flags.py, the work in scan, outputs and
dataset."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from yoloprof.errors import ScanFailed, UsageError
from yoloprof.flags import follower, parser


def _cmd_scan(args, argv: list[str], console: Console) -> int:
    from yoloprof.reports.terminal import ranked_table
    from yoloprof.scan import orchestrate as scan

    req = scan.ScanRequest.from_flags(args, ["yoloprof", *argv])
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
        others = [k for k in scan.ScanRequest.flag_names() if k not in kept and getattr(args, k) not in (None, False)]
        if others:
            raise UsageError(f"--resume runs the saved plan as it was; drop --{others[0].replace('_', '-')}")
        from yoloprof.scan import resume

        out, folder, code = resume.resume(args.resume, req, console)
    elif follower(args):
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

    req = scan.ScanRequest.from_flags(args, ["yoloprof", *argv])
    if args.max_mib is not None:
        if args.max_mib < 0.0625:
            raise UsageError(
                f"--max-mib {args.max_mib}: give a size in MiB, at least 0.0625 (the sweep starts at 64 KiB)"
            )
        req.allreduce_max_bytes = int(args.max_mib * 2**20)
    if follower(args):
        return scan.follow(req, console)
    from yoloprof.scan import probe_run

    out = probe_run.run(args.kind, req, console)
    from yoloprof.analysis import headroom
    from yoloprof.analysis.scaling import link_losses

    for loss in link_losses(headroom.load(out).allreduce):
        console.print(f"Across nodes: {loss.text}", markup=False, highlight=False)
    console.print(f"Wrote: {', '.join(str(p) for p in sorted(out.glob('*.json')))}")
    return 0


def _print_outputs(console: Console, out, folder: Path, ranked_table) -> None:
    from yoloprof.reports.terminal import scaling_table, search_summary

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
    from yoloprof.reports.terminal import ranked_table
    from yoloprof import pipeline, run_outputs

    if run_outputs.is_run(Path(args.dir)):  # a watched run's folder (yoloprof train): its summary and run.html
        print("\n".join(run_outputs.lines(run_outputs.write(Path(args.dir)))))
        return 0
    pipeline.load_meta(Path(args.dir))  # a folder that is no scan: one line, before anything is changed
    pipeline.replan(Path(args.dir), args.epochs, args.gpu_hour_price, args.currency)
    out = pipeline.write_all(Path(args.dir))
    _print_outputs(console, out, Path(args.dir), ranked_table)
    return 0


def _cmd_compare(args, console: Console) -> int:
    from yoloprof.reports import html
    from yoloprof import pipeline, paths
    from yoloprof.analysis.compare import compare

    a, b = pipeline.collect(Path(args.dir_a)), pipeline.collect(Path(args.dir_b))
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
    from yoloprof.reports.terminal import doctor_view
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
        args, extra = parser().parse_known_args(argv)
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
