"""Is a training process's speed its own, or the machine's at the time? Processes taking turns.

    .venv/bin/python benchmarks/drift.py [--processes 3] [--window 9] [--rotations 8] [--cfg best.yaml]
                                         [--kinds plain,trial,plain,trial] [--head-start 64] [--pair trial/plain]
                                         [--out runs/yoloprof/bench-drift]

Starts `--processes` plain `yolo train` processes of the same configuration (Ultralytics only, the
step-stamping callback of benchmarks/fidelity.py, val and plots off, 100 epochs so none ends) and lets
them run one at a time: each is stopped (SIGSTOP) while another trains, and all take turns in windows
of `--window` seconds, `--rotations` times. Interleaving puts every process under the same drift of the
machine, so:
- if each process had a speed of its own (memory placement, which core, a rank pool against a fresh
  process), the processes' means would differ steadily, in every rotation;
- if the machine's speed drifts, every process is slow in the same rotations and the means agree.
Prints each rotation's mean step per process (only steps that lie wholly inside a window), each
process's mean with its spread over windows, and the spread between rotations against the spread
between processes. This is the evidence behind docs/prediction.md's "Checked against plain training": the misses of a
single scan-versus-plain comparison on this VM came from the time between them, not from the trial.

`--kinds` names each process: `plain` as above, or `trial`, a one-rank `yoloprof scan` of the same
configuration measuring one trial for as many steps as the benchmark lasts (its rank's own step records,
epoch-boundary steps left out, as the plain processes' are). Each turn stops and resumes the trial's
whole process tree (the scan, torchrun, the rank). So the trial's rate and plain training's are read in
the same minutes, under the same drift: the side-by-side comparison a scan-then-train pair cannot make.
`closed` is a plain process whose mosaic Ultralytics closes from its first epoch (close_mosaic=100 of 100
epochs: the path `_do_train` takes into a run's last close_mosaic epochs), so `--kinds plain,closed,plain,closed`
measures plain training's own no-mosaic / mosaic step ratio side by side, the figure the epoch job's
`no_mosaic` ratio predicts. `--pair A/B` names the two kinds whose ratio is printed (default trial/plain).
`--head-start` lets each plain process train that many steps before the turns begin, so its turns time
later epochs while the trial times its first steps, as in the fidelity benchmark's comparison.

Without --cfg the synthetic dataset at imgsz 128, batch 16, workers 0 (the fidelity benchmark's
configuration); a round of 3 processes x 9 s takes half a minute, the defaults about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from fidelity import PLAIN  # noqa: E402


def window_means(log: list[dict], windows: list[tuple[float, float]]) -> list[float]:
    """Mean ms of the steps (batch end to batch end) lying wholly inside each window; nan where none does.
    A pair with an epoch start between its ends holds the epoch's end and is left out."""
    pairs, last = [], None
    for e in log:
        if "batches" in e or "event" in e:
            last = None  # an epoch start (or another event) between: not a step
        else:
            if last is not None:
                pairs.append((last, e["t"]))
            last = e["t"]
    return _means([(a, b) for a, b in pairs], windows)


def trial_window_means(log: list[dict], windows: list[tuple[float, float]]) -> list[float]:
    """The same from a trial rank's records (rank0.jsonl: t_end_s on the wall clock, step_ms): measured steps
    only, those carrying an epoch's end left out."""
    spans = [
        (e["t_end_s"] - e["step_ms"] / 1e3, e["t_end_s"])
        for e in log
        if e.get("kind") == "step" and not e.get("warmup") and not e.get("epoch_boundary")
    ]
    return _means(spans, windows)


def _means(spans: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    out = []
    for t0, t1 in windows:
        ms = [1e3 * (b - a) for a, b in spans if a >= t0 and b <= t1]
        out.append(statistics.mean(ms) if ms else float("nan"))
    return out


def paired(
    table: list[list[float]], kinds: list[str], a: str = "trial", b: str = "plain"
) -> Optional[tuple[float, float, float, int]]:
    """Per rotation, the mean of kind a's processes over the mean of kind b's (both ran in that rotation,
    seconds apart); (mean ratio, 95% low, high, rotations), a t interval over the rotations. None without both."""
    ia, ib = [i for i, k in enumerate(kinds) if k == a], [i for i, k in enumerate(kinds) if k == b]
    if not ia or not ib:
        return None
    rs = []
    for row in table:
        xa, xb = [row[i] for i in ia if row[i] == row[i]], [row[i] for i in ib if row[i] == row[i]]
        if xa and xb:
            rs.append(statistics.mean(xa) / statistics.mean(xb))
    if len(rs) < 2:
        return None
    m, se = statistics.mean(rs), statistics.stdev(rs) / math.sqrt(len(rs))
    from yoloprof.analysis.intervals import t975

    h = t975(len(rs) - 1) * se
    return m, m - h, m + h, len(rs)


def spreads(table: list[list[float]]) -> tuple[float, float]:
    """(relative spread of the rotations' means, of the processes' means), sample standard deviations over
    the grand mean: table[rotation][process]."""
    rows = [[x for x in r if x == x] for r in table]
    grand = statistics.mean(x for r in rows for x in r)
    by_rot = [statistics.mean(r) for r in rows if r]
    cols = [[r[i] for r in table if r[i] == r[i]] for i in range(len(table[0]))]
    by_proc = [statistics.mean(c) for c in cols if c]
    return statistics.stdev(by_rot) / grand, statistics.stdev(by_proc) / grand


def synthetic_cfg(out: Path) -> Path:
    from yoloprof.data.dataset import SyntheticSpec, generate

    data = generate(out / "data", SyntheticSpec())
    cfg = out / "plain.yaml"
    cfg.write_text(f"model: yolo26n.yaml\ndata: {data}\nimgsz: 128\nbatch: 16\nworkers: 0\ndevice: cpu\n")
    return cfg


def trial_argv(cfg: dict, work: Path, steps: int) -> list[str]:
    """A one-rank scan of the configuration's one trial, measuring `steps` steps (enough to outlast the
    benchmark), no ceilings; its rank writes work/scan/trials/<id>/rank0.jsonl as it goes."""
    return [
        str(Path(sys.executable).parent / "yoloprof"),
        "scan",
        "--device",
        "cpu",
        "--nproc",
        "1",
        "--strategy",
        "grid",
        "--no-defaults",
        "--no-ceilings",
        "--model",
        str(cfg["model"]),
        "--data",
        str(cfg["data"]),
        "--imgsz",
        str(cfg["imgsz"]),
        "--batch",
        str(cfg["batch"]),
        "--workers",
        str(cfg["workers"]),
        "--steps",
        str(steps),
        "--max-steps",
        str(steps),
        "--precision",
        "off",
        "--out",
        str(work / "scan"),
    ]


def _tree(p: subprocess.Popen) -> list:
    import psutil

    try:
        root = psutil.Process(p.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_tree(p: subprocess.Popen, sig: int) -> None:
    """A signal to the process and every descendant (a scan's pool ranks run in sessions of their own)."""
    for q in _tree(p):
        try:
            q.send_signal(sig)
        except Exception:  # gone meanwhile
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3, help="plain processes (without --kinds)")
    ap.add_argument("--kinds", help="the processes by kind, e.g. plain,trial,plain,trial (overrides --processes)")
    ap.add_argument("--window", type=float, default=9.0, help="seconds each process trains per turn")
    ap.add_argument("--rotations", type=int, default=8)
    ap.add_argument("--cfg", help="a best.yaml to train (default: the synthetic dataset, see above)")
    ap.add_argument(
        "--head-start",
        type=int,
        default=8,
        metavar="STEPS",
        help="steps each plain process trains before the turns begin (e.g. 64: two epochs of the "
        "synthetic data, so its turns time later epochs, as the fidelity benchmark's plain run does)",
    )
    ap.add_argument("--pair", default="trial/plain", help="the kinds whose step ratio is printed, A/B")
    ap.add_argument("--out", default="runs/yoloprof/bench-drift")
    args = ap.parse_args()
    kinds = args.kinds.split(",") if args.kinds else ["plain"] * args.processes
    pair = args.pair.split("/")
    if len(kinds) < 2 or args.rotations < 2 or args.window <= 2 or set(kinds) - {"plain", "trial", "closed"}:
        raise SystemExit(
            "drift: give >= 2 processes (--kinds of plain, closed and trial), --rotations >= 2, --window > 2 s"
        )
    if len(pair) != 2 or set(pair) - set(kinds):
        raise SystemExit(f"drift: --pair {args.pair}: give two of the kinds run, e.g. closed/plain")
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = Path(args.cfg).resolve() if args.cfg else synthetic_cfg(out)
    import yaml

    settings = yaml.safe_load(cfg.read_text())
    steps = int(len(kinds) * args.window * args.rotations / 0.3) + 100  # more than a 0.3 s step could finish
    procs, logs = [], []
    for i, kind in enumerate(kinds):
        work = out / f"p{i}"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            FIDELITY_LOG=str(work / "steps.jsonl"),
            YOLO_OFFLINE="1",
            YOLO_CONFIG_DIR=str(out / "ultralytics"),
            MPLCONFIGDIR=str(out / "matplotlib"),
        )
        if kind in ("plain", "closed"):
            argv = [
                sys.executable,
                "-c",
                PLAIN,
                "train",
                f"cfg={cfg}",
                "epochs=100",
                "close_mosaic=100" if kind == "closed" else "close_mosaic=0",
                "warmup_epochs=0",
                "val=False",
                "plots=False",
                f"project={work}",
                "name=train",
                "exist_ok=True",
            ]
        else:
            argv = trial_argv(settings, work, steps)
        procs.append(
            subprocess.Popen(argv, cwd=work, env=env, stdout=open(work / "train.log", "w"), stderr=subprocess.STDOUT)
        )
        logs.append(work / "steps.jsonl")
        if i:
            signal_tree(procs[i], signal.SIGSTOP)

    def records(i: int) -> list[dict]:
        if kinds[i] != "trial":
            path = logs[i]
        else:
            found = sorted((out / f"p{i}" / "scan" / "trials").glob("*/rank0.jsonl"))
            path = found[0] if found else logs[i]
        if not path.exists():
            return []
        rows = []
        for x in path.read_text().splitlines():
            try:
                rows.append(json.loads(x))
            except ValueError:  # a line being written
                pass
        return rows

    def started(i: int) -> bool:
        rows = records(i)
        if kinds[i] != "trial":
            return sum(1 for r in rows if "event" not in r and "batches" not in r) >= args.head_start
        return sum(1 for r in rows if r.get("kind") == "step" and not r.get("warmup")) >= 3

    try:
        for i, p in enumerate(procs):  # start-up one at a time, until each has trained a few steps
            signal_tree(p, signal.SIGCONT)
            while not started(i):
                if p.poll() is not None:
                    raise SystemExit(f"drift: process {i} exited {p.returncode}; see {out / f'p{i}' / 'train.log'}")
                time.sleep(0.2)
            signal_tree(p, signal.SIGSTOP)
        windows: list[list[tuple[float, float]]] = [[] for _ in procs]
        walls: list[list[tuple[float, float]]] = [[] for _ in procs]
        for _ in range(args.rotations):
            for i, p in enumerate(procs):
                signal_tree(p, signal.SIGCONT)
                t0, w0 = time.perf_counter(), time.time()
                time.sleep(args.window)
                signal_tree(p, signal.SIGSTOP)
                windows[i].append((t0, time.perf_counter()))
                walls[i].append((w0, time.time()))
    finally:
        for p in procs:
            for q in reversed(_tree(p)):
                try:
                    q.send_signal(signal.SIGCONT)
                    q.kill()
                except Exception:
                    pass
            p.wait()
    means = [
        window_means(records(i), windows[i]) if k != "trial" else trial_window_means(records(i), walls[i])
        for i, k in enumerate(kinds)
    ]
    table = [[means[i][r] for i in range(len(procs))] for r in range(args.rotations)]
    for r, row in enumerate(table):
        print(f"rotation {r + 1}: " + "  ".join(f"p{i} {kinds[i]} {x:.0f} ms" for i, x in enumerate(row)))
    for i, m in enumerate(means):
        xs = [x for x in m if x == x]
        print(
            f"p{i} ({kinds[i]}): mean step {statistics.mean(xs):.0f} ms, sd {statistics.stdev(xs):.0f} over {len(xs)} windows"
        )
    rot, proc = spreads(table)
    print(
        f"spread of the rotations' means {100 * rot:.1f}%, of the processes' means {100 * proc:.1f}% "
        f"({'the machine drifts; the processes agree' if rot > 2 * proc else 'no clear drift beyond the processes'})"
    )
    pr = paired(table, kinds, *pair)
    if pr is not None:
        m, lo, hi, n = pr
        verdict = (
            "no measurable difference"
            if lo <= 1 <= hi
            else (f"{pair[0]} is slower" if lo > 1 else f"{pair[0]} is faster")
        )
        print(
            f"{pair[0]} / {pair[1]} step, paired by rotation: {m:.3f} (95% {lo:.3f}-{hi:.3f}, {n} rotations): {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
