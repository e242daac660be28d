"""What telemetry costs a training step: run on demand, prints ratios measured side by side.

    .venv/bin/python benchmarks/telemetry_overhead.py [--interval 0.1] [--windows 10] [--window-s 2]

As in a scan, the sampler runs in this process and the "training" in another: a rank-like child
(with four idle DataLoader-like workers) runs a fixed CPU-bound step (~0.2 s of matmuls) over and
over, while this process switches the sampler on and off in alternating windows. Step times in
"on" windows over those in "off" windows is the slowdown, measured side by side in one run. Also
printed: the cost of one read and the sampler thread's own CPU. The budget is 1% of a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from probes.cpu_telemetry import CpuReader
from probes.gpu_telemetry import open_gpus
from probes.telemetry import TelemetrySampler

RANK = """
import json, subprocess, sys, time, torch
torch.set_num_threads(1)
workers = [subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)"]) for _ in range(4)]
a = torch.randn(384, 384) / 20
while True:
    t0 = time.perf_counter()
    b = a
    for _ in range(150):
        b = torch.tanh(b @ b)
    print(json.dumps([time.time(), time.perf_counter() - t0]), flush=True)
"""


def thread_cpu_s(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--window-s", type=float, default=2.0)
    args = p.parse_args()
    launcher = f"import subprocess,sys\nsubprocess.Popen([sys.executable,'-c',{RANK!r},'yoloprof.worker']).wait()\n"
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "steps.jsonl", "w+")
        root = subprocess.Popen([sys.executable, "-c", launcher], stdout=log)  # the rank inherits this stdout
        try:
            time.sleep(3.0)
            reader = CpuReader(root.pid)
            reader.read()
            t0 = time.perf_counter()
            for _ in range(50):
                s = reader.read()
            read_ms = (time.perf_counter() - t0) / 50 * 1e3
            print(f"CPU read of a 1-rank, {s.loader_workers}-worker tree: {read_ms:.2f} ms")
            gpu, status = open_gpus([0])
            if gpu is not None:
                t0 = time.perf_counter()
                for _ in range(50):
                    gpu.read()
                print(f"GPU read (1 GPU): {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms")
                gpu.close()
            else:
                print(f"GPU read: n/a ({status})")
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
    report(steps, windows, thread_cpu, read_ms, args)


def report(steps: list[tuple[float, float]], windows, thread_cpu, read_ms, args) -> None:
    def inside(on: bool) -> list[float]:
        return [d for t, d in steps for o, a, b in windows if o == on and a + 0.3 <= t <= b]  # skip the edges

    off, on = inside(False), inside(True)
    b, s = statistics.median(off), statistics.median(on)
    per_window = [statistics.median([d for t, d in steps if a + 0.3 <= t <= e] or [float("nan")]) for _, a, e in windows]
    paired = [per_window[i] / ((per_window[i - 1] + per_window[i + 1]) / 2)
              for i in range(1, len(windows) - 1) if windows[i][0]]  # each "on" window against its neighbours
    print(f"step, sampler off: {b * 1e3:.1f} ms (median of {len(off)} steps)")
    print(f"step, sampler on at {args.interval * 1e3:.0f} ms: {s * 1e3:.1f} ms (median of {len(on)} steps)")
    print(f"ratio on/off: {s / b:.4f}  ({100 * (s / b - 1):+.2f}% of a step; budget 1%)")
    print(f"paired window ratios: median {statistics.median(paired):.4f}, range {min(paired):.4f}-{max(paired):.4f}"
          " (the spread is this machine's noise)")
    print(f"sampler thread CPU: {100 * statistics.median(thread_cpu):.2f}% of one core")
    print(f"one CPU read per {args.interval * 1e3:.0f} ms: {read_ms / (args.interval * 1e3) * 100:.2f}% of one core")


if __name__ == "__main__":
    main()
