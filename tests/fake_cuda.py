"""A CUDA runtime for tests on a machine without a GPU: the `torch.cuda` calls yoloprof makes, patched
onto `torch.cuda` so the product's own CUDA branches run, with the rules the real runtime enforces.

What it enforces (read from torch 2.14's torch/cuda/__init__.py, memory.py and streams.py):
- Init order. `set_device`, `init`, `current_device`, `synchronize`, `get_device_properties` and
  recording an event initialise CUDA lazily. `empty_cache` does nothing before that, the peak
  readings answer 0, and `reset_peak_memory_stats` raises "Invalid device argument N: did you call
  init?" (it has no lazy-init guard: the caching allocator does not exist yet).
- Events. One stream per device: an event completes once the work queued before it has run (the
  device's timeline, `launch(ms)`). `elapsed_time` raises unless both events were recorded with
  enable_timing, on the same device, and have completed ("device not ready").
- Sticky errors. After `fail(msg)` (an illegal address, a device-side assert) every call that
  reaches the device raises the same error again, for the life of the process.
- Memory. `alloc(mib)`/`free(mib)` move the allocator's allocated and reserved bytes; peaks follow.

The device's clock is `clock.now` (seconds): a FakeTime from the test, or the real perf_counter, in
which case `synchronize` sleeps until the queued work is done.
"""

from __future__ import annotations

import time
import types
from contextlib import contextmanager
from typing import Optional

import torch

MIB = 2**20
ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"


class RealTime:
    @property
    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, t: float) -> None:
        time.sleep(max(t - time.perf_counter(), 0.0))


class FakeCuda:
    """The runtime of `count` GPUs of `total_mib` each; nothing is initialised until something asks."""

    def __init__(
        self,
        count: int = 2,
        name: str = "NVIDIA H200",
        total_mib: float = 143771.0,
        clock=None,
        capability: tuple[int, int] = (9, 0),
    ):
        self.count, self.name, self.total_mib, self.capability = count, name, total_mib, capability
        self.clock = clock or RealTime()
        self.initialized = False
        self.current = 0
        self.sticky: Optional[str] = None
        self.busy_until = [0.0] * count
        self.allocated = [0.0] * count  # MiB
        self.reserved = [0.0] * count
        self.peak_allocated = [0.0] * count
        self.peak_reserved = [0.0] * count
        self.calls: list[str] = []  # every call that reached the runtime, in order
        self.contexts: set[int] = set()  # devices a context was made on (set_device, events, work)

    # -- the rules ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.sticky is not None:
            raise RuntimeError(self.sticky)

    def _lazy_init(self) -> None:
        self._check()
        self.initialized = True

    def _index(self, device=None) -> int:
        if device is None:
            return self.current
        if isinstance(device, torch.device):
            if device.type != "cuda":
                raise ValueError(f"Expected a cuda device, but got: {device}")
            return self.current if device.index is None else device.index
        if isinstance(device, str):
            return self._index(torch.device(device))
        return int(device)

    def _valid(self, i: int) -> int:
        if not 0 <= i < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return i

    def _wait(self, t: float) -> None:
        """The host blocks until the device reaches t: a fake clock jumps there, the real one sleeps."""
        if hasattr(self.clock, "wait_until"):
            self.clock.wait_until(t)
        else:
            self.clock.now = max(self.clock.now, t)

    # -- what a test does to the device ----------------------------------------------------------
    def launch(self, ms: float, device=None) -> None:
        """Queue `ms` of work on the device's stream (it starts when the previous work ends)."""
        i = self._index(device)
        self.contexts.add(i)
        self.busy_until[i] = max(self.busy_until[i], self.clock.now) + ms / 1e3

    def alloc(self, mib: float, device=None) -> None:
        i = self._index(device)
        self.allocated[i] += mib
        self.reserved[i] = max(self.reserved[i], self.allocated[i])
        self.peak_allocated[i] = max(self.peak_allocated[i], self.allocated[i])
        self.peak_reserved[i] = max(self.peak_reserved[i], self.reserved[i])

    def free(self, mib: float, device=None) -> None:
        i = self._index(device)
        self.allocated[i] = max(self.allocated[i] - mib, 0.0)  # the blocks stay reserved (cached)

    def fail(self, message: str = ILLEGAL_ADDRESS) -> None:
        self.sticky = message

    # -- torch.cuda ------------------------------------------------------------------------------
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self) -> None:
        self.calls.append("init")
        self._lazy_init()

    def set_device(self, device) -> None:
        i = self._index(device)
        self.calls.append(f"set_device({i})")
        if i >= 0:
            self._lazy_init()
            self.current = self._valid(i)
            self.contexts.add(i)

    def current_device(self) -> int:
        self._lazy_init()
        return self.current

    def get_device_properties(self, device=None):
        self._lazy_init()
        i = self._index(device)
        if not 0 <= i < self.count:
            raise AssertionError("Invalid device id")
        major, minor = self.capability
        return types.SimpleNamespace(
            name=self.name, total_memory=int(self.total_mib * MIB), major=major, minor=minor, multi_processor_count=132
        )

    def get_device_name(self, device=None) -> str:
        return self.get_device_properties(device).name

    def get_device_capability(self, device=None) -> tuple[int, int]:
        p = self.get_device_properties(device)
        return p.major, p.minor

    def synchronize(self, device=None) -> None:
        self.calls.append("synchronize")
        self._lazy_init()
        self._wait(self.busy_until[self._valid(self._index(device))])

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        if self.initialized:
            self._check()
            self.reserved = list(self.allocated)

    def reset_peak_memory_stats(self, device=None) -> None:
        i = self._index(device)
        self.calls.append(f"reset_peak_memory_stats({i})")
        if not self.initialized:  # torch._C._cuda_resetPeakMemoryStats without the allocator
            raise RuntimeError(f"Invalid device argument {chr(i)}: did you call init?")
        self._check()
        self.peak_allocated[i], self.peak_reserved[i] = self.allocated[i], self.reserved[i]

    def _stat(self, values: list[float], device) -> int:
        if not self.initialized:  # memory_stats() answers {} before init: every reading is 0
            return 0
        self._check()
        return int(values[self._valid(self._index(device))] * MIB)

    def max_memory_reserved(self, device=None) -> int:
        return self._stat(self.peak_reserved, device)

    def max_memory_allocated(self, device=None) -> int:
        return self._stat(self.peak_allocated, device)

    def memory_reserved(self, device=None) -> int:
        return self._stat(self.reserved, device)

    def memory_allocated(self, device=None) -> int:
        return self._stat(self.allocated, device)

    def Event(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):  # noqa: N802
        return FakeEvent(self, enable_timing)


class FakeEvent:
    def __init__(self, rt: FakeCuda, enable_timing: bool):
        self.rt, self.enable_timing = rt, enable_timing
        self.device: Optional[int] = None
        self.t: Optional[float] = None

    def record(self, stream=None) -> None:
        self.rt.calls.append("event.record")
        self.rt._lazy_init()  # torch.cuda.current_stream() initialises CUDA
        self.device = self.rt.current
        self.rt.contexts.add(self.device)
        self.t = max(self.rt.clock.now, self.rt.busy_until[self.device])

    def query(self) -> bool:
        self.rt._check()
        return self.t is None or self.rt.clock.now >= self.t

    def synchronize(self) -> None:
        self.rt._check()
        if self.t is not None:
            self.rt._wait(self.t)

    def elapsed_time(self, end: "FakeEvent") -> float:
        self.rt._check()
        if self.t is None or end.t is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.device != end.device:
            raise RuntimeError("CUDA error: invalid resource handle")
        if not (self.query() and end.query()):
            raise RuntimeError("CUDA error: device not ready")
        return (end.t - self.t) * 1e3


PATCHED = (
    "is_available",
    "device_count",
    "is_initialized",
    "init",
    "set_device",
    "current_device",
    "get_device_properties",
    "get_device_name",
    "get_device_capability",
    "synchronize",
    "empty_cache",
    "reset_peak_memory_stats",
    "max_memory_reserved",
    "max_memory_allocated",
    "memory_reserved",
    "memory_allocated",
    "Event",
)


@contextmanager
def installed(rt: Optional[FakeCuda] = None, monkeypatch=None):
    """torch.cuda answered by `rt` inside the block (or for the test, given pytest's monkeypatch)."""
    rt = rt or FakeCuda()
    saved = {name: getattr(torch.cuda, name) for name in PATCHED}
    for name in PATCHED:
        if monkeypatch is not None:
            monkeypatch.setattr(torch.cuda, name, getattr(rt, name))
        else:
            setattr(torch.cuda, name, getattr(rt, name))
    try:
        yield rt
    finally:
        if monkeypatch is None:
            for name, fn in saved.items():
                setattr(torch.cuda, name, fn)
