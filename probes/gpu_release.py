"""Wait until a finished trial has handed its GPU memory back, before the next trial starts.

A killed rank's CUDA context is torn down by the driver after the process is gone, sometimes
seconds later; a trial launched meanwhile finds less free memory and could OOM at a batch that
fits. NVML is the witness: the trial's processes leave the GPUs' compute-process lists and the
memory used falls back to what it was before the trial. Inside a container NVML may list host
PIDs (or none), so the memory check stands on its own.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional

from yoloprof.probes.gpu_telemetry import open_gpus

RELEASE_TIMEOUT_S = 60.0  # longer than any context teardown seen reported; a note says when it ran out
RELEASE_TOLERANCE_MIB = 256.0  # NVML's used memory moves this much with nothing of ours on the GPU


class ReleaseWatch:
    """Opened before a trial (the baseline), asked after it (the wait). Without NVML it waits for nothing."""

    def __init__(self, cuda_indices: list[int], environ: Optional[Mapping[str, str]] = None):
        self.reader, self.status = (None, "no GPU") if not cuda_indices else open_gpus(cuda_indices, environ)
        self.baseline_mib = self._used() if self.reader is not None else []

    def _used(self) -> list[Optional[float]]:
        return self.reader.mem_used_mib()

    def _pids(self) -> set[int]:
        found: set[int] = set()
        for h in self.reader.handles:
            try:
                found |= {int(p.pid) for p in self.reader.nvml.nvmlDeviceGetComputeRunningProcesses(h)}
            except Exception:  # noqa: BLE001
                continue
        return found

    def pending(self, pids: set[int], tolerance_mib: float = RELEASE_TOLERANCE_MIB) -> Optional[str]:
        """What still holds the GPUs, or None when they are back to their state before the trial."""
        held = sorted(pids & self._pids())
        if held:
            return f"process(es) {', '.join(map(str, held))} still on the GPU"
        for gpu, before, now in zip(self.reader.gpus, self.baseline_mib, self._used()):
            if before is not None and now is not None and now > before + tolerance_mib:
                return f"GPU {gpu} still uses {now - before:.0f} MiB more than before the trial"
        return None

    def wait(
        self, pids: set[int], timeout_s: float = RELEASE_TIMEOUT_S, poll_s: float = 0.2
    ) -> tuple[float, Optional[str]]:
        """(seconds waited, None) once released, or (seconds, what still held it) after timeout_s."""
        if self.reader is None:
            return 0.0, None
        start = time.monotonic()
        while True:
            why = self.pending(pids)
            waited = time.monotonic() - start
            if why is None or waited >= timeout_s:
                return waited, why
            time.sleep(poll_s)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
