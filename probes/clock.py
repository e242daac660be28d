"""Marks on two clocks: the host clock always, CUDA events when the work runs on a GPU.

A host timestamp says when Python got somewhere; on a GPU the kernels it queued may still be
running. Each mark therefore also records a CUDA event on the current stream, and durations of
device work are read from the events once they have completed (no synchronize in the loop).

`sync=True` is the reference the GPU check compares against: it synchronizes the device before
every mark and times everything on the host, which is exact and slows the loop down.

After a sticky CUDA error (illegal address, device assert) every event query raises again; the
clock remembers the first such error and answers "ready" and "n/a" from then on, so the error
path can still write what the rank measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from yoloprof.text import error_line


@dataclass
class Mark:
    host_s: float  # time.perf_counter()
    event: Optional[Any] = None  # torch.cuda.Event when timing on a GPU


def _cuda_event() -> Any:
    import torch

    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return ev


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


class Clock:
    def __init__(
        self,
        cuda: bool,
        *,
        sync: bool = False,
        new_event: Optional[Callable[[], Any]] = None,
        synchronize: Optional[Callable[[], None]] = None,
    ):
        """new_event / synchronize: replacements for torch.cuda's (an event is recorded when made), which
        the worker's fault injection uses to break a device; tests run the real calls against a stand-in."""
        self.cuda = bool(cuda)
        self.sync = bool(sync)
        self._new_event = new_event or _cuda_event
        self._synchronize = synchronize or _cuda_sync
        self.device_error: Optional[str] = None  # the first error the device raised while we asked it

    @property
    def events(self) -> bool:
        """Device phases come from CUDA events (not in sync mode, not after a device error)."""
        return self.cuda and not self.sync and self.device_error is None

    @property
    def timing(self) -> str:
        if not self.cuda:
            return "host"
        return "cuda_sync" if self.sync else "cuda_event"

    def _broken(self, exc: BaseException) -> None:
        if self.device_error is None:
            self.device_error = error_line(exc)

    def mark(self) -> Mark:
        if not self.cuda:
            return Mark(time.perf_counter())
        if self.sync:
            self.synchronize()
            return Mark(time.perf_counter())
        if self.device_error is not None:
            return Mark(time.perf_counter())
        try:
            return Mark(time.perf_counter(), self._new_event())
        except Exception as exc:  # noqa: BLE001 - a broken device: host marks from here on
            self._broken(exc)
            return Mark(time.perf_counter())

    def synchronize(self) -> bool:
        """Wait for the device; False when it cannot (no GPU, or it raised)."""
        if not self.cuda or self.device_error is not None:
            return False
        try:
            self._synchronize()
            return True
        except Exception as exc:  # noqa: BLE001
            self._broken(exc)
            return False

    def ready(self, mark: Optional[Mark]) -> bool:
        if mark is None or mark.event is None or self.device_error is not None:
            return True
        try:  # cuda-only: only CUDA marks carry an event
            return bool(mark.event.query())
        except Exception as exc:  # noqa: BLE001
            self._broken(exc)
            return True

    def ms(self, a: Optional[Mark], b: Optional[Mark]) -> Optional[float]:
        """Milliseconds from a to b: event time on a GPU, host time otherwise; None if a mark is missing
        or the device can no longer say (a device phase timed on the host would be wrong on a GPU)."""
        if a is None or b is None:
            return None
        if self.cuda and not self.sync:
            if self.device_error is not None or a.event is None or b.event is None:
                return None
            try:
                return float(a.event.elapsed_time(b.event))
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
                return None
        return (b.host_s - a.host_s) * 1e3

    @staticmethod
    def host_ms(a: Optional[Mark], b: Optional[Mark]) -> Optional[float]:
        if a is None or b is None:
            return None
        return (b.host_s - a.host_s) * 1e3
