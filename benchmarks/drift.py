"""Is a training process's speed its own, or the machine's at the time? Processes taking turns.

    .venv/bin/python benchmarks/drift.py [--processes 3] [--window 9] [--rotations 8] [--cfg best.yaml]
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
between processes. This is the evidence behind the README's "Fidelity": the 5-10% misses of a single
scan-versus-plain comparison on this VM came from the time between them, not from the trial.

Without --cfg the synthetic dataset at imgsz 128, batch 16, workers 0 (the fidelity benchmark's
configuration); a round of 3 processes x 9 s takes half a minute, the defaults about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from fidelity import PLAIN  # noqa: E402


def window_means(log: list[dict], windows: list[tuple[float, float]]) -> list[float]:
    """Mean ms of the steps (batch end to batch end) lying wholly inside each window; nan where none does."""
    ends = [e["t"] for e in log if "event" not in e and "batches" not in e]
    pairs = list(zip(ends, ends[1:]))
    out = []
    for t0, t1 in windows:
        ms = [1e3 * (b - a) for a, b in pairs if a >= t0 and b <= t1]
        out.append(statistics.mean(ms) if ms else float("nan"))
    return out


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
    sys.path.insert(0, str(ROOT))
    from yoloprof.data.dataset import SyntheticSpec, generate

    data = generate(out / "data", SyntheticSpec())
    cfg = out / "plain.yaml"
    cfg.write_text(f"model: yolo11n.yaml\ndata: {data}\nimgsz: 128\nbatch: 16\nworkers: 0\ndevice: cpu\n")
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--window", type=float, default=9.0, help="seconds each process trains per turn")
    ap.add_argument("--rotations", type=int, default=8)
    ap.add_argument("--cfg", help="a best.yaml to train (default: the synthetic dataset, see above)")
    ap.add_argument("--out", default="runs/yoloprof/bench-drift")
    args = ap.parse_args()
    if args.processes < 2 or args.rotations < 2 or args.window <= 2:
        raise SystemExit("drift: give --processes >= 2, --rotations >= 2, --window > 2 s")
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = Path(args.cfg).resolve() if args.cfg else synthetic_cfg(out)
    procs, logs = [], []
    for i in range(args.processes):
        work = out / f"p{i}"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(FIDELITY_LOG=str(work / "steps.jsonl"), YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(out / "ultralytics"),
                   MPLCONFIGDIR=str(out / "matplotlib"))  # fmt: skip
        argv = ["train", f"cfg={cfg}", "epochs=100", "close_mosaic=0", "warmup_epochs=0", "val=False", "plots=False",
                f"project={work}", "name=train", "exist_ok=True"]  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", PLAIN, *argv], cwd=work, env=env,
                                      stdout=open(work / "train.log", "w"), stderr=subprocess.STDOUT))  # fmt: skip
        logs.append(work / "steps.jsonl")
        if i:
            procs[i].send_signal(signal.SIGSTOP)

    def lines(i: int) -> int:
        return sum(1 for _ in open(logs[i])) if logs[i].exists() else 0

    try:
        for i, p in enumerate(procs):  # start-up one at a time, until each has trained a few steps
            p.send_signal(signal.SIGCONT)
            while lines(i) < 8:
                if p.poll() is not None:
                    raise SystemExit(f"drift: process {i} exited {p.returncode}; see {out / f'p{i}' / 'train.log'}")
                time.sleep(0.2)
            p.send_signal(signal.SIGSTOP)
        windows: list[list[tuple[float, float]]] = [[] for _ in procs]
        for _ in range(args.rotations):
            for i, p in enumerate(procs):
                p.send_signal(signal.SIGCONT)
                t0 = time.perf_counter()
                time.sleep(args.window)
                p.send_signal(signal.SIGSTOP)
                windows[i].append((t0, time.perf_counter()))
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()
    means = [window_means([json.loads(x) for x in open(logs[i])], windows[i]) for i in range(len(procs))]
    table = [[means[i][r] for i in range(len(procs))] for r in range(args.rotations)]
    for r, row in enumerate(table):
        print(f"rotation {r + 1}: " + "  ".join(f"p{i} {x:.0f} ms" for i, x in enumerate(row)))
    for i, m in enumerate(means):
        xs = [x for x in m if x == x]
        print(f"p{i}: mean step {statistics.mean(xs):.0f} ms, sd {statistics.stdev(xs):.0f} over {len(xs)} windows")
    rot, proc = spreads(table)
    print(f"spread of the rotations' means {100 * rot:.1f}%, of the processes' means {100 * proc:.1f}% "
          f"({'the machine drifts; the processes agree' if rot > 2 * proc else 'no clear drift beyond the processes'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
