"""What telemetry costs a training step: run on demand, prints figures measured side by side in one run.

    .venv/bin/python benchmarks/telemetry_overhead.py [--interval 0.1] [--windows 24] [--window-s 1.5] [--threads N]

As in a scan, the sampler runs in this process and the "training" in another: a rank-like child
(with four idle DataLoader-like workers) runs a fixed CPU-bound step (~0.3 s of matmuls, on every
core by default: the worst case, nothing left idle for the sampler) over and over, while this
process switches the sampler on and off in alternating windows. Step time in "on" windows over
their "off" neighbours is the slowdown; "off" windows against each other are the machine's own
noise (on a shared VM it can exceed the 1% looked for). Also printed: the wall time of one read
(under that load) and the sampler thread's own CPU time. The budget is 1% of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from yoloprof.probes.cpu_telemetry import CpuReader
from yoloprof.probes.gpu_telemetry import open_gpus
from yoloprof.probes.telemetry import TelemetrySampler

STEP_S = 0.3
RANK = """
import json, subprocess, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
workers = [subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)"]) for _ in range(4)]
a = torch.randn(384, 384) / 20
def step(n):
    b = a
    for _ in range(n):
        b = torch.tanh(b @ b)
for _ in range(2):  # the first round warms up
    t0 = time.perf_counter(); step(50); n = max(1, round(50 * float(sys.argv[2]) / (time.perf_counter() - t0)))
while True:
    t0 = time.perf_counter()
    step(n)
    print(json.dumps([time.time(), time.perf_counter() - t0]), flush=True)
"""


def thread_cpu_s(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return 0.0


def read_ms(read, n: int = 50) -> float:
    read()
    t0 = time.perf_counter()
    for _ in range(n):
        read()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--window-s", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the step's torch threads")
    args = p.parse_args()
    rank = [sys.executable, "-c", RANK, str(args.threads), str(STEP_S), "-m", "yoloprof.worker"]
    launcher = f"import subprocess\nsubprocess.Popen({rank!r}).wait()\n"
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "steps.jsonl", "w+")
        root = subprocess.Popen([sys.executable, "-c", launcher], stdout=log)  # the rank inherits this stdout
        try:
            time.sleep(4.0)  # started and calibrated
            reader = CpuReader(root.pid)
            cpu_ms = read_ms(reader.read)
            workers = reader.read().loader_workers
            gpu, status = open_gpus([0])
            gpu_ms = read_ms(gpu.read) if gpu is not None else None
            if gpu is not None:
                gpu.close()
            windows, thread_cpu = [], []
            for w in range(args.windows):  # off, on, off, on, ...
                on, start = w % 2 == 1, time.time()
                if on:
                    sampler = TelemetrySampler(Path(tmp) / f"w{w}.jsonl", interval_s=args.interval, root_pid=root.pid)
                    sampler.start()
                    tid = sampler._thread.native_id
                    c0 = thread_cpu_s(tid)
                time.sleep(args.window_s)
                if on:
                    thread_cpu.append((thread_cpu_s(tid) - c0) / args.window_s)
                    sampler.stop()
                windows.append((on, start, time.time()))
        finally:
            for child in psutil.Process(root.pid).children(recursive=True):
                child.kill()
            root.kill()
        log.seek(0)
        steps = [tuple(json.loads(line)) for line in log if line.startswith("[")]
    print(
        f"machine: {os.cpu_count()} cores; step on {args.threads} torch thread(s); "
        f"sampler every {args.interval * 1e3:.0f} ms"
    )
    print(f"one CPU read (1 rank, {workers} workers, cores busy): {cpu_ms:.2f} ms")
    print(f"one GPU read: {f'{gpu_ms:.2f} ms' if gpu_ms is not None else f'n/a, no GPU reader here ({status})'}")
    report(steps, windows, thread_cpu, args)


def report(steps: list[tuple[float, float]], windows, thread_cpu, args) -> None:
    def inside(a: float, b: float) -> list[float]:
        return [d for t, d in steps if a + STEP_S <= t <= b]  # a step ending early in a window began in the last

    off = [d for on, a, b in windows if not on for d in inside(a, b)]
    on = [d for o, a, b in windows if o for d in inside(a, b)]
    base, with_sampler = statistics.median(off), statistics.median(on)
    per_window = [statistics.median(inside(a, b) or [float("nan")]) for _, a, b in windows]
    paired = [
        per_window[i] / ((per_window[i - 1] + per_window[i + 1]) / 2)
        for i in range(1, len(windows) - 1)
        if windows[i][0]
    ]  # each "on" window against its neighbours
    same = [per_window[i + 2] / per_window[i] for i in range(0, len(windows) - 2, 2)]  # off against off: the noise
    q = statistics.quantiles(same, n=4)
    noise = (q[2] - q[0]) / 2
    ratio = statistics.median(paired)
    share = statistics.median(thread_cpu)
    print(f"step, sampler off: {base * 1e3:.1f} ms (median of {len(off)} steps)")
    print(f"step, sampler on:  {with_sampler * 1e3:.1f} ms (median of {len(on)} steps)")
    verdict = "under" if ratio - 1 < 0.01 else "NOT under"
    if noise > 0.01:
        verdict = "inconclusive here: this machine's noise (below) is larger than"
    print(
        f"slowdown ratio on/off: {ratio:.4f} (median of {len(paired)} on-windows, each against its neighbours): "
        f"{100 * (ratio - 1):+.2f}% of a step; {verdict} the 1% budget"
    )
    print(f"noise: off-against-off windows differ by +-{100 * noise:.2f}% (half the interquartile range)")
    print(
        f"sampler thread CPU: {1e3 * share:.1f} ms per second ({100 * share:.2f}% of one core, "
        f"{100 * share / (os.cpu_count() or 1):.2f}% of this {os.cpu_count()}-core machine)"
    )


if __name__ == "__main__":
    main()
