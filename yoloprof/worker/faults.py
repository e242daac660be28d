"""Failures on demand, for tests only. Without YOLOPROF_TEST_FAULT nothing here runs.

YOLOPROF_TEST_FAULT="<kind>@<step>[:rank<r>][:trial=<part of a trial id>][;<another fault>]"

kinds, at the end of step <step> (or during set-up for `fatal`):
  raise  an exception                     oom    a torch.OutOfMemoryError
  alloc  a real allocation past the limit kill   SIGKILL to the rank itself
  hang   sleep forever (a stuck rank)     fatal  FileNotFoundError before the first step
  sticky a CUDA illegal-address error after which every device query raises again (the rank's
         clock stands in for the device)
  wait   block until the file named by YOLOPROF_TEST_RELEASE exists (a trial held at a known step, so
         a test can signal the scan while the trial is certainly running: no race with its end)
and inside the model's forward, where Ultralytics' own OOM handling catches it:
  oomabove  the CUDA out-of-memory error whenever a rank's batch is larger than <step> images
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

ENV = "YOLOPROF_TEST_FAULT"
RELEASE_ENV = "YOLOPROF_TEST_RELEASE"


@dataclass
class Fault:
    kind: str
    step: int
    rank: Optional[int] = None
    trial: Optional[str] = None

    def applies(self, step: int, rank: int, trial_id: str) -> bool:
        return (
            self.step == step
            and (self.rank is None or self.rank == rank)
            and (self.trial is None or self.trial in trial_id)
        )


def parse(text: Optional[str]) -> list[Fault]:
    faults = []
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        where, *quals = item.strip().split(":")
        kind, _, step = where.partition("@")
        fault = Fault(kind, int(step or 0))
        for q in quals:
            if q.startswith("rank"):
                fault.rank = int(q[4:])
            elif q.startswith("trial="):
                fault.trial = q[6:]
        faults.append(fault)
    return faults


STICKY_ERROR = "CUDA error: an illegal memory access was encountered"


def attach_model_faults(model, rank: int, trial_id: str) -> None:
    """`oomabove@N`: the model's forward raises the CUDA OOM message for a batch above N images, as a
    convolution that runs out of device memory would, inside the try block where Ultralytics catches it."""
    for fault in parse(os.environ.get(ENV)):
        if (
            fault.kind != "oomabove"
            or not (fault.rank is None or fault.rank == rank)
            or (fault.trial is not None and fault.trial not in trial_id)
        ):
            continue
        limit = fault.step

        def too_big(module, args, limit=limit):
            x = args[0]
            n = int((x["img"] if isinstance(x, dict) else x).shape[0])
            if n > limit:
                import torch

                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 20.00 MiB (injected: batch {n} > {limit})"
                )

        model.register_forward_pre_hook(too_big)


def make_device_sticky(clock) -> None:
    """From now on the clock's device queries raise, as they do after an illegal address."""

    def broken(*args, **kwargs):
        raise RuntimeError(STICKY_ERROR)

    clock.cuda, clock._new_event, clock._synchronize = True, broken, broken


def maybe_fail(step: int, rank: int, trial_id: str, setup: bool = False, clock=None) -> None:
    for fault in parse(os.environ.get(ENV)):
        if fault.kind == "oomabove":
            continue
        if (fault.kind == "fatal") != setup or not fault.applies(step if not setup else fault.step, rank, trial_id):
            continue
        if fault.kind == "fatal":
            raise FileNotFoundError(f"injected: a file every trial needs is missing (rank {rank})")
        if fault.kind == "raise":
            raise RuntimeError(f"injected failure at step {step} on rank {rank}")
        if fault.kind == "oom":
            import torch

            raise torch.OutOfMemoryError(f"injected out of memory at step {step} on rank {rank}")
        if fault.kind == "alloc":
            import torch

            torch.empty(1 << 45, dtype=torch.uint8).fill_(1)  # 32 TiB: the allocator refuses it
        if fault.kind == "sticky" and clock is not None:
            make_device_sticky(clock)
            raise RuntimeError(STICKY_ERROR)
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.kind == "wait":
            release = os.environ.get(RELEASE_ENV)
            while not (release and os.path.exists(release)):
                time.sleep(0.05)
        if fault.kind == "hang":
            while True:
                time.sleep(3600)
