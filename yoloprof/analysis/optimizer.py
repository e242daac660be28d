"""Which optimizer a training run gets, and so which one a trial must time. Pure arithmetic.

Ultralytics' default, `optimizer=auto`, picks by the run's length (engine/trainer.py, build_optimizer):
MuSGD past 10000 optimizer iterations, AdamW up to it, with

    iterations = ceil(train images / max(global batch, nbs)) * epochs

(`len(train_loader.dataset)`, `self.batch_size` = the global batch, `args.nbs`, `self.epochs`). A trial is a
few steps of a run that is not the planned one, so left to itself auto would always pick AdamW; the scan
makes the pick for the planned run instead: per trial, since the batch differs between trials, and the
trial builds it through auto (TrialSpec.optimizer_iterations), so it also gets auto's lr0 and momentum.
An optimizer the user named (--optimizer, their config's `optimizer:`) is used as is for every trial.

The rule lives here only: the scan's specs (search.plan, scan.ceilings), --resume, the terminal, best.yaml
and the report all ask this module.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

from yoloprof.errors import UsageError
from yoloprof.records import OptimizerPlan

AUTO = "auto"
MUSGD_PAST = 10000  # auto picks MuSGD for more optimizer iterations than this, AdamW for at most this many
DEFAULT_NBS = 64
DEFAULT_SOURCE = "Ultralytics' default"
# build_optimizer's names in Ultralytics 8.4 (it matches them case-insensitively); anything else raises in every trial
NAMES = ("Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "SGD", "MuSGD")


def is_auto(name: Optional[str]) -> bool:
    return str(name).strip().lower() == AUTO


def check_name(name: str, where: str) -> str:
    """The name as Ultralytics spells it ("sgd" -> "SGD"), or "auto"; UsageError for a name it would reject."""
    if is_auto(name):
        return AUTO
    known = {n.lower(): n for n in NAMES}
    if str(name).strip().lower() not in known:
        raise UsageError(
            f"{where}: Ultralytics has no optimizer {name!r}; give one of {', '.join(NAMES)}, or "
            "auto (its default: picked by the run's length)"
        )
    return known[str(name).strip().lower()]


def trained_images(images: int, fraction=None) -> int:
    """The images an epoch trains on: the train split, cut by a config's `fraction` as Ultralytics cuts it (a
    ratio, an image count, or a [train, val, test] list of them; data/base.py, get_split_fraction)."""
    if isinstance(fraction, (list, tuple)):
        fraction = fraction[0] if fraction else 1.0
    if fraction is None or isinstance(fraction, bool) or fraction in (0, 1):
        return images
    if isinstance(fraction, int):
        return min(fraction, images)
    return min(max(1, round(images * float(fraction))), images)


def iterations(images: int, batch: int, epochs: int, nbs: int = DEFAULT_NBS) -> int:
    """Ultralytics' count of a run's optimizer iterations, as auto decides from it."""
    return math.ceil(images / max(batch, nbs, 1)) * epochs


def auto_pick(iters: int) -> str:
    return "MuSGD" if iters > MUSGD_PAST else "AdamW"


def plan(
    asked: str, *, images: int, epochs: int, nbs: Optional[int] = None, source: str = DEFAULT_SOURCE
) -> OptimizerPlan:
    return OptimizerPlan(
        asked=AUTO if is_auto(asked) else asked, source=source, images=images, epochs=epochs, nbs=nbs or DEFAULT_NBS
    )


def for_batch(optimizer: Union[str, OptimizerPlan], batch: int) -> tuple[str, Optional[int]]:
    """(the optimizer a trial of this global batch runs, the planned run's iterations where auto picked it).
    A plain string is a name for every trial; "auto" alone cannot be resolved (no planned run)."""
    if isinstance(optimizer, str):
        if is_auto(optimizer):
            raise ValueError("optimizer 'auto' needs the planned run to resolve it: pass an OptimizerPlan")
        return optimizer, None
    if not is_auto(optimizer.asked):
        return optimizer.asked, None
    iters = iterations(optimizer.images, batch, optimizer.epochs, optimizer.nbs)
    return auto_pick(iters), iters


def name_for(optimizer: Union[str, OptimizerPlan], batch: int) -> str:
    return for_batch(optimizer, batch)[0]


def _batches(batches: list[int]) -> str:
    return ("batch " if len(batches) == 1 else "batches ") + ", ".join(map(str, batches))


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}"


def _against(pick: str) -> str:
    return f"> {MUSGD_PAST:,}" if pick == "MuSGD" else f"<= {MUSGD_PAST:,}"


def run_text(p: OptimizerPlan, batch: int) -> str:
    """ "100 epochs of 118287 images at batch 64: 184,900 iterations > 10,000": auto's input and its threshold."""
    pick, iters = for_batch(p, batch)
    return f"{p.epochs} epochs of {p.images} images at batch {batch}: {iters:,} iterations {_against(pick)}"


def reason(p: OptimizerPlan, batch: int) -> str:
    """ "Ultralytics' pick for 100 epochs of 118287 images at batch 64: 184,900 iterations > 10,000"."""
    return f"Ultralytics' pick for {run_text(p, batch)}"


def describe(optimizer: Union[str, OptimizerPlan, None], batches: Iterable[int]) -> str:
    """What the trials run and why, one line: "auto -> MuSGD (Ultralytics' pick for 100 epochs of 118287 images at
    batch 64: 184,900 iterations > 10,000)", per pick where the scan's batches get different ones; "SGD
    (--optimizer)" for a name the user gave."""
    if optimizer is None:
        return "n/a"
    if isinstance(optimizer, str):
        return optimizer
    if not is_auto(optimizer.asked):
        return f"{optimizer.asked} ({optimizer.source})"
    batches = sorted(set(batches))
    head = AUTO + ("" if optimizer.source == DEFAULT_SOURCE else f" ({optimizer.source})")
    if not batches:
        return f"{head} (Ultralytics' pick by run length: MuSGD past {MUSGD_PAST:,} iterations, else AdamW)"
    groups: dict[str, list[int]] = {}
    for b in batches:
        groups.setdefault(name_for(optimizer, b), []).append(b)
    run = f"Ultralytics' pick for {optimizer.epochs} epochs of {optimizer.images} images"
    if len(groups) == 1:
        ((pick, bs),) = groups.items()
        iters = [for_batch(optimizer, b)[1] for b in bs]
        return f"{head} -> {pick} ({run} at {_batches(bs)}: {_span(iters)} iterations {_against(pick)})"
    picks = ", ".join(f"{pick} at {_batches(bs)}" for pick, bs in groups.items())
    why = "; ".join(
        f"{pick}: {_span([for_batch(optimizer, b)[1] for b in bs])} iterations {_against(pick)}"
        for pick, bs in groups.items()
    )
    return f"{head} -> {picks} ({run}, per batch: {why})"


def yaml_note(p: OptimizerPlan, batch: int, epochs: int, ran: Optional[str]) -> str:
    """best.yaml's line where it leaves the optimizer to Ultralytics: which one `yolo train` will pick for the
    recommended batch and the planned epochs, and whether that is the one the trials timed."""
    now = OptimizerPlan(p.asked, p.source, p.images, epochs, p.nbs)
    pick = name_for(now, batch)
    text = (
        f"optimizer: not set, so Ultralytics' auto picks it: {pick} for this run ({run_text(now, batch)}; "
        "another epochs= or batch= can change it)"
    )
    if ran and ran.lower() != pick.lower():
        why = f", auto's pick for the scan's {p.epochs} epochs" if ran.lower() == name_for(p, batch).lower() else ""
        text += (
            f". The trials ran {ran}{why}: its optimizer step is not the one this run takes; scan again with "
            f"--epochs {epochs} to time {pick}'s"
        )
    elif ran:
        text += ", the optimizer the trials ran"
    return text
