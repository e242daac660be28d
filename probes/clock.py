"""Marks on two clocks: the host clock always, CUDA events when the work runs on a GPU.

A host timestamp says when Python got somewhere; on a GPU the kernels it queued may still be
running. Each mark therefore also records a CUDA event on the current stream, and durations of
device work are read from the events once they have completed (no synchronize in the loop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class Mark:
    host_s: float  # time.perf_counter()
    event: Optional[Any] = None  # torch.cuda.Event when timing on a GPU


class Clock:
    def __init__(self, cuda: bool):
        self.cuda = bool(cuda)

    def mark(self) -> Mark:
        if not self.cuda:
            return Mark(time.perf_counter())
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return Mark(time.perf_counter(), ev)

    @staticmethod
    def ready(mark: Optional[Mark]) -> bool:
        return mark is None or mark.event is None or mark.event.query()

    def ms(self, a: Optional[Mark], b: Optional[Mark]) -> Optional[float]:
        """Milliseconds from a to b: event time on a GPU, host time otherwise; None if a mark is missing."""
        if a is None or b is None:
            return None
        if self.cuda and a.event is not None and b.event is not None:
            return float(a.event.elapsed_time(b.event))
        return (b.host_s - a.host_s) * 1e3

    @staticmethod
    def host_ms(a: Optional[Mark], b: Optional[Mark]) -> Optional[float]:
        if a is None or b is None:
            return None
        return (b.host_s - a.host_s) * 1e3
