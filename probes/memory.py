"""Peak memory of one rank: the CUDA caching allocator on a GPU, the process RSS on CPU.

A rank that runs several trials (a pool) resets the peaks before each one, so a trial's peak is
its own: the allocator's counters on a GPU, the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs) on CPU.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Optional

import torch

MIB = 1024 * 1024


@dataclass
class MemoryPeak:
    peak_mib: Optional[float]
    allocated_mib: Optional[float]
    total_mib: Optional[float]
    source: str


def _vm_hwm_mib() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def start(device: Optional[torch.device]) -> None:
    """A rank's first device calls, in the order CUDA requires: make the rank's GPU current (which
    initialises CUDA, and its context there rather than on GPU 0), then start the trial's peaks.
    Called first, `reset_peak_memory_stats` raises "Invalid device argument N: did you call init?":
    unlike `empty_cache` it has no lazy-init guard, and the caching allocator does not exist yet."""
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.init()
    reset(device)


def reset(device: Optional[torch.device]) -> None:
    """Start a new trial's peaks: free cached blocks, zero the allocator's and the kernel's peaks.
    On a GPU the device must be initialised (`start`, or any CUDA work): a pool's later trials are."""
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        pass


def peak(device: torch.device) -> MemoryPeak:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / MIB
        return MemoryPeak(
            torch.cuda.max_memory_reserved(device) / MIB,
            torch.cuda.max_memory_allocated(device) / MIB,
            total,
            "cuda_reserved",
        )
    # The rank process itself, not its DataLoader workers; VmHWM is what a pool resets between trials.
    hwm = _vm_hwm_mib()
    return MemoryPeak(
        hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None, None, "rss"
    )
