"""Failures on demand, for tests only: YOLOPROF_TEST_FAULT="<kind>@<step>[:rank<r>]".

kinds: raise (an exception), oom (a torch OutOfMemoryError), exit (the process dies with a
signal-like code), hang (sleep forever), badstep (never raises; reserved). Without the variable
nothing here runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

ENV = "YOLOPROF_TEST_FAULT"


@dataclass
class Fault:
    kind: str
    step: int
    rank: Optional[int]


def parse(text: Optional[str]) -> Optional[Fault]:
    if not text:
        return None
    where, _, rank = text.partition(":rank")
    kind, _, step = where.partition("@")
    return Fault(kind, int(step or 0), int(rank) if rank else None)


def maybe_fail(step: int, rank: int) -> None:
    fault = parse(os.environ.get(ENV))
    if fault is None or fault.step != step or (fault.rank is not None and fault.rank != rank):
        return
    if fault.kind == "raise":
        raise RuntimeError(f"injected failure at step {step} on rank {rank}")
    if fault.kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"injected out of memory at step {step} on rank {rank}")
    if fault.kind == "exit":
        os._exit(137)
    if fault.kind == "hang":
        while True:
            time.sleep(3600)
