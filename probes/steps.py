"""Split every training iteration into phases, on every rank.

Marks are taken at the boundaries the Ultralytics loop exposes: the batch arriving (data wait
ends), the host-to-device copy ending, the forward pass + loss ending (the loss reaching the GradScaler:
with compile Ultralytics computes the loss outside the compiled model), the last gradient being
computed (a post-accumulate hook on the first layer's weight, whose gradient autograd produces
last), `backward()` returning (DDP has waited for every AllReduce by then), and the optimizer
step. On a GPU every span is read from CUDA events on the device's timeline, so the phases of a
step add up to the step on every rank: ranks other than 0 synchronize only where training does
(the loss's target assignment, fp16 AMP's GradScaler `.item()` each optimizer step), their host runs
ahead of their GPU between those points, and a host-clock wait for the next batch would count the previous step's
GPU work as input stall. The exposed data wait is therefore the device's idle gap between the
previous step's end and the batch being handed over; the host's own wait is kept beside it.
A step that starts an epoch carries the previous epoch's end-of-epoch work (metrics, broadcasts,
memory clean-up), timed on its own so the analysis can leave it out of the steady state.
A step is turned into a StepSample once its events have completed, so the loop never
synchronizes for us.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from yoloprof.probes.clock import Clock, Mark
from yoloprof.probes.comm import BucketTiming
from yoloprof.records import BucketSample, StepSample

PHASE_MARKS = ("batch", "h2d_end", "fwd_end", "grad_end", "bwd_end", "opt_start", "opt_end", "end")


@dataclass
class _Step:
    index: int
    epoch: int
    warmup: bool
    prev_end: Optional[Mark]
    epoch_start: Optional[Mark]
    marks: dict[str, Mark] = field(default_factory=dict)
    buckets: list[BucketTiming] = field(default_factory=list)
    images: int = 0
    t_end_s: float = 0.0


class StepProbe:
    def __init__(self, rank: int, warmup_steps: int, clock: Clock, sink: Callable[[StepSample], None]):
        self.rank = rank
        self.warmup_steps = warmup_steps
        self.clock = clock
        self.sink = sink
        self.steps_started = 0
        self.current: Optional[_Step] = None
        self._pending: deque[_Step] = deque()
        self._last_end: Optional[Mark] = None
        self._epoch_start: Optional[Mark] = None

    # -- boundaries, called from the trainer ------------------------------------------------
    def epoch_start(self) -> None:
        self._epoch_start = self.clock.mark()

    def batch_start(self, epoch: int) -> None:
        idx = self.steps_started
        self.steps_started += 1
        self.current = _Step(idx, epoch, idx < self.warmup_steps, self._last_end, self._epoch_start)
        self._epoch_start = None
        self.current.marks["batch"] = self.clock.mark()

    def mark(self, name: str, once: bool = False) -> None:
        step = self.current
        if step is None or (once and name in step.marks):
            return
        step.marks[name] = self.clock.mark()

    def set_images(self, n: int) -> None:
        if self.current is not None:
            self.current.images = int(n)

    def bucket_launched(self, timing: BucketTiming) -> None:
        if self.current is not None:
            self.current.buckets.append(timing)

    def batch_end(self) -> None:
        step = self.current
        if step is None:
            return
        step.marks["end"] = self.clock.mark()
        step.t_end_s = time.time()
        self._last_end = step.marks["end"]  # the next step starts where this one ended
        self._pending.append(step)
        self.current = None
        self.flush(block=False)

    def restart(self) -> None:
        """The next step starts now: time the probe itself spent since the last step's end (the
        stopping rule's broadcast) is not training's and stays out of every span."""
        if self._last_end is not None:
            self._last_end = self.clock.mark()

    def flush(self, block: bool) -> None:
        """Emit every finished step whose device work has completed (all of them when block)."""
        if block:
            self.clock.synchronize()
        while self._pending and (block or self._ready(self._pending[0])):
            self.sink(self._sample(self._pending.popleft()))

    def flush_after_failure(self) -> None:
        """On the error path: emit what was measured and never raise. After a sticky CUDA error the
        clock answers n/a for device spans, so those steps keep their host-clock fields only."""
        try:
            if self.current is not None and "end" not in self.current.marks:
                self.current = None  # the step that failed has no end: nothing to report for it
            self.flush(block=True)
        except Exception:  # noqa: BLE001 - the end record matters more than these samples
            self._pending.clear()

    # -- turning marks into a sample ---------------------------------------------------------
    def _ready(self, step: _Step) -> bool:
        return all(self.clock.ready(m) for m in step.marks.values()) and all(
            b.end is not None and self.clock.ready(b.end) for b in step.buckets
        )

    def _sample(self, s: _Step) -> StepSample:
        m, ms, host = s.marks, self.clock.ms, Clock.host_ms
        start = s.prev_end or s.epoch_start or m["batch"]
        asked = s.epoch_start or s.prev_end or m["batch"]  # when the loop asked for this batch
        step_ms = ms(start, m["end"])
        data_wait = ms(asked, m["batch"])
        epoch_end = ms(s.prev_end, s.epoch_start) if s.prev_end is not None and s.epoch_start is not None else None
        h2d = ms(m["batch"], m.get("h2d_end"))
        fwd = ms(m.get("h2d_end"), m.get("fwd_end"))
        grad_end = m.get("grad_end")
        bwd = ms(m.get("fwd_end"), grad_end or m.get("bwd_end"))
        comm_wait = ms(grad_end, m.get("bwd_end")) if grad_end is not None else None
        stepped = "opt_end" in m
        opt = ms(m.get("opt_start"), m.get("opt_end")) if stepped else 0.0
        if step_ms is None:  # the device could not say (a sticky error): the host clock, flagged below
            step_ms, data_wait = host(start, m["end"]), host(asked, m["batch"])
        parts = [data_wait, h2d, fwd, bwd, comm_wait, opt, epoch_end]
        other = step_ms - sum(p for p in parts if p is not None) if None not in (data_wait, h2d, fwd, bwd) else None
        buckets = [
            BucketSample(b.index, b.size_bytes, ms(b.start, b.end) if b.end is not None else None) for b in s.buckets
        ]
        comm = None
        if s.buckets and all(b.end is not None for b in s.buckets):
            comm = ms(s.buckets[0].start, s.buckets[-1].end)
            if comm is not None:
                comm = max(comm, max((b.allreduce_ms or 0.0) for b in buckets))
        return StepSample(
            rank=self.rank,
            step=s.index,
            epoch=s.epoch,
            warmup=s.warmup,
            t_end_s=s.t_end_s,
            images=s.images,
            step_ms=step_ms,
            data_wait_ms=data_wait,
            host_data_wait_ms=host(asked, m["batch"]),
            h2d_ms=h2d,
            forward_ms=fwd,
            backward_ms=bwd,
            comm_wait_ms=comm_wait,
            optimizer_ms=opt,
            other_ms=other,
            optimizer_stepped=stepped,
            comm_ms=comm,
            buckets=buckets,
            timing=self.clock.timing if self.clock.device_error is None else "host_after_device_error",
            epoch_boundary=s.epoch_start is not None,
            epoch_end_ms=epoch_end,
        )
