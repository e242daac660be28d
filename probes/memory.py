"""Peak memory of one rank: the CUDA caching allocator on a GPU, the process RSS on CPU."""

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


def peak(device: torch.device) -> MemoryPeak:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / MIB
        return MemoryPeak(
            torch.cuda.max_memory_reserved(device) / MIB,
            torch.cuda.max_memory_allocated(device) / MIB,
            total,
            "cuda_reserved",
        )
    # ru_maxrss is KiB on Linux: the rank process itself, not its DataLoader workers.
    return MemoryPeak(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None, None, "rss")
