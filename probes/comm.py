"""Time every DDP gradient bucket's AllReduce with a comm hook around DDP's default allreduce.

The hook runs when a bucket's gradients are ready; the future's `then` callback runs when the
AllReduce completes (gloo) or, on NCCL, when it is enqueued with the current stream made to wait
on it. A CUDA event recorded inside the callback therefore marks completion on the GPU, where a
host clock would only mark the enqueue.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at runtime.

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from yoloprof.probes.clock import Clock, Mark


@dataclass
class BucketTiming:
    index: int
    size_bytes: int
    start: Mark
    end: Optional[Mark] = None


@dataclass
class CommState:
    clock: Clock
    process_group: Optional[dist.ProcessGroup] = None
    sink: Optional[Callable[[BucketTiming], None]] = None  # receives each bucket as it launches
    buckets_seen: list[int] = field(default_factory=list)
    late: Optional[Callable[[], None]] = None  # tests only: completes the step's last AllReduce late (injected_costs)


def timed_allreduce_hook(state: CommState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    buf = bucket.buffer()
    timing = BucketTiming(bucket.index(), buf.numel() * buf.element_size(), state.clock.mark())
    if state.sink is not None:
        state.sink(timing)
    fut = allreduce_hook(state.process_group, bucket)
    if state.late is not None and bucket.is_last():
        # Once a step, on the bucket DDP waits for last: gloo runs `then` callbacks on its own threads, so a
        # sleep in every bucket's would add up or overlap depending on what else the cores run.
        late = state.late
        fut = fut.then(lambda f: (late(), f.value())[1])

    def done(f: torch.futures.Future) -> torch.Tensor:
        timing.end = state.clock.mark()
        return f.value()

    return fut.then(done)


def attach(ddp_model: torch.nn.Module, clock: Clock, sink: Callable[[BucketTiming], None], rank: int = 0) -> CommState:
    from yoloprof.probes import injected_costs

    state = CommState(clock=clock, sink=sink, late=injected_costs.sleeper("comm", rank))
    ddp_model.register_comm_hook(state, timed_allreduce_hook)
    return state
