"""The auto search's knob space: per knob, the values worth trying on this hardware, in order.

`--strategy auto` explores every knob instead of the product of a few lists, so the space is
wide on purpose; what cannot matter on the hardware is dropped here (with the same reasons the
grid plan gives), what the measured ceilings rule out is dropped later (prune.py), and the
descent (strategy.py) only walks the rest. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from yoloprof.errors import UsageError
from yoloprof.records import Decision, Knobs
from yoloprof.search import knob_table
from yoloprof.search.knob_table import AUTO_COMPILE, AUTO_NCCL, WORKERS  # noqa: F401 - read by tests and benchmarks
from yoloprof.search.plan import Hardware, cannot_run, largest_runnable, over_the_data, workers_cap

KNOBS = knob_table.NAMES
ORDINAL = ("batch", "workers")  # walked one step up or down; the others are categories, every value tried

GPU_BATCH_PER_RANK = (8, 16, 32, 64, 128)
CPU_BATCH_PER_RANK = (4, 8, 16)


@dataclass
class Space:
    """Candidate values per knob (batch and workers ascending) and what was left out, with why."""

    values: dict[str, list]
    dropped: list[Decision] = field(default_factory=list)
    workers_cap: Optional[int] = None  # Ultralytics' per-rank cap: workers values above it run as the cap

    def same_run(self, a: Knobs, b: Knobs) -> bool:
        """Whether two configurations train identically (workers above the cap run as the cap)."""
        return self.effective(a) == self.effective(b)

    def effective(self, k: Knobs) -> Knobs:
        return k if self.workers_cap is None else replace(k, workers=min(k.workers, self.workers_cap))

    def without(self, knob: str, value: Any) -> None:
        self.values[knob] = [v for v in self.values[knob] if v != value]

    def size(self) -> int:
        """Configurations in the full product: what `--strategy grid` over this space would run."""
        n = 1
        for vals in self.values.values():
            n *= max(len(vals), 1)
        return n


def show(value: Any) -> str:
    """A value as the report shows it: "on"/"off" for switches."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def knobs_text(k: Knobs) -> str:
    return ", ".join(
        [
            f"batch {k.batch}",
            f"workers {k.workers}",
            f"amp {show(k.amp)}",
            f"pin_memory {show(k.pin_memory)}",
            f"cache {k.cache}",
            f"nccl {k.nccl}",
            *k.extras(),
        ]
    )


def _drop(space: Space, knob: str, value: Any, reason: str) -> None:
    space.without(knob, value)
    space.dropped.append(Decision(stage="space", kind="pruned", reason=reason, knob=knob, value=show(value)))


def batch_values(hw: Hardware, given: Optional[dict[str, Optional[list]]] = None) -> list[int]:
    """The global batches the auto space starts from: the user's --batch, else its per-rank sizes x ranks."""
    n = max(hw.world_size, 1)
    return sorted(
        (given or {}).get("batch")
        or [b * n for b in (GPU_BATCH_PER_RANK if hw.device == "cuda" else CPU_BATCH_PER_RANK)]
    )


def auto_space(
    hw: Hardware,
    given: Optional[dict[str, Optional[list]]] = None,
    *,
    dataset_fits_ram: bool = False,
    ram_reason: Optional[str] = None,
    train_images: Optional[int] = None,
) -> Space:
    """The space for `--strategy auto`. `given` maps knob -> the user's explicit list (or None): a list
    replaces that knob's candidates, then the hardware drops what cannot matter, as for the grid.
    `ram_reason`: why cache=ram is left out (plan.cache_ram_risk's text) when the dataset does not fit.
    `train_images`: the dataset's; batches it cannot run as asked are dropped (plan.over_the_data)."""
    given = given or {}
    n, gpu = max(hw.world_size, 1), hw.device == "cuda"
    auto = {k.name: list(k.auto) if k.auto is not None else batch_values(hw) for k in knob_table.KNOBS}
    space = Space({k: list(given.get(k) or auto[k]) for k in KNOBS}, workers_cap=workers_cap(hw))
    for k in ORDINAL:
        space.values[k] = sorted(space.values[k])

    for b in space.values["batch"]:
        if b < n or b % n:
            raise UsageError(
                f"--batch {b} is not a multiple of the {n} ranks; the global batch is split evenly, "
                f"use e.g. {n * max(b // n, 1)}"
            )
    for knob, value, reason in cannot_run(hw, space.values):
        _drop(space, knob, value, reason)
    if train_images is not None:
        over = over_the_data(space.values["batch"], hw.world_size, train_images)
        if given.get("batch") and len(over) == len(space.values["batch"]):
            raise UsageError(
                f"--batch {','.join(map(str, space.values['batch']))}: larger than the dataset's "
                f"{train_images} training images can run"
                + (f" on {n} ranks" if n > 1 else "")
                + f"; give --batch {largest_runnable(n, train_images)} or smaller, or a larger dataset"
            )
        for b, why in over:
            _drop(space, "batch", b, why)
    if not gpu and not given.get("compile"):
        for mode in [m for m in space.values["compile"] if m != "off"]:
            _drop(
                space,
                "compile",
                mode,
                f"compile {mode}: on CPU its first steps compile for minutes, beyond an auto "
                "budget; ask for it with --compile off,default",
            )
    if gpu and not given.get("compile"):
        space.dropped.append(
            Decision(
                stage="space",
                kind="pruned",
                knob="compile",
                value="reduce-overhead, max-autotune-no-cudagraphs",
                reason="compile reduce-overhead, max-autotune-no-cudagraphs: they autotune for many minutes, beyond an "
                "auto budget; ask for them with --compile",
            )
        )
    knob_table.fill_empty(space.values)
    if not given.get("nccl") and gpu and hw.world_size > 1:
        space.dropped.append(
            Decision(
                stage="space",
                kind="pruned",
                knob="nccl",
                value="no-p2p",
                reason="nccl no-p2p: a debugging switch (the fix for hangs on some consumer GPUs), slower wherever "
                "P2P works; auto never tries it, ask for it with --nccl no-p2p",
            )
        )
    if "ram" in space.values["cache"] and not dataset_fits_ram:
        _drop(
            space,
            "cache",
            "ram",
            ram_reason
            or (
                "cache ram: the dataset was not shown to fit in RAM once per rank (every DDP rank caches its own copy); "
                "cache disk is tried instead"
            ),
        )

    cap, seen = workers_cap(hw), {}
    for w in list(space.values["workers"]):
        eff = min(w, cap)
        if eff in seen:
            _drop(
                space,
                "workers",
                w,
                f"workers {w}: Ultralytics caps workers per rank at {cap} (os.cpu_count() {hw.cpu_count} // "
                f"{max(hw.gpus_on_machine, 1)} GPUs on the machine), "
                f"so it would run the same as workers {seen[eff]}",
            )
        else:
            seen[eff] = w
    return space


def neighbours(space: Space, knob: str, current: Any) -> tuple[Optional[Any], Optional[Any]]:
    """(next value down, next value up) around `current` for batch and workers; `current` itself need not
    be in the space (a pruned start value still has neighbours)."""
    vals = space.values[knob]
    down = [v for v in vals if v < current]
    up = [v for v in vals if v > current]
    return (down[-1] if down else None), (up[0] if up else None)
