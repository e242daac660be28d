"""Known costs at the real boundaries of a trial, for tests only. Without YOLOPROF_TEST_COST nothing here runs.

A test that injects a known delay at one boundary of a real trial and finds the measured phase grown
by that delay (and the other phases not) checks the instrumentation itself: a probe mark removed or
moved, and the wrong phase grows.

YOLOPROF_TEST_COST="<where>=<ms>[:rank<r>][:odd][;...]", where is one of:
  data       the dataloader hands each batch over this late          -> data wait
  forward    the model's forward takes this much longer              -> forward
  loss       the loss takes this much longer (also where compile computes it apart)  -> forward
  backward   the last layer's backward takes this much longer        -> backward
  comm       a step's last DDP bucket's AllReduce completes this late -> bucket AllReduce, exposed AllReduce
  optimizer  each optimizer step takes this much longer              -> optimizer (stepping iterations only)
  allreduce  each AllReduce of the link probe takes this much longer -> the link probe's time per op
A rank qualifier limits a cost to one rank (`forward=150:rank1` makes rank 1 a straggler); `odd`
limits it to odd-numbered steps, so a test compares the odd steps with the even ones of the same
trial: interleaved, the machine's drift and neighbours hit both sides alike; `from<e>` starts it at
epoch e (0-based, `data=40:from2`), a drift for the watched run (`yoloprof train`) to find.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

ENV = "YOLOPROF_TEST_COST"
KINDS = ("data", "forward", "loss", "backward", "comm", "optimizer", "allreduce")
_now = {"step": 0, "epoch": 0}  # the step and epoch the trainer is in (set_step, set_epoch)


@dataclass
class Cost:
    kind: str
    ms: float
    rank: Optional[int] = None
    odd: bool = False
    from_epoch: int = 0


def parse(text: Optional[str]) -> list[Cost]:
    out = []
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        what, _, rest = item.strip().partition("=")
        ms, *quals = rest.split(":")
        if what not in KINDS:
            raise ValueError(f"{ENV}: unknown cost {what!r}; one of {', '.join(KINDS)}")
        cost = Cost(what, float(ms))
        for q in quals:
            if q.startswith("rank"):
                cost.rank = int(q[4:])
            elif q == "odd":
                cost.odd = True
            elif q.startswith("from"):
                cost.from_epoch = int(q[4:])
            else:
                raise ValueError(f"{ENV}: unknown qualifier {q!r} in {item!r}")
        out.append(cost)
    return out


def set_step(step: int) -> None:
    _now["step"] = step


def set_epoch(epoch: int) -> None:
    _now["epoch"] = epoch


def sleeper(kind: str, rank: int) -> Optional[Callable[..., None]]:
    """spend(step=None) spends this boundary's cost on this rank (the current step's, or `step`'s);
    None when there is no cost, so nothing is hooked in."""
    mine = [c for c in parse(os.environ.get(ENV)) if c.kind == kind and c.rank in (None, rank)]
    if not mine:
        return None

    def spend(*args, step: Optional[int] = None, **kwargs) -> None:
        i = _now["step"] if step is None else step
        due = [c for c in mine if (not c.odd or i % 2 == 1) and _now["epoch"] >= c.from_epoch]
        s = sum(c.ms for c in due) / 1e3
        if s > 0:
            time.sleep(s)

    return spend


class LateLoader:
    """The trial's own loader, each batch handed over late (everything else delegated). Batches are
    counted across epochs: the n-th batch is step n's (warm-up included), as the trainer counts."""

    def __init__(self, loader, spend: Callable[..., None]):
        self._loader, self._spend, self._n = loader, spend, 0

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            self._spend(step=self._n)
            self._n += 1
            yield batch

    def __getattr__(self, name):
        return getattr(self._loader, name)


class LateCalls:
    """A module (torch.distributed) whose `name` calls each spend `spend()` after the real call."""

    def __init__(self, module, name: str, spend):
        self._module, self._name, self._spend = module, name, spend

    def __getattr__(self, attr):
        real = getattr(self._module, attr)
        if attr != self._name or self._spend is None:
            return real

        def late(*args, **kwargs):
            out = real(*args, **kwargs)
            self._spend()
            return out

        return late


def attach(trainer, rank: int) -> None:
    """Hook the costs into a set-up Ultralytics trainer (model, loader); comm and optimizer are
    spent where those phases are timed (probes.comm, the worker's optimizer_step)."""
    data = sleeper("data", rank)
    if data is not None:
        trainer.train_loader = LateLoader(trainer.train_loader, data)
    forward = sleeper("forward", rank)
    if forward is not None:
        trainer.model.register_forward_pre_hook(lambda module, args: forward())
    loss = sleeper("loss", rank)
    if loss is not None:
        from ultralytics.utils.torch_utils import unwrap_model

        inner = unwrap_model(trainer.model)  # under compile the loop calls this outside the compiled graph
        real = inner.loss
        inner.loss = lambda *args, **kwargs: (loss(), real(*args, **kwargs))[1]
    backward = sleeper("backward", rank)
    if backward is not None:
        from ultralytics.utils.torch_utils import unwrap_model

        last = next(p for p in unwrap_model(trainer.model).model[-1].parameters() if p.requires_grad)
        last.register_hook(lambda grad: (backward(), grad)[1])
