"""Background sampling of GPU and CPU while a trial runs, into trials/<id>/telemetry.jsonl.

It runs in the scan process, not in the ranks, so it adds no work to the training loop. Samples
are stamped with time.time(), the clock of the step records, so both share one time axis. A
failing reader writes one error line and stops; the sampler never raises into the scan: losing
telemetry must not lose the trial.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from yoloprof.probes.cpu_telemetry import CpuReader
from yoloprof.probes.gpu_telemetry import GpuReader, open_gpus
from yoloprof.records import TelemetryHeader, to_dict


class TelemetrySampler:
    JOIN_S = 5.0  # longest stop() waits for a read stuck in the driver

    def __init__(
        self,
        path: Path,
        interval_s: float = 0.1,
        gpus: Optional[list[int]] = None,
        root_pid: Optional[int] = None,
        environ: Optional[Mapping[str, str]] = None,
        mem_used_before_launch_mib: Optional[list[Optional[float]]] = None,
    ):
        """mem_used_before_launch_mib: what the GPUs used before the launch (a pool's, read when it started);
        None: read at start(), which must then come before the launch."""
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.path, self.interval_s = Path(path), float(interval_s)
        self.gpus, self.environ, self.root_pid = list(gpus or []), environ, root_pid
        self.mem_used_before_launch_mib = mem_used_before_launch_mib
        self.gpu: Optional[GpuReader] = None  # None once it failed (or never opened)
        self.cpu: Optional[CpuReader] = None
        self.error: Optional[str] = None  # why nothing is written, if the file could not be opened
        self._reader: Optional[GpuReader] = None  # kept after a failure: it still owes nvmlShutdown
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._f: Any = None

    def attach(self, pid: int) -> None:
        """The trial's root process (torchrun), started after the sampler."""
        self.root_pid = pid
        if self.cpu is not None:
            self.cpu.root_pid = pid

    def _write(self, kind: str, payload: dict) -> None:
        with self._lock:
            if self._f is None:
                return
            try:
                self._f.write(json.dumps({"kind": kind, **payload}) + "\n")
                self._f.flush()
            except (OSError, ValueError, TypeError) as exc:  # disk full, or a value JSON cannot hold
                self.error = f"telemetry stopped: {type(exc).__name__}: {exc}"
                self._stop.set()

    def _fail(self, source: str, exc: BaseException) -> None:
        self._write("error", {"source": source, "message": f"{type(exc).__name__}: {exc}"})
        if source == "gpu":
            self.gpu = None
        else:
            self.cpu = None

    def start(self) -> TelemetrySampler:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w")  # a re-run trial starts a fresh file, as launcher.log does
        except OSError as exc:
            self.error = f"telemetry not written: {exc}"
            return self
        try:
            self.gpu, status = open_gpus(self.gpus, self.environ)
        except Exception as exc:  # noqa: BLE001 - open_gpus should not raise; if it does, no GPU data
            self.gpu, status = None, f"not measured: {type(exc).__name__}: {exc}"
        self._reader = self.gpu
        if self.mem_used_before_launch_mib is None and self.gpu is not None:
            self.mem_used_before_launch_mib = self.gpu.mem_used_mib()
        header = TelemetryHeader(
            interval_s=self.interval_s,
            gpus=self.gpus,
            nvml_indices=list(self.gpu.nvml_indices) if self.gpu else [],
            gpu_status=status,
            unsupported=sorted(self.gpu.unsupported) if self.gpu else [],
            t_start_s=time.time(),
            mem_used_before_launch_mib=self.mem_used_before_launch_mib,
        )
        self._write("header", to_dict(header))
        try:
            self.cpu = CpuReader(self.root_pid)
        except Exception as exc:  # noqa: BLE001
            self._fail("cpu", exc)
        thread = threading.Thread(target=self._run, name="yoloprof-telemetry", daemon=True)
        try:
            thread.start()
            self._thread = thread
        except RuntimeError as exc:  # no thread to be had: the trial runs without samples
            self.error = f"telemetry not sampled: {exc}"
        return self

    def _sample(self) -> None:
        t_s = time.time()
        if self.gpu is not None:
            try:
                samples = self.gpu.read(t_s)
                for s in samples:
                    self._write("gpu", to_dict(s))
            except Exception as exc:  # noqa: BLE001 - one error line, then this source stops
                self._fail("gpu", exc)
        if self.cpu is not None:
            try:
                self._write("cpu", to_dict(self.cpu.read(t_s)))
            except Exception as exc:  # noqa: BLE001
                self._fail("cpu", exc)

    def _run(self) -> None:
        start, k = time.monotonic(), 0
        while not self._stop.is_set():
            self._sample()
            # drift-free: tick k is at start + k * interval; ticks missed by a slow read are skipped
            k = max(k + 1, math.floor((time.monotonic() - start) / self.interval_s) + 1)
            self._stop.wait(max(start + k * self.interval_s - time.monotonic(), 0.0))

    def stop(self) -> None:
        """Stop sampling, note the unsupported GPU fields, close NVML and the file. Safe to call twice."""
        self._stop.set()
        stuck = False
        if self._thread is not None:
            self._thread.join(timeout=self.JOIN_S)
            stuck = self._thread.is_alive()
        reader, self._reader, self.gpu = self._reader, None, None
        if reader is not None:
            if reader.unsupported:
                self._write("unsupported", {"fields": sorted(reader.unsupported)})
            if not stuck:  # shutting NVML down under a read still in the driver is worse than leaking it
                reader.close()
        with self._lock:
            if self._f is not None:
                try:
                    self._f.close()
                except OSError:
                    pass
                self._f = None

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
