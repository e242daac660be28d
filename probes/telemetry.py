"""Background sampling of GPU and CPU while a trial runs, into trials/<id>/telemetry.jsonl.

It runs in the scan process, not in the ranks, so it adds no work to the training loop. Samples
are stamped with time.time(), the clock of the step records, so both share one time axis. A
failing reader writes one error line and stops; the sampler never raises into the scan.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

from probes.cpu_telemetry import CpuReader
from probes.gpu_telemetry import open_gpus
from yoloprof.records import TelemetryHeader, to_dict


class TelemetrySampler:
    def __init__(self, path: Path, interval_s: float = 0.1, gpus: Optional[list[int]] = None,
                 root_pid: Optional[int] = None, environ: Optional[Mapping[str, str]] = None):  # fmt: skip
        self.path, self.interval_s = Path(path), float(interval_s)
        self.gpus, self.environ = list(gpus or []), environ
        self.cpu = CpuReader(root_pid)
        self.gpu = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._f = None

    def attach(self, pid: int) -> None:
        """The trial's root process, started after the sampler."""
        self.cpu.root_pid = pid

    def _write(self, kind: str, payload: dict) -> None:
        with self._lock:
            if self._f is not None:
                self._f.write(json.dumps({"kind": kind, **payload}) + "\n")
                self._f.flush()

    def start(self) -> "TelemetrySampler":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)
        self.gpu, status = open_gpus(self.gpus, self.environ)
        header = TelemetryHeader(
            interval_s=self.interval_s,
            gpus=self.gpus,
            nvml_indices=self.gpu.nvml_indices if self.gpu else [],
            gpu_status=status,
            t_start_s=time.time(),
        )
        self._write("header", to_dict(header))
        self._thread = threading.Thread(target=self._run, name="yoloprof-telemetry", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            t_s = time.time()
            if self.gpu is not None:
                try:
                    for s in self.gpu.read(t_s):
                        self._write("gpu", to_dict(s))
                except Exception as exc:  # noqa: BLE001 - one error line, then this source stops
                    self._write("error", {"source": "gpu", "message": f"{type(exc).__name__}: {exc}"})
                    self.gpu.close()
                    self.gpu = None
            if self.cpu is not None:
                try:
                    self._write("cpu", to_dict(self.cpu.read(t_s)))
                except Exception as exc:  # noqa: BLE001
                    self._write("error", {"source": "cpu", "message": f"{type(exc).__name__}: {exc}"})
                    self.cpu = None
            k += 1
            self._stop.wait(max(start + k * self.interval_s - time.monotonic(), 0.0))  # drift-free schedule

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.gpu is not None:
            if self.gpu.unsupported:
                self._write("unsupported", {"fields": sorted(self.gpu.unsupported)})
            self.gpu.close()
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
