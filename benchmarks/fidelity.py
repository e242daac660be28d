"""Does a scan's prediction hold for plain `yolo train`? Scan, then train plainly, then compare.

    .venv/bin/python benchmarks/fidelity.py [--epochs 6] [--rounds 2] [--batch 16] [--workers 0]
                     [--skip-batches 3] [--out runs/yoloprof/bench-fidelity] [--scan DIR] [--gpus 0,1]

1. A scan that plain training can follow: on CPU `yoloprof scan --device cpu --nproc 1 --strategy grid
   --batch 16 --workers 0 --no-defaults --no-ceilings --epochs E --out OUT/scan-N` (plain Ultralytics runs
   one process with workers 0 on CPU, so the scan measures just that: no default-settings trial with
   workers it would not honour; ceilings play no part in the prediction); with --gpus, `--gpus G` and
   the scan's world size. `--scan DIR` reuses a finished scan instead.
2. Plain training in a fresh process that loads no yoloprof code (`python -c`: Ultralytics' own CLI
   entrypoint, what the `yolo` command runs), cwd in a temporary folder, YOLO_OFFLINE=1, a private
   YOLO_CONFIG_DIR, the variables of best.env (as `source best.env` would):
       yolo train cfg=OUT/scan-N/best.yaml epochs=E close_mosaic=0 warmup_epochs=0 project=... name=train
   close_mosaic=0: with Ultralytics' default (10) a run of 10 epochs or fewer trains every epoch without
   mosaic, a cheaper pipeline than the one the scan measured and `epoch_s` predicts. warmup_epochs=0:
   the warm-up's extra optimizer steps are a once-per-run cost (the prediction's `once_s`), not part of
   a steady epoch; the trials ran without warm-up too. Everything else is best.yaml and the defaults
   (val, save and plots on). A few-line callback of this benchmark's own (not yoloprof code) stamps
   every on_train_batch_end and on_train_epoch_start into a log.
3. Compares, with 95% intervals (the two relative half-widths combined in quadrature, on the log scale):
   (a) epoch time: Ultralytics' own results.csv `time` column is the time since training started,
       written after each epoch's validation; an epoch's time is the difference of consecutive rows.
       The first epoch (start-up, first validation, sample plots) and the last (final plots and
       checkpoint) are left out; the epochs between them (t-interval over epochs) against the scan's
       `epoch_s` (`epoch_s_low`-`epoch_s_high`) of the recommended trial. Target: within 5%.
   (b) steady images/s: the callback's steps, leaving out each epoch's first --skip-batches steps
       (loader restart, epoch-end work, sample plots) and a partial last batch, as images over time
       with a batch-means interval, against the scan's img_per_s (its configuration figure and
       interval where the scan has one). Target: within 10%.
A scan and a plain run are separate launches, and launches differ by 6-24% here (../shared/NOISE.md):
that level is repeated. `--rounds` pairs run in alternating order (scan, plain | plain, scan | ...; the
plain run of a round that starts with it trains with the previous scan's best.yaml), each round's
ratios are printed, and the rounds' ratios are combined (geometric mean; interval from their own
intervals, or from their spread where that is wider, with 3 rounds or more).
Prints per round: per-epoch times, the epoch split into the step loop and validation + saving against
the predicted parts, both ratios; then the combined ratios with intervals and PASS/MISS (PASS: the
ratio within the target; the line also says when the interval reaches past it).

On GPUs: Ultralytics launches its own DDP for device=0,1 and needs the `cloudpickle` package for it
(it pip-installs it on the first multi-GPU launch; offline, with YOLO_AUTOINSTALL=0, install it first).

The synthetic dataset (yoloprof's default: 512 train, 32 val images, 640x480) at imgsz 128, batch 16:
32 steps an epoch, about 10-15 s an epoch on a 2-core VM; a round (scan + 6 epochs) takes 2-2.5
minutes, the defaults (2 rounds) under 6.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity_run  # noqa: E402
from yoloprof.analysis.intervals import t975, throughput  # noqa: E402

EPOCH_TARGET, RATE_TARGET, RUN_TARGET = 0.05, 0.10, 0.05
WARMUP_EPOCHS, CLOSE_MOSAIC = 3.0, 10  # Ultralytics' defaults, which the run level keeps
PREDICTED = ("epoch_s", "epoch_s_low", "epoch_s_high", "run_h")

# Runs in the plain-training process: Ultralytics only, no yoloprof import.
PLAIN = """
import json, os, sys, time
from ultralytics.utils import callbacks
_log = []  # opened on first use: under DDP the callbacks travel to the ranks by cloudpickle, a file cannot
def _write(record):
    if int(os.environ.get("RANK", -1)) not in (-1, 0):
        return
    if not _log:
        _log.append(open(os.environ["FIDELITY_LOG"], "a", buffering=1))
    _log[0].write(json.dumps(record) + "\\n")
def epoch_start(trainer):
    loader = trainer.train_loader
    _write({"epoch": trainer.epoch, "t": time.perf_counter(), "batch": trainer.args.batch,
            "images": len(loader.dataset), "batches": len(loader)})
def batch_end(trainer):
    _write({"epoch": trainer.epoch, "t": time.perf_counter()})
def event(name):
    return lambda trainer: _write({"event": name, "epoch": getattr(trainer, "epoch", None), "t": time.perf_counter()})
callbacks.default_callbacks["on_train_epoch_start"].append(epoch_start)
callbacks.default_callbacks["on_train_batch_end"].append(batch_end)
for _name, _hook in (("pretrain", "on_pretrain_routine_start"), ("fit_end", "on_fit_epoch_end"), ("train_end", "on_train_end")):
    callbacks.default_callbacks[_hook].append(event(_name))
assert not any(m.startswith(("yoloprof", "probes", "reports")) for m in sys.modules), "yoloprof code loaded"
from ultralytics.cfg import entrypoint
entrypoint()
assert not any(m.startswith(("yoloprof", "probes", "reports")) for m in sys.modules), "yoloprof code loaded"
"""


# -- pure helpers (tests/test_benchmarks_parse.py) -------------------------------------------------
def epoch_times(text: str) -> list[tuple[int, float]]:
    """(epoch, seconds) from Ultralytics' results.csv: `time` is cumulative since training started."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return []
    key = {k.strip(): k for k in rows[0]}
    if "time" not in key or "epoch" not in key:
        raise ValueError(f"results.csv has no epoch/time columns (columns: {', '.join(list(key)[:6])}, ...)")
    out, last = [], 0.0
    for r in rows:
        t = float(r[key["time"]])
        out.append((int(float(r[key["epoch"]])), t - last))
        last = t
    return out


def prediction(text: str, trial_id: str) -> dict[str, Optional[float]]:
    """The scan's figures for one trial from its results.csv, by column name; ValueError if missing."""
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in PREDICTED if not rows or c not in rows[0]]
    if missing:
        raise ValueError(
            f"the scan's results.csv has no {', '.join(missing)} column(s): this yoloprof does not "
            "predict epoch times yet"
        )
    row = next((r for r in rows if r["trial_id"] == trial_id), None)
    if row is None:
        raise ValueError(f"trial {trial_id} is not in the scan's results.csv")
    num = lambda v: float(v) if v not in (None, "") else None  # noqa: E731
    cols = dict.fromkeys(
        PREDICTED
        + (
            "steps_s",
            "boundary_s",
            "val_s",
            "save_s",
            "img_per_s",
            "img_per_s_ci_low",
            "img_per_s_ci_high",
            "img_per_s_config",
            "img_per_s_config_ci_low",
            "img_per_s_config_ci_high",
            "world_size",
            *fidelity_run.RUN_PREDICTED,
        )
    )
    return {c: num(row.get(c)) for c in cols}


def steady_steps(log: Sequence[dict], skip: int) -> tuple[list[int], list[float]]:
    """(images, ms) of every step but each epoch's first `skip` and a partial last batch, from the
    callback's log: an epoch line ({"epoch", "t", "batch", "images", "batches"}) then one {"epoch", "t"}
    per batch end. A step's time runs from the previous batch's end (or the epoch's start)."""
    images, ms = [], []
    head, last, i = None, None, 0
    for e in log:
        if "event" in e:
            continue
        if "batches" in e:
            head, last, i = e, e["t"], 0
            continue
        if head is None:
            continue
        full = i < head["batches"] - 1 or head["images"] % head["batch"] == 0
        if i >= skip and full:
            images.append(head["batch"])
            ms.append(1e3 * (e["t"] - last))
        last, i = e["t"], i + 1
    return images, ms


def in_steps(log: Sequence[dict]) -> dict[int, float]:
    """Seconds from each epoch's start to its last batch's end (the rest of an epoch is validation,
    saving and epoch-end work)."""
    start, last = {}, {}
    for e in log:
        if "event" not in e:
            (start if "batches" in e else last)[e["epoch"]] = e["t"]
    return {k: last[k] - start[k] for k in start if k in last}


def mean_ci(xs: Sequence[float]) -> tuple[float, float, float]:
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, 0.0, math.inf
    half = t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


@dataclass
class Ratio:
    ratio: float
    low: float
    high: float


def ratio(a: float, a_low: float, a_high: float, b: float, b_low: float, b_high: float) -> Ratio:
    """a/b with a 95% interval: the relative half-widths of a and b combined in quadrature, taken on the
    log scale (r e^-h to r e^h), as the rounds are combined."""
    ra, rb = (a_high - a_low) / 2 / a, (b_high - b_low) / 2 / b
    r = a / b
    half = math.hypot(ra, rb)
    return Ratio(r, r * math.exp(-half), r * math.exp(half))


def judge(r: Ratio, target: float) -> str:
    ok = abs(r.ratio - 1) <= target
    out = f"{'PASS' if ok else 'MISS'} (target within {100 * target:g}%)"
    if ok and (r.low < 1 - target or r.high > 1 + target):
        out += f"; the interval reaches past +-{100 * target:g}%"
    return out


def env_file(text: str) -> dict[str, str]:
    """`export NAME=value` lines of best.env."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            out[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return out


# -- the run ---------------------------------------------------------------------------------------
def scan_cmd(out: Path, args) -> list[str]:
    """The scan plain training can follow (the module docstring's step 1)."""
    where = ["--gpus", args.gpus] if args.gpus else ["--device", "cpu", "--nproc", "1"]
    return [
        str(Path(sys.executable).parent / "yoloprof"),
        "scan",
        *where,
        "--strategy",
        "grid",
        "--batch",
        str(args.batch),
        "--workers",
        str(args.workers),
        "--no-defaults",
        "--no-ceilings",
        "--epochs",
        str(args.scan_epochs),
        "--out",
        str(out),
        *args.scan_arg,
    ]


def scan(out: Path, args) -> Path:
    if out.exists():
        shutil.rmtree(out)
    cmd = scan_cmd(out, args)
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"fidelity: the scan into {out} failed")
    return out


EPOCH_ARGS = ("close_mosaic=0", "warmup_epochs=0")  # the epoch level: steady mosaic epochs only


def plain_launch(
    scan_dir: Path, epochs: int, work: Path, extra: Sequence[str] = EPOCH_ARGS
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of `yolo train cfg=best.yaml epochs=N *extra` in a fresh process that loads no yoloprof
    code; prints the command as a user would type it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "YOLOPROF_CACHE")}
    env.update(
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="0",
        YOLO_CONFIG_DIR=str(work / "ultralytics"),
        MPLCONFIGDIR=str(work / "matplotlib"),
        FIDELITY_LOG=str(work / "steps.jsonl"),
    )
    best_env = env_file((scan_dir / "best.env").read_text()) if (scan_dir / "best.env").is_file() else {}
    env.update(best_env)
    argv = [
        "train",
        f"cfg={scan_dir.resolve() / 'best.yaml'}",
        f"epochs={epochs}",
        *extra,
        f"project={work}",
        "name=train",
        "exist_ok=True",
    ]
    print(
        "$",
        *(f"{k}={shlex.quote(v)}" for k, v in sorted(best_env.items())),
        "yolo",
        *argv,
        f"  (cwd {work})",
        flush=True,
    )
    return [sys.executable, "-c", PLAIN, *argv], env


def plain(
    scan_dir: Path, epochs: int, work: Path, extra: Sequence[str] = EPOCH_ARGS
) -> tuple[str, list[dict], float, float]:
    """`yolo train cfg=best.yaml epochs=N *extra` in a fresh process: (results.csv, the callback's log, launch
    and exit on the monotonic clock, which is the log's: perf_counter and monotonic are one clock on Linux)."""
    argv, env = plain_launch(scan_dir, epochs, work, extra)
    launched = time.monotonic()
    with open(work / "train.log", "w") as log:
        proc = subprocess.run(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    exited = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"fidelity: plain training exited {proc.returncode}; see {work / 'train.log'}")
    csv_path = work / "train" / "results.csv"
    steps = [json.loads(x) for x in (work / "steps.jsonl").read_text().splitlines() if x.strip()]
    return csv_path.read_text(), steps, launched, exited


def read_scan(scan_dir: Path) -> tuple[str, dict]:
    ranking = json.loads((scan_dir / "ranking.json").read_text())
    trial = ranking.get("recommended_trial_id") or ranking.get("best_trial_id")
    if trial is None:
        raise SystemExit(f"fidelity: {scan_dir} recommends no trial")
    try:
        pred = prediction((scan_dir / "results.csv").read_text(), trial)
    except ValueError as exc:
        raise SystemExit(f"fidelity: {exc} ({scan_dir / 'results.csv'})")
    if pred["epoch_s"] is None:
        raise SystemExit(f"fidelity: the scan predicts no epoch time for {trial} (epoch_s is empty)")
    return trial, pred


def compare(
    n: int, scan_dir: Path, trial: str, pred: dict, run: tuple[str, list[dict], float, Path], skip: int
) -> tuple[Ratio, Ratio]:
    """One round: prints its figures, returns (epoch ratio, images/s ratio)."""
    results, log, launched, exited, work = run
    wall = exited - launched
    epochs = epoch_times(results)
    if len(epochs) < 3:
        raise SystemExit(f"fidelity: plain training wrote {len(epochs)} epochs to results.csv; see {work}")
    first = next((e for e in log if "batches" in e), {})
    print(
        f"\nround {n}: scan {scan_dir} recommends {trial}; plain run {wall:.0f} s in {work}: "
        f"{first.get('images')} train images, {first.get('batches')} steps an epoch, batch {first.get('batch')}"
    )
    print(
        "  epoch times (results.csv):", ", ".join(f"{e}: {s:.2f} s" for e, s in epochs), "(first and last not compared)"
    )
    mid = [s for _, s in epochs[1:-1]]
    m, lo, hi = mean_ci(mid)
    ps = pred["epoch_s"]
    e = ratio(m, lo, hi, ps, pred["epoch_s_low"] or ps, pred["epoch_s_high"] or ps)
    print(
        f"  epoch time: plain {m:.2f} s (95% {lo:.2f}-{hi:.2f}, {len(mid)} epochs), predicted epoch_s {ps:.2f} s "
        f"({pred['epoch_s_low']:.2f}-{pred['epoch_s_high']:.2f}; run_h {pred['run_h']}): ratio {e.ratio:.3f} "
        f"({e.low:.3f}-{e.high:.3f})"
    )
    spent = in_steps(log)
    loop = [spent[k - 1] for k, _ in epochs[1:-1] if k - 1 in spent]  # results.csv counts epochs from 1
    if len(loop) == len(mid) and pred["steps_s"] is not None:
        around = [a - x for a, x in zip(mid, loop)]
        val, save, extra = pred["val_s"] or 0, pred["save_s"] or 0, pred["boundary_s"] or 0
        print(
            f"    step loop: plain {statistics.mean(loop):.2f} s, predicted {pred['steps_s'] + extra:.2f} s (steps "
            f"{pred['steps_s']:.2f} + first-step extra {extra:.2f}); validation, saving, epoch end: plain "
            f"{statistics.mean(around):.2f} s, predicted {val + save:.2f} s (val {val:.2f} + save {save:.2f})"
        )
    images, ms = steady_steps(log, skip)
    rate = throughput(images, ms)
    cfg = pred["img_per_s_config"] is not None
    key = "img_per_s_config" if cfg else "img_per_s"
    p = pred[key]
    if rate is None or p is None:
        raise SystemExit("fidelity: images/s not compared (no steady steps, or no img_per_s in the scan)")
    plo, phi = pred[f"{key}_ci_low"] or p, pred[f"{key}_ci_high"] or p
    r = ratio(rate.estimate, rate.low, rate.high, p, plo, phi)
    print(
        f"  images/s: plain steady {rate.estimate:.1f} (95% {rate.low:.1f}-{rate.high:.1f}, {len(ms)} steps, "
        f"{rate.method}), scan {p:.1f} ({plo:.1f}-{phi:.1f}{', configuration figure' if cfg else ''}): "
        f"ratio {r.ratio:.3f} ({r.low:.3f}-{r.high:.3f})"
    )
    return e, r


def compare_run(n: int, pred: dict, run: tuple[str, list[dict], float, float, Path], epochs: int) -> Ratio:
    """One round's run: the whole process's wall time against run_h for `epochs`, and its parts."""
    _, log, launched, exited, work = run
    parts = fidelity_run.run_parts(log, launched, exited)
    first = next((e for e in log if "batches" in e), {})
    kinds = fidelity_run.phases(epochs, first.get("batches", 1), WARMUP_EPOCHS, CLOSE_MOSAIC)
    print(
        f"\nround {n}, the run: plain yolo train epochs={epochs} (Ultralytics' defaults: warmup_epochs "
        f"{WARMUP_EPOCHS:g}, close_mosaic {CLOSE_MOSAIC}, val, plots) in {work}"
    )
    for line in fidelity_run.table(parts, pred, kinds):
        print(line)
    p, lo, hi = (3600 * (pred[k] or pred["run_h"]) for k in ("run_h", "run_h_low", "run_h_high"))
    r = ratio(parts.wall_s, parts.wall_s, parts.wall_s, p, lo, hi)
    print(
        f"  run: plain {parts.wall_s:.1f} s (launch to exit), predicted run_h {p:.1f} s ({lo:.1f}-{hi:.1f}): ratio "
        f"{r.ratio:.3f} ({r.low:.3f}-{r.high:.3f})"
    )
    return r


def combine(rs: Sequence[Ratio]) -> Ratio:
    """Rounds together: the geometric mean of their ratios; the interval from their own half-widths on the
    log scale (independent rounds: root of the sum of squares over n), or from the rounds' spread (Student t) when
    that is wider, which it can only say with 3 rounds or more."""
    logs = [math.log(r.ratio) for r in rs]
    m = statistics.mean(logs)
    half = math.sqrt(sum((math.log(r.high / r.low) / 2) ** 2 for r in rs)) / len(rs)
    if len(rs) >= 3:
        half = max(half, t975(len(rs) - 1) * statistics.stdev(logs) / math.sqrt(len(rs)))
    return Ratio(math.exp(m), math.exp(m - half), math.exp(m + half))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the plain run and of the scan's prediction")
    ap.add_argument("--rounds", type=int, default=2, help="scan + plain run pairs, order alternating (default 2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="per rank (plain Ultralytics forces 0 on CPU)")
    ap.add_argument("--gpus", help="GPU indices: scan and train on these (device=0,1 in best.yaml)")
    ap.add_argument("--skip-batches", type=int, default=3, help="first steps of each epoch left out of images/s")
    ap.add_argument("--out", default="runs/yoloprof/bench-fidelity")
    ap.add_argument("--scan", help="use this finished scan in every round instead of running scans")
    ap.add_argument("--scan-arg", action="append", default=[], help="extra argument for the scan (repeatable)")
    ap.add_argument(
        "--run-epochs",
        type=int,
        default=0,
        help="also train a whole run of N epochs with Ultralytics' defaults each round and compare its wall "
        "time with the scan's run prediction for N epochs (the scan then predicts for N)",
    )
    args = ap.parse_args()
    if args.epochs < 3 or args.rounds < 1 or args.run_epochs < 0:
        raise SystemExit(
            "fidelity: give --epochs >= 3 (the first and the last epoch are not compared), --rounds >= 1, "
            "--run-epochs >= 0"
        )
    args.scan_epochs = args.run_epochs or args.epochs
    started = time.monotonic()
    given = Path(args.scan) if args.scan else None
    if given is not None:
        read_scan(given)  # fail before training when the scan has no prediction
    pairs, runs, best = [], [], given
    for n in range(1, args.rounds + 1):
        trains = ("plain", "run") if args.run_epochs else ("plain",)
        order = ("scan", *trains) if n % 2 or best is None else (*trains, "scan")
        this, done = given, {}
        for step in order:
            if step == "scan" and given is None:
                this = best = scan(Path(args.out) / f"scan-{n}", args)
                read_scan(this)  # fail before training when the scan has no prediction
            elif step in ("plain", "run"):
                work = Path(tempfile.mkdtemp(prefix=f"yoloprof-fidelity-{step}-"))
                epochs, extra = (args.epochs, EPOCH_ARGS) if step == "plain" else (args.run_epochs, ())
                done[step] = (*plain(best, epochs, work, extra), work)
        trial, pred = read_scan(this)
        pairs.append(compare(n, this, trial, pred, done["plain"], args.skip_batches))
        if "run" in done:
            runs.append(compare_run(n, pred, done["run"], args.run_epochs))
    e, r = combine([p[0] for p in pairs]), combine([p[1] for p in pairs])
    way = f"{len(pairs)} rounds (scan, plain | plain, scan | ...)" if len(pairs) > 1 else "1 round"
    print(f"\n{way}; plain: yolo train cfg=best.yaml epochs={args.epochs} close_mosaic=0 warmup_epochs=0")
    print(f"epoch time, plain / predicted: {e.ratio:.3f} (95% {e.low:.3f}-{e.high:.3f}): {judge(e, EPOCH_TARGET)}")
    print(f"images/s, plain / scan: {r.ratio:.3f} (95% {r.low:.3f}-{r.high:.3f}): {judge(r, RATE_TARGET)}")
    if runs:
        w = combine(runs)
        print(
            f"run, plain yolo train cfg=best.yaml epochs={args.run_epochs} (launch to exit) / run_h: {w.ratio:.3f} "
            f"(95% {w.low:.3f}-{w.high:.3f}): {judge(w, RUN_TARGET)}"
        )
    print(f"benchmark wall: {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
