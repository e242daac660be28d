"""The run level side by side: a scan and plain `yolo train cfg=best.yaml epochs=N` taking turns on one machine.

    .venv/bin/python benchmarks/fidelity_side.py [--run-epochs 8] [--rounds 1] [--window 8] [--share 1.9]
                     [--batch 16] [--workers 0] [--out runs/yoloprof/bench-fidelity-side]

benchmarks/fidelity.py compares a scan with a plain run started after it: two different minutes of a machine
whose speed drifts by several percent within minutes (docs/prediction.md), which no such pair survives.
Here both run in the same minutes, one at a time, so they share the machine's drift:

1. A short scan of the same flags (10 steps, no epoch job) writes the best.yaml and best.env plain training
   uses (the configuration is fixed: one trial, batch --batch, workers --workers).
2. The scan that predicts (benchmarks/fidelity.py's scan, `--epochs N`) and plain `yolo train cfg=best.yaml
   epochs=N` with Ultralytics' defaults (warm-up, close_mosaic, validation, plots, final validation) start
   together and take turns: the scan runs `--window` seconds, then plain training `--window` x `--share`
   seconds, and so on. The one waiting is stopped (SIGSTOP, its whole process tree).
3. The scan is stopped only just after one of its ranks wrote a step record, never on its last planned step:
   the stop lands in the next step's data wait, never in a timed validation, saving or start-up. Its rank
   records are then corrected: each step's time loses the stopped seconds that fall inside it (`unstop_steps`;
   the originals kept as rank0.jsonl.orig), and `yoloprof report` rebuilds the prediction from them.
4. Plain training is stopped anywhere: its callback's times (and its launch and exit) are moved onto its own
   clock, stopped seconds taken out (`own_clock`), before its parts are compared as fidelity.py --run-epochs
   does (start-up, set-up, epochs by kind, the run's end).
The process that finishes first leaves the other running alone: those seconds are not side by side, and the
result says how many there were (`--share` sets plain training's turn against the scan's, so both end near
each other: with 1.4 plain training ran its last 92 s of 260 alone on a 2-core VM; 1.9 is the default).

Prints each round's parts and its run ratio, plain wall time (stopped time out) over the rebuilt run_h, with
the interval of the prediction; rounds combined as fidelity.py does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import fidelity  # noqa: E402
from drift import _tree, signal_tree  # noqa: E402

Stops = Sequence[tuple[float, float]]


# -- pure helpers (tests/test_benchmarks_parse.py) -------------------------------------------------
def stopped_within(a: float, b: float, stops: Stops) -> float:
    """Seconds of the stops (start, end) that fall inside [a, b]."""
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in stops)


def own_clock(t: float, stops: Stops) -> float:
    """A time on the process's own clock: the stopped seconds before t taken out."""
    return t - stopped_within(float("-inf"), t, stops)


def unstop_log(log: Sequence[dict], launched: float, exited: float, stops: Stops) -> tuple[list[dict], float, float]:
    """The plain run's callback log, launch and exit (monotonic) on its own clock."""
    moved = [{**e, "t": own_clock(e["t"], stops)} if "t" in e else e for e in log]
    return moved, own_clock(launched, stops), own_clock(exited, stops)


def unstop_steps(rows: Sequence[dict], stops: Stops) -> tuple[list[dict], int]:
    """A rank's records with each step's stopped seconds taken out of its time: a step spans
    [t_end_s - step_ms, t_end_s] on the wall clock; the stop lands just after the previous step's end, in the data
    wait, so that phase (and step_ms) loses it. Returns (records, steps corrected)."""
    out, fixed = [], 0
    for r in rows:
        if r.get("kind") == "step" and r.get("t_end_s") is not None and r.get("step_ms") is not None:
            lost_ms = 1e3 * stopped_within(r["t_end_s"] - r["step_ms"] / 1e3, r["t_end_s"], stops)
            if lost_ms > 0:
                r = {**r, "step_ms": r["step_ms"] - lost_ms}
                for k in ("data_wait_ms", "host_data_wait_ms"):
                    if r.get(k) is not None:
                        r[k] = max(0.0, r[k] - lost_ms)
                fixed += 1
        out.append(r)
    return out, fixed


def safe_step(line: str, last_step: Optional[int]) -> bool:
    """A record line after which the scan may be stopped: a step, and not the last its rank plans (after that
    one the epoch job times validation, saving and the run's end)."""
    try:
        r = json.loads(line)
    except ValueError:
        return False
    return r.get("kind") == "step" and (last_step is None or r.get("step", 0) < last_step)


# -- the run ---------------------------------------------------------------------------------------
class ScanWatch:
    """New record lines of the scan's ranks (trials/*/rank*.jsonl, epoch/w*/rank*.jsonl), as they are written."""

    def __init__(self, scan_dir: Path):
        self.dir, self.seen = scan_dir, {}

    def _last_step(self, rank_file: Path) -> Optional[int]:
        from yoloprof.records import RecordError, TrialSpec, read_json

        try:
            return read_json(rank_file.parent / "spec.json", TrialSpec).total_steps - 1
        except (OSError, RecordError):
            return None

    def safe_now(self) -> bool:
        """True when a rank has just written a step record after which a stop is safe."""
        safe = False
        for f in [*self.dir.glob("trials/*/rank*.jsonl"), *self.dir.glob("epoch/w*/rank*.jsonl")]:
            size = f.stat().st_size
            start = self.seen.get(f, 0)
            if size <= start:
                continue
            with open(f, "rb") as fh:
                fh.seek(start)
                chunk = fh.read(size - start)
            done = chunk.rfind(b"\n") + 1  # whole lines only
            self.seen[f] = start + done
            lines = chunk[:done].decode(errors="replace").splitlines()
            if lines and safe_step(lines[-1], self._last_step(f)):
                safe = True
        return safe


def take_turns(scan: subprocess.Popen, train: subprocess.Popen, watch: ScanWatch, window: float, share: float):
    """Turns until both exit: (the scan's stops on the wall clock, plain training's on the monotonic clock,
    seconds the scan ran alone, seconds plain training ran alone, plain training's exit on the monotonic clock)."""
    exits: dict[str, float] = {}
    waiter = threading.Thread(target=lambda: (train.wait(), exits.setdefault("train", time.monotonic())), daemon=True)
    waiter.start()
    scan_stops, train_stops = [], []
    signal_tree(train, signal.SIGSTOP)
    train_stopped_at: Optional[float] = time.monotonic()
    while scan.poll() is None and train.poll() is None:
        end = time.monotonic() + window  # the scan's turn: at least `window`, then up to its next safe point
        while scan.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        watch.safe_now()  # lines written before now are too old: the stop must follow a step just ended
        while scan.poll() is None and not watch.safe_now():
            time.sleep(0.002)
        if scan.poll() is not None:
            break
        signal_tree(scan, signal.SIGSTOP)
        scan_stopped_at = time.time()
        signal_tree(train, signal.SIGCONT)
        train_stops.append((train_stopped_at, time.monotonic()))
        train_stopped_at = None
        end = time.monotonic() + window * share  # plain training's turn
        while train.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if train.poll() is None:
            signal_tree(train, signal.SIGSTOP)
            train_stopped_at = time.monotonic()
        signal_tree(scan, signal.SIGCONT)
        scan_stops.append((scan_stopped_at, time.time()))
    scan_alone = train_alone = 0.0
    if train.poll() is None:  # the scan ended first: plain training alone from here
        signal_tree(train, signal.SIGCONT)
        if train_stopped_at is not None:
            train_stops.append((train_stopped_at, time.monotonic()))
        t0 = time.monotonic()
        waiter.join()
        train_alone = time.monotonic() - t0
    if scan.poll() is None:
        t0 = time.monotonic()
        scan.wait()
        scan_alone = time.monotonic() - t0
    waiter.join()
    return scan_stops, train_stops, scan_alone, train_alone, exits["train"]


def correct(scan_dir: Path, stops: Stops) -> int:
    """Every rank record of the scan with its stopped seconds taken out (originals kept), then the outputs rebuilt."""
    fixed = 0
    for f in [*scan_dir.glob("trials/*/rank*.jsonl"), *scan_dir.glob("epoch/w*/rank*.jsonl")]:
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        new, n = unstop_steps(rows, stops)
        if n:
            shutil.copy(f, f.with_name(f.name + ".orig"))
            f.write_text("".join(json.dumps(r) + "\n" for r in new))
            fixed += n
    done = subprocess.run(
        [str(Path(sys.executable).parent / "yoloprof"), "report", str(scan_dir)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"fidelity_side: yoloprof report {scan_dir} failed: {done.stderr[-800:]}")
    return fixed


def one_round(n: int, args, best: Path, out: Path) -> fidelity.Ratio:
    scan_dir, work = out / f"scan-{n}", out / f"plain-{n}"
    shutil.rmtree(scan_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = fidelity.scan_cmd(scan_dir, args)
    print("$", " ".join(cmd), flush=True)
    argv, env = fidelity.plain_launch(best, args.run_epochs, work, ())
    with open(out / f"scan-{n}.log", "w") as slog, open(work / "train.log", "w") as tlog:
        launched = time.monotonic()
        train = subprocess.Popen(argv, cwd=work, env=env, stdout=tlog, stderr=subprocess.STDOUT)
        scan = subprocess.Popen(cmd, stdout=slog, stderr=subprocess.STDOUT)
        try:
            scan_stops, train_stops, scan_alone, train_alone, exited = take_turns(
                scan, train, ScanWatch(scan_dir), args.window, args.share
            )
        finally:
            for p in (scan, train):
                if p.poll() is None:
                    signal_tree(p, signal.SIGCONT)
                    for q in reversed(_tree(p)):
                        q.kill()
    (out / f"stops-{n}.json").write_text(
        json.dumps(
            {
                "scan_wall": scan_stops,
                "plain_monotonic": train_stops,
                "plain_launched": launched,
                "plain_exited": exited,
                "scan_alone_s": scan_alone,
                "plain_alone_s": train_alone,
            }
        )
    )
    if train.returncode != 0:
        raise SystemExit(f"fidelity_side: plain training exited {train.returncode} ({work / 'train.log'})")
    if scan.returncode != 0:  # its own analysis ran on records the stops had inflated: rebuilt below
        print(f"the scan exited {scan.returncode} ({out / f'scan-{n}.log'}); its records are corrected and re-read")
    fixed = correct(scan_dir, scan_stops)
    log = [json.loads(x) for x in (work / "steps.jsonl").read_text().splitlines() if x.strip()]
    log, launched_own, exited_own = unstop_log(log, launched, exited, train_stops)
    stopped_s = sum(e - s for s, e in train_stops)
    print(
        f"\nround {n}: {len(scan_stops)} turns each; the scan stopped {sum(e - s for s, e in scan_stops):.0f} s "
        f"({fixed} step records corrected), plain training {stopped_s:.0f} s; alone: the scan {scan_alone:.0f} s, "
        f"plain training {train_alone:.0f} s"
    )
    trial, pred = fidelity.read_scan(scan_dir)
    run = (None, log, launched_own, exited_own, work)
    return fidelity.compare_run(n, pred, run, args.run_epochs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-epochs", type=int, default=8, help="epochs of the plain run and of the prediction")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--window", type=float, default=8.0, help="seconds of the scan's turn (at least)")
    ap.add_argument("--share", type=float, default=1.9, help="plain training's turn over the scan's")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default="runs/yoloprof/bench-fidelity-side")
    args = ap.parse_args()
    if args.run_epochs < 1 or args.rounds < 1 or args.window <= 1 or args.share <= 0:
        raise SystemExit("fidelity_side: give --run-epochs >= 1, --rounds >= 1, --window > 1, --share > 0")
    args.gpus, args.scan_epochs = None, args.run_epochs
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    args.scan_arg = ["--steps", "10", "--max-steps", "10", "--precision", "off", "--no-epoch-job"]
    best = fidelity.scan(out / "config", args)  # best.yaml and best.env only
    args.scan_arg = []
    runs = [one_round(n, args, best, out) for n in range(1, args.rounds + 1)]
    w = fidelity.combine(runs)
    print(
        f"\nrun, side by side: plain yolo train cfg=best.yaml epochs={args.run_epochs} (launch to exit, stopped time "
        f"out) / run_h: {w.ratio:.3f} (95% {w.low:.3f}-{w.high:.3f}): {fidelity.judge(w, fidelity.RUN_TARGET)}"
    )
    print(f"benchmark wall: {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
