"""What yoloprof's probes and telemetry cost real training: on/off windows in one training run.

    .venv/bin/python benchmarks/overhead.py [--watch] [--windows 60] [--window-steps 6] [--imgsz 128]
                                            [--batch 16] [--device cpu] [--interval S] [--no-telemetry]

Two modes: a scan's trial (default: every step written, telemetry every 0.1 s, budget 2%), and with
--watch what `yoloprof train` attaches to the real run (yoloprof.worker.run_watch._attach itself, steps
kept in memory for the epoch's summary, telemetry every 1 s as yoloprof train samples it; budget 1%).

One Ultralytics DetectionTrainer trains in this process (world size 1, workers 0 on CPU, yolo11n.yaml,
imgsz 128, SGD, the synthetic dataset; close_mosaic=0, warmup_epochs=0, val=False as in a trial) and
the probes are switched on and off between steps, every `--window-steps` steps. One process, one
model, one optimizer, one dataloader: the two sides differ by nothing but the probes, which a pair of
processes could not promise (each launch has its own speed, ../shared/NOISE.md: 6-24% between
launches). "On" is what a trial attaches:
- in the training process, yoloprof.worker.trainer.ScanTrainer._attach_probes itself (the forward
  hook, the post-accumulate-grad hook, the timed scaler; its DDP comm hook exists only under DDP, so
  not at world size 1), the h2d and optimizer marks ScanTrainer adds, and the StepProbe's epoch and
  batch boundaries with its sink writing every step to a rank JSONL file, as the worker does;
- in another process, as in a scan, probes.telemetry.TelemetrySampler sampling this process's tree
  every `--interval` s (started and stopped with each "on" window); --no-telemetry leaves it out, to
  tell the two costs apart.
"Off" is Ultralytics' own DetectionTrainer: the hooks removed, the original scaler and methods back.
What stays in both: one timing callback per step (perf_counter between on_train_batch_end calls)
and two callbacks that test one flag. The trial's stopping-rule check is left out: a trial restarts
its clock after it, so it never reaches a measured step.

Windows alternate in mirrored pairs, off on | on off | off on | ..., so a steady drift of the
machine cancels over pairs. Each window's figure is the mean of its steps after the first (the
first may overlap the sampler starting or stopping in the other process); steps that start an epoch
are left out on both sides. The ratio is the geometric mean over pairs of (on window / off window)
with a Student-t 95% interval of the pairs' log ratios. The machine's own noise is the same figure
for neighbouring off windows (off | off at the pair boundaries): an off/off ratio whose interval
should hold 1. On a shared machine a neighbour's burst slows a few windows by 50% or more; the mean
carries it as noise, so the median of the pairs with its order-statistic interval is printed beside it
as a robust check.

Prints: windows and steps, step ms with and without, the ratio and its interval, the training process's
CPU time a step on/off, the probe's own calls timed inside them (a cost no neighbour's noise hides, where
the whole-step ratio cannot resolve 1%), the telemetry process's CPU, the off/off noise, the robust
check, and a verdict against the 2% budget from the t-interval (or that this run cannot
tell the overhead from its noise). Every step's time is kept in windows.json in the printed folder.
Default: 60 windows of 6 steps, about 10 minutes on this 2-core VM (1-1.4 s a step). On CPU Ultralytics itself sets torch to
min(8, cores - 1) threads (1 here), as in a trial, so the sampler's process has a core of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET = 0.02  # a trial's probes
WATCH_BUDGET = 0.01  # the watched run's (issue 23)
WARMUP_STEPS = 5  # before the first window: first steps pay for lazy allocation and caches

SAMPLER = """
import os, pathlib, sys
from yoloprof.probes.telemetry import TelemetrySampler
pid, interval, folder = int(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
gpus = [int(g) for g in sys.argv[4].split(",") if g]
sampler, n = None, 0
for line in sys.stdin:
    if line.strip() == "on" and sampler is None:
        n += 1
        sampler = TelemetrySampler(folder / f"w{n:03d}.jsonl", interval_s=interval, gpus=gpus, root_pid=pid).start()
    elif line.strip() == "off" and sampler is not None:
        sampler.stop()
        sampler = None
if sampler is not None:
    sampler.stop()
t = os.times()
print(t.user + t.system, flush=True)  # the sampler process's CPU seconds, for the benchmark
"""


# -- pure helpers (tests/test_benchmarks_parse.py) -------------------------------------------------
def schedule(n: int) -> list[bool]:
    """Probes on (True) or off per window: off on | on off | off on | ... (mirrored pairs)."""
    return [(w % 4) in (1, 2) for w in range(n)]


@dataclass
class RatioCI:
    ratio: float
    low: float
    high: float
    n: int
    sd: float  # of the log ratios: the spread of one pair

    @property
    def half_pct(self) -> float:
        """Half the interval's width, in percent of the ratio: what this run can resolve."""
        return 100 * (self.high - self.low) / 2 / self.ratio


def log_ratio_ci(logs: Sequence[float]) -> Optional[RatioCI]:
    """exp(mean) of log ratios with a Student-t 95% interval; None with fewer than 2."""
    from yoloprof.analysis.intervals import t975

    if len(logs) < 2:
        return None
    m, sd = statistics.mean(logs), statistics.stdev(logs)
    half = t975(len(logs) - 1) * sd / math.sqrt(len(logs))
    return RatioCI(math.exp(m), math.exp(m - half), math.exp(m + half), len(logs), sd)


def median_ci(logs: Sequence[float]) -> Optional[tuple[float, float, float]]:
    """exp of the median log ratio with a distribution-free 95% interval (order statistics k and n-k+1,
    k the largest with 2 P(Binomial(n, 1/2) <= k-1) <= 5%): robust to a neighbour's burst that slows a
    few pairs. None with fewer than 6 (no such interval)."""
    n = len(logs)
    tail, k = 0.0, 0
    while True:
        tail += math.comb(n, k) / 2**n
        if 2 * tail > 0.05:
            break
        k += 1
    if k == 0:
        return None
    xs = sorted(logs)
    return math.exp(statistics.median(xs)), math.exp(xs[k - 1]), math.exp(xs[n - k])


def pair_logs(states: Sequence[bool], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """(on/off log ratios of the mirrored pairs (0,1), (2,3), ...; later/earlier log ratios of neighbouring
    off windows). Windows whose value is missing (nan) drop their pairs."""
    on_off, off_off = [], []
    for i in range(len(states) - 1):
        a, b = values[i], values[i + 1]
        if math.isnan(a) or math.isnan(b):
            continue
        if i % 2 == 0 and states[i] != states[i + 1]:
            on, off = (a, b) if states[i] else (b, a)
            on_off.append(math.log(on / off))
        elif not states[i] and not states[i + 1]:
            off_off.append(math.log(b / a))
    return on_off, off_off


def verdict(ci: RatioCI, budget: float = BUDGET) -> str:
    pct = lambda r: f"{100 * (r - 1):+.2f}%"  # noqa: E731
    head = f"overhead {pct(ci.ratio)} (95% {pct(ci.low)} to {pct(ci.high)}): "
    if ci.high - 1 < budget:
        return head + f"under {100 * budget:g}%"
    if ci.low - 1 > budget:
        return head + f"OVER {100 * budget:g}%"
    if ci.half_pct >= 100 * budget:
        return head + f"cannot be told from noise of +-{ci.half_pct:.1f}%"
    return head + f"not shown under {100 * budget:g}% (the interval straddles it)"


# -- the run ---------------------------------------------------------------------------------------
class Stop(Exception):
    """Raised from a callback once every window is measured: skips Ultralytics' validation and saving."""


@dataclass
class Switch:
    """Attaches and detaches a trial's probes between steps; times every step."""

    trainer: object
    probe: object
    sampler: subprocess.Popen
    states: list[bool]
    window_steps: int
    no_telemetry: bool = False
    watch: bool = False  # attach what yoloprof train's watch attaches instead of a trial's probes
    on: bool = False
    steps: list[tuple[int, float]] = field(default_factory=list)  # (window or -1, seconds)
    cpu: list[float] = field(default_factory=list)  # this process's CPU seconds of each step, as `steps`
    _last: Optional[float] = None
    _last_cpu: float = 0.0
    _boundary: bool = False
    _undo: list = field(default_factory=list)
    sampler_cpu_s: float = math.nan  # the telemetry process's CPU seconds over the whole run
    own: list[float] = field(default_factory=list)  # seconds inside the probe's own calls each step, as `steps`
    _own: float = 0.0

    def time_own_code(self) -> None:
        """Count the seconds spent inside the probe's calls (marks, batch boundaries, images, buckets, the
        sink), wherever the hooks call them from: the attached code's own cost, which no neighbour's noise
        hides. Hook dispatch and the wrappers' frames are not in it; the on/off ratio is the check on those."""
        probe = self.probe
        for name in ("mark", "batch_start", "batch_end", "set_images", "bucket_launched"):
            fn = getattr(probe, name)

            def timed(*a, _fn=fn, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self._own += time.perf_counter() - t0

            setattr(probe, name, timed)

    def epoch_start(self, t) -> None:
        self._boundary = True
        if self.on:
            self.probe.epoch_start()

    def batch_start(self, t) -> None:
        if self.on:
            self.probe.batch_start(t.epoch)

    def batch_end(self, t) -> None:
        if self.on:
            self.probe.batch_end()

    def timer(self, t) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._last is not None and not self._boundary:
            self.cpu.append(cpu - self._last_cpu)
            self.own.append(self._own)
            k = len(self.steps) - WARMUP_STEPS  # index of this step past the warm-up
            w = k // (self.window_steps + 1) if k >= 0 else -1
            settle = k >= 0 and k % (self.window_steps + 1) == 0
            self.steps.append((-1 if settle else w, now - self._last))
            nxt = (k + 1) // (self.window_steps + 1) if k + 1 >= 0 else -1
            if nxt >= len(self.states):
                raise Stop()
            if nxt >= 0 and self.states[nxt] != self.on:
                self._toggle(self.states[nxt])
        self._last, self._last_cpu, self._boundary = time.perf_counter(), time.process_time(), False
        self._own = 0.0

    def _toggle(self, on: bool) -> None:
        (self._attach if on else self._detach)()
        self.on = on
        if not self.no_telemetry:
            self.sampler.stdin.write("on\n" if on else "off\n")
        self.sampler.stdin.flush()

    def _attach(self) -> None:
        from ultralytics.models.yolo.detect import DetectionTrainer
        from ultralytics.utils.torch_utils import unwrap_model

        from yoloprof.worker import run_watch
        from yoloprof.worker.trainer import ScanTrainer

        t, probe = self.trainer, self.probe
        model = t.model
        first = next(p for p in unwrap_model(model).parameters() if p.requires_grad)
        fwd0, grad0, scaler0 = set(model._forward_hooks), set(first._post_accumulate_grad_hooks or {}), t.scaler
        if self.watch:  # the watch's own code: the last-gradient hook, the timed scaler, h2d and optimizer marks
            run_watch._attach(t, probe, 0)
            self._undo.append(self._undoer(model, first, fwd0, grad0, scaler0))
            return
        t.probe = probe
        ScanTrainer._attach_probes(t)  # the trial's own code: hooks and the timed scaler

        def preprocess_batch(batch):  # as ScanTrainer.preprocess_batch
            batch = DetectionTrainer.preprocess_batch(t, batch)
            probe.set_images(batch["img"].shape[0])
            probe.mark("h2d_end")
            return batch

        def optimizer_step():  # as ScanTrainer.optimizer_step
            probe.mark("opt_start")
            DetectionTrainer.optimizer_step(t)
            probe.mark("opt_end")

        t.preprocess_batch, t.optimizer_step = preprocess_batch, optimizer_step
        self._undo.append(self._undoer(model, first, fwd0, grad0, scaler0))

    def _undoer(self, model, first, fwd0, grad0, scaler0):
        t = self.trainer
        fwd = set(model._forward_hooks) - fwd0
        grad = set(first._post_accumulate_grad_hooks or {}) - grad0

        def undo():
            for k in fwd:
                del model._forward_hooks[k]
            for k in grad:
                del first._post_accumulate_grad_hooks[k]
            t.scaler = scaler0
            del t.preprocess_batch, t.optimizer_step

        return undo

    def _detach(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.probe.current = None  # a probe switched on again starts afresh
        self.probe._last_end = None


class OneBatch:
    """--fixed-batch: the loader's first batch, handed over as many times as the loader has batches. Steps then
    differ by the machine only, not by what mosaic composed (on this machine: a step's sd 18% with the real
    loader); the data pipeline's own cost is out of both sides."""

    def __init__(self, loader):
        self.loader, self.n = loader, len(loader)
        self.batch = next(iter(loader))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([self.batch] * self.n)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def run(args) -> tuple[Switch, int, str]:
    tmp = Path(tempfile.mkdtemp(prefix="yoloprof-overhead-"))
    from yoloprof import paths
    from yoloprof.scan.launch import offline_env

    os.environ.update({**offline_env(paths.cache_dir()), "YOLO_VERBOSE": "False"})
    from yoloprof.probes import offline
    from yoloprof.probes.clock import Clock
    from yoloprof.probes.steps import StepProbe
    from ultralytics.models.yolo.detect import DetectionTrainer
    from yoloprof.data.dataset import SyntheticSpec, ensure
    from yoloprof.worker.__main__ import RankWriter

    offline.patch_ultralytics()
    data = ensure(paths.cache_dir(), SyntheticSpec())
    writer = RankWriter(tmp / "rank0.jsonl")
    cuda = args.device != "cpu"
    kept: list = []  # --watch: the epoch's steps, summarised at its end (run_watch.RunWatch keeps them so)
    sink = kept.append if args.watch else (lambda s: writer.write("step", s))
    probe = StepProbe(0, 0, Clock(cuda=cuda), sink)
    gpus = args.device if cuda else ""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sampler = subprocess.Popen(
        [sys.executable, "-c", SAMPLER, str(os.getpid()), str(args.interval), str(tmp), gpus],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    trainer = DetectionTrainer(
        overrides=dict(
            model="yolo11n.yaml",
            data=str(data),
            imgsz=args.imgsz,
            batch=args.batch,
            workers=0,
            device=args.device,
            optimizer="SGD",
            epochs=1000,
            close_mosaic=0,
            warmup_epochs=0,
            val=False,
            save=False,
            plots=False,
            project=str(tmp),
            name="train",
            exist_ok=True,
            verbose=False,
        )
    )
    sw = Switch(trainer, probe, sampler, schedule(args.windows), args.window_steps, args.no_telemetry, args.watch)
    trainer.add_callback("on_train_epoch_start", lambda t: kept.clear())
    if args.fixed_batch:
        trainer.add_callback("on_train_start", lambda t: setattr(t, "train_loader", OneBatch(t.train_loader)))
    sw.time_own_code()
    for event, fn in (
        ("on_train_epoch_start", sw.epoch_start),
        ("on_train_batch_start", sw.batch_start),
        ("on_train_batch_end", sw.batch_end),
        ("on_train_batch_end", sw.timer),
    ):
        trainer.add_callback(event, fn)
    try:
        trainer.train()
        raise SystemExit("overhead: training ended before every window was measured")
    except Stop:
        pass
    finally:
        sampler.stdin.close()
        out = sampler.stdout.read()
        sampler.wait(timeout=30)
        writer.close()
    try:
        sw.sampler_cpu_s = float(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sw.sampler_cpu_s = math.nan
    samples = sum(1 for f in tmp.glob("w*.jsonl") for line in f.open() if line.startswith('{"kind": "cpu"'))
    return sw, samples, str(tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=60, help="windows, half with probes (default 60)")
    ap.add_argument(
        "--window-steps", type=int, default=6, help="measured steps per window, after one settling step (default 6)"
    )
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, or one GPU index (default cpu)")
    ap.add_argument("--watch", action="store_true", help="what yoloprof train's watch attaches (budget 1%%)")
    ap.add_argument(
        "--interval", type=float, default=None, help="telemetry interval, s (a scan's 0.1; --watch: the run's 1.0)"
    )
    ap.add_argument("--fixed-batch", action="store_true", help="train the loader's first batch every step (less noise)")
    ap.add_argument("--no-telemetry", action="store_true", help="switch only the in-process probes (no sampler)")
    args = ap.parse_args()
    if args.interval is None:
        from yoloprof.worker.run_watch import TELEMETRY_S

        args.interval = TELEMETRY_S if args.watch else 0.1
    if args.windows < 4 or args.window_steps < 1:
        raise SystemExit("overhead: give --windows >= 4 and --window-steps >= 1")
    start = time.monotonic()
    sw, samples, tmp = run(args)
    wall = time.monotonic() - start
    per_window = [[s for w, s in sw.steps if w == i] for i in range(len(sw.states))]
    means = [statistics.mean(x) if x else math.nan for x in per_window]
    on_steps = [s for i, x in enumerate(per_window) if sw.states[i] for s in x]
    off_steps = [s for i, x in enumerate(per_window) if not sw.states[i] for s in x]
    on_off, off_off = pair_logs(sw.states, means)
    Path(tmp, "windows.json").write_text(json.dumps({"states": sw.states, "steps": sw.steps}))
    ci, noise = log_ratio_ci(on_off), log_ratio_ci(off_off)
    print(
        f"\n{'yoloprof train watch' if args.watch else 'a trial'}'s probes, telemetry every {args.interval:g} s"
        f"{' (left out)' if args.no_telemetry else ''}{'; one batch every step' if args.fixed_batch else ''}; yolo11n.yaml, imgsz {args.imgsz}, batch {args.batch}, {args.device}, workers 0, world size 1; "
        f"{os.cpu_count()} cores; {wall:.0f} s"
    )
    print(
        f"windows: {len(sw.states)} of {args.window_steps} steps (+1 settling), mirrored pairs off on | on off; "
        f"{len(on_off)} on/off pairs, {len(off_off)} off/off neighbours"
    )
    print(
        f"step, probes off: {1e3 * statistics.mean(off_steps):.1f} ms (mean of {len(off_steps)} steps, "
        f"sd {1e3 * statistics.stdev(off_steps):.1f})"
    )
    print(
        f"step, probes on:  {1e3 * statistics.mean(on_steps):.1f} ms (mean of {len(on_steps)} steps, "
        f"sd {1e3 * statistics.stdev(on_steps):.1f}); telemetry wrote {samples} CPU samples; files in {tmp}"
    )
    if ci is None:
        print("too few window pairs for an interval")
        return 1
    print(
        f"step time, on / off: {ci.ratio:.4f} (95% {ci.low:.4f} to {ci.high:.4f}; one pair's spread "
        f"sd {100 * ci.sd:.1f}%)"
    )
    if noise is not None:
        print(
            f"noise, off / off neighbours: {noise.ratio:.4f} (95% {noise.low:.4f} to {noise.high:.4f}; one pair's "
            f"spread sd {100 * noise.sd:.1f}%, {noise.n} pairs)"
        )
    # The training process's CPU time per step: what the attached code adds in the training loop itself,
    # without the wall clock's noise from the machine's other tenants (a descheduled rank counts no CPU time)
    cpu_windows = [[c for (w, _), c in zip(sw.steps, sw.cpu) if w == i] for i in range(len(sw.states))]
    cpu_means = [statistics.mean(x) if x else math.nan for x in cpu_windows]
    cpu_ci = log_ratio_ci(pair_logs(sw.states, cpu_means)[0])
    if cpu_ci is not None:
        on_cpu = [c for i, x in enumerate(cpu_windows) if sw.states[i] for c in x]
        off_cpu = [c for i, x in enumerate(cpu_windows) if not sw.states[i] for c in x]
        print(
            f"CPU time of the training process a step: off {1e3 * statistics.mean(off_cpu):.1f} ms, on "
            f"{1e3 * statistics.mean(on_cpu):.1f} ms; on / off {cpu_ci.ratio:.4f} (95% {cpu_ci.low:.4f} to "
            f"{cpu_ci.high:.4f}; one pair's spread sd {100 * cpu_ci.sd:.1f}%)"
        )
        print("in-loop " + verdict(cpu_ci, WATCH_BUDGET if args.watch else BUDGET))
    own = [o for (w, _), o in zip(sw.steps, sw.own) if w >= 0 and sw.states[w]]
    if len(own) >= 2:
        m, half = statistics.mean(own), 1.96 * statistics.stdev(own) / math.sqrt(len(own))
        step = statistics.mean(on_steps)
        print(
            f"the probe's own calls: {1e6 * m:.0f} us a step (95% {1e6 * (m - half):.0f}-{1e6 * (m + half):.0f}, "
            f"{len(own)} steps), {100 * m / step:.3f}% of the step with probes on (upper {100 * (m + half) / step:.3f}%)"
        )
    if not math.isnan(sw.sampler_cpu_s):
        print(
            f"telemetry process: {sw.sampler_cpu_s:.2f} CPU s over {wall:.0f} s, "
            f"{100 * sw.sampler_cpu_s / wall:.2f}% of one core (the {os.cpu_count()} cores' "
            f"{100 * sw.sampler_cpu_s / wall / os.cpu_count():.2f}%)"
        )
    robust = median_ci(on_off)
    if robust is not None:
        print(
            f"robust check, median of the pairs: {robust[0]:.4f} (95% {robust[1]:.4f} to {robust[2]:.4f}, order "
            "statistics: a neighbour's burst that slows a few windows does not move it)"
        )
    print(verdict(ci, WATCH_BUDGET if args.watch else BUDGET))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
