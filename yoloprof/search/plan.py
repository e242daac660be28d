"""Knob lists -> the trials to run. Pure: no torch.

The plan is the product of the knob lists, minus values that cannot matter on this hardware
(each dropped value is kept with its reason, for the terminal and the report) and minus
workers values that Ultralytics would cap to the same number.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from yoloprof.analysis.optimizer import for_batch
from yoloprof.errors import UsageError
from yoloprof.records import Knobs, OptimizerPlan, TrialSpec, batch_that_runs
from yoloprof.search.knob_table import (  # noqa: F401 - the values' parsers, re-exported where the plan is read
    _AMP,
    _BOOL,
    _CACHE,
    _COMPILE,
    COMPILE_MODES,
    NCCL_PRESETS,
    KNOBS,
    fill_empty,
    parse_amp,
    parse_choices,
    parse_compile,
    parse_ints,
    parse_nccl,
)


@dataclass
class Hardware:
    device: str  # "cpu" | "cuda"
    world_size: int
    gpus: list[int]
    cpu_count: int
    gpus_on_machine: int  # Ultralytics divides the cores by this, not by the world size
    bf16: Optional[bool] = None  # every GPU of the scan has native bf16 (compute capability 8.0+); None: unknown
    compile_blocker: Optional[str] = (
        None  # why torch.compile cannot run here (no C++ compiler, no Triton); None: it can
    )
    nnodes: int = 1  # world_size counts the ranks of every node; gpus and cpu_count are one node's

    @property
    def per_node(self) -> int:
        return self.world_size // max(self.nnodes, 1)

    def nodes_for(self, world_size: int) -> int:
        """A trial of this many ranks runs on node 0 alone, or on every node."""
        return 1 if world_size <= self.per_node else self.nnodes


@dataclass
class Axes:
    batch: list[int]
    workers: list[int]
    amp: list[bool]
    pin_memory: list[bool]
    cache: list[str]
    nccl: list[str]
    deterministic: list[bool] = field(default_factory=lambda: [True])
    compile: list[str] = field(default_factory=lambda: ["off"])
    channels_last: list[bool] = field(default_factory=lambda: [True])


@dataclass
class Plan:
    axes: Axes
    knobs: list[Knobs]
    dropped: list[str] = field(default_factory=list)


def nccl_env(preset: str) -> dict[str, str]:
    if preset in NCCL_PRESETS:
        return dict(NCCL_PRESETS[preset])
    return dict(pair.split("=", 1) for pair in preset.split("+"))


def default_axes(hw: Hardware) -> Axes:
    n = max(hw.world_size, 1)
    if hw.device == "cuda":
        return Axes([16 * n, 32 * n], [2, 8], [True], [True], ["off"], ["default"])
    return Axes([4 * n, 8 * n], [0, 2], [False], [False], ["off"], ["default"])


def workers_cap(hw: Hardware) -> int:
    """Ultralytics' per-rank cap: min(os.cpu_count() // GPUs on the machine, workers, batches)."""
    return max(hw.cpu_count // max(hw.gpus_on_machine, 1), 0) if hw.device == "cuda" else hw.cpu_count


def _fit_to_hardware(axes: Axes, hw: Hardware, dropped: list[str]) -> Axes:
    axes = replace(axes)
    for knob, value, reason in cannot_run(hw, {k: getattr(axes, k) for k in vars(axes)}):
        setattr(axes, knob, [v for v in getattr(axes, knob) if v != value])
        dropped.append(reason)
    values = vars(axes)
    fill_empty(values)  # a knob the hardware ruled out entirely runs its fallback (AMP off on CPU)
    for b in axes.batch:
        if b < hw.world_size:
            raise UsageError(
                f"--batch {b} is smaller than the {hw.world_size} ranks; each rank needs at least one image"
            )
        if b % max(hw.world_size, 1):
            raise UsageError(
                f"--batch {b} is not a multiple of the {hw.world_size} ranks; the global batch is split evenly, "
                f"use e.g. {hw.world_size * max(b // hw.world_size, 1)}"
            )
    cap, kept, seen = workers_cap(hw), [], {}
    for w in axes.workers:
        eff = min(w, cap)
        if eff in seen:
            dropped.append(
                f"workers {w}: Ultralytics caps workers per rank at {cap} "
                f"(os.cpu_count() {hw.cpu_count} // {max(hw.gpus_on_machine, 1)} GPUs on the machine), "
                f"so it would run the same as workers {seen[eff]}"
            )
            continue
        seen[eff] = w
        kept.append(w)
    return replace(axes, workers=kept)


def cannot_run(hw: Hardware, values: dict[str, list]) -> list[tuple[str, object, str]]:
    """(knob, value, reason) for each value that cannot run or cannot matter on this hardware; the grid plan
    and the auto space drop the same values with the same words."""
    out = []
    amp = [v for v in values.get("amp", []) if v]
    if hw.device != "cuda":
        out += [
            ("amp", v, f"amp {'bf16' if v == 'bf16' else 'on'}: AMP needs a GPU; CPU trials train in FP32") for v in amp
        ]
        if True in values.get("pin_memory", []):
            out.append(("pin_memory", True, "pin_memory on: pinned memory only speeds copies to a GPU"))
        extra = [n for n in values.get("nccl", []) if n != "default"]
        out += [("nccl", n, f"nccl {n}: NCCL runs on GPUs only; CPU ranks use gloo") for n in extra]
        if False in values.get("channels_last", []):
            out.append(
                (
                    "channels_last",
                    False,
                    "channels_last off: Ultralytics applies NHWC on CUDA only, so CPU trials train NCHW either way",
                )
            )
    else:
        if hw.world_size <= 1:
            out += [
                ("nccl", n, f"nccl {n}: one GPU runs no AllReduce, so NCCL settings cannot matter")
                for n in values.get("nccl", [])
                if n != "default"
            ]
        if "bf16" in amp and hw.bf16 is False:
            out.append(
                (
                    "amp",
                    "bf16",
                    "amp bf16: these GPUs have no native bfloat16 (compute capability below 8.0); "
                    "Ultralytics refuses it",
                )
            )
    if hw.compile_blocker:
        out += [("compile", m, f"compile {m}: {hw.compile_blocker}") for m in values.get("compile", []) if m != "off"]
    return out


def over_the_data(batches: list[int], world_size: int, train_images: int) -> list[tuple[int, str]]:
    """(batch, reason) for each global batch that a dataset of `train_images` cannot run as asked: Ultralytics
    caps the batch at the dataset's size, and under DDP a rank's batch at its shard (batch_that_runs), so
    the trial would run, and be recorded as, a smaller batch than its name."""
    n, out = max(world_size, 1), []
    for b in batches:
        ran = batch_that_runs(max(b // n, 1), train_images, n)
        if ran >= max(b // n, 1):
            continue
        if n == 1:
            why = (
                f"batch {b}: the dataset has {train_images} training images and Ultralytics caps the batch at "
                f"the dataset's size, so it would run as batch {ran}"
            )
        else:
            why = (
                f"batch {b} ({b // n} per rank): each of the {n} ranks loads {ran} of the dataset's {train_images} "
                f"training images an epoch, so it would run as batch {ran} per rank ({ran * n} in all)"
            )
        out.append((b, why))
    return out


def largest_runnable(world_size: int, train_images: int) -> int:
    """The largest global batch a dataset of `train_images` runs as asked on `world_size` ranks."""
    n = max(world_size, 1)
    return batch_that_runs(train_images, train_images, n) * n


def drop_over_the_data(the_plan: Plan, hw: Hardware, train_images: int, flag: bool) -> None:
    """Drop planned batches the dataset cannot run as asked (over_the_data), each with its reason. Call it
    before the baselines join the plan: they run whatever they ask, as the references. `flag`: the batches
    were the user's --batch, so a plan left without any is the user's to fix (one line)."""
    over = over_the_data(the_plan.axes.batch, hw.world_size, train_images)
    if not over:
        return
    gone = {b for b, _ in over}
    if gone >= set(the_plan.axes.batch):
        most = largest_runnable(hw.world_size, train_images)
        what = "--batch " + ",".join(map(str, the_plan.axes.batch)) if flag else "every planned batch"
        raise UsageError(
            f"{what}: larger than the dataset's {train_images} training images can run"
            + (f" on {hw.world_size} ranks" if hw.world_size > 1 else "")
            + f" (Ultralytics caps the batch at the dataset, DDP at a rank's shard); give --batch {most}"
            " or smaller, or a larger dataset"
        )
    the_plan.axes.batch = [b for b in the_plan.axes.batch if b not in gone]
    the_plan.knobs = [k for k in the_plan.knobs if k.batch not in gone]
    the_plan.dropped += [why for _, why in over]


def make_plan(hw: Hardware, given: dict[str, Optional[list]]) -> Plan:
    """`given` maps axis name -> parsed list, or None for the default."""
    base = default_axes(hw)
    axes = Axes(**{name: given.get(name) or getattr(base, name) for name in base.__dataclass_fields__})
    axes.batch = sorted(axes.batch)  # small batches first: an OOM then skips the larger ones instead of running them
    dropped: list[str] = []
    axes = _fit_to_hardware(axes, hw, dropped)
    names = list(vars(axes))  # Axes and Knobs name the knobs alike, in the same order
    knobs = [Knobs(**dict(zip(names, values))) for values in itertools.product(*(getattr(axes, n) for n in names))]
    return Plan(axes, knobs, dropped)


def trial_id(index: int, k: Knobs) -> str:
    parts = [f"t{index:02d}", f"b{k.batch}", f"w{k.workers}", k.precision]
    if k.pin_memory:
        parts.append("pin")
    if k.cache != "off":
        parts.append(f"cache-{k.cache}")
    if not k.deterministic:
        parts.append("nondet")
    if k.compile != "off":
        parts.append({"default": "compile"}.get(k.compile, f"compile-{k.compile.split('-')[0]}"))  # -reduce, -max
    if not k.channels_last:
        parts.append("nchw")
    if k.nccl != "default":
        parts.append(re.sub(r"[^A-Za-z0-9]+", "-", k.nccl).strip("-").lower()[:40])
    return "-".join(parts)


def omp_threads(cpu_count: int, world_size: int) -> int:
    """Cores per rank: what the trials run with (torchrun alone would set 1)."""
    return max(cpu_count // max(world_size, 1), 1)


def specs(
    plan: Plan,
    hw: Hardware,
    *,
    model: str,
    data: str,
    imgsz: int,
    optimizer: Union[str, OptimizerPlan],
    warmup: int,
    steps: int,
    world_sizes: Optional[list[int]] = None,
    precision: Optional[float] = None,
    max_steps: Optional[int] = None,
    overrides: Optional[dict] = None,
) -> list[TrialSpec]:
    """Trials in plan order. With several world sizes (scaling), each runs at every size with the same
    batch per rank, as when GPUs are added: the batch lists are global at the largest size.
    `optimizer`: a name for every trial, or the scan's OptimizerPlan, resolved per trial for its global batch
    (yoloprof.analysis.optimizer). `overrides`: Ultralytics arguments held in every trial (--cfg:
    yoloprof.search.usercfg.held)."""
    sizes = sorted(world_sizes or [hw.world_size])
    full = max(hw.world_size, 1)
    out = []
    for k in plan.knobs:
        for r in sizes:
            knobs = k if r == full else replace(k, batch=max(k.batch // full, 1) * r)
            nn = hw.nodes_for(r)
            env = {"OMP_NUM_THREADS": str(omp_threads(hw.cpu_count, r // nn)), **nccl_env(k.nccl)}
            tid = trial_id(len(out) + 1, knobs) + (f"-r{r}" if len(sizes) > 1 else "")
            name, iterations = for_batch(optimizer, knobs.batch)
            out.append(
                TrialSpec(
                    trial_id=tid,
                    knobs=knobs,
                    world_size=r,
                    device=hw.device,
                    gpus=list(hw.gpus[: r // nn]) if hw.device == "cuda" else [],
                    model=model,
                    data=data,
                    imgsz=imgsz,
                    optimizer=name,
                    warmup_steps=warmup,
                    measured_steps=steps,
                    env=env,
                    precision=precision,
                    max_steps=max_steps,
                    overrides=dict(overrides or {}),
                    nnodes=nn,
                    optimizer_iterations=iterations,
                )
            )
    return out


def spec_for(
    knobs: Knobs,
    index: int,
    hw: Hardware,
    *,
    model: str,
    data: str,
    imgsz: int,
    optimizer: Union[str, OptimizerPlan],
    warmup: int,
    steps: int,
    precision: Optional[float] = None,
    max_steps: Optional[int] = None,
    repeat_of: Optional[str] = None,
    overrides: Optional[dict] = None,
) -> TrialSpec:
    """One trial at the scan's full world size: what the auto search runs, proposal by proposal."""
    tid = trial_id(index, knobs) + ("-rep" if repeat_of else "")
    env = {"OMP_NUM_THREADS": str(omp_threads(hw.cpu_count, hw.per_node)), **nccl_env(knobs.nccl)}
    name, iterations = for_batch(optimizer, knobs.batch)
    return TrialSpec(
        trial_id=tid,
        knobs=knobs,
        world_size=hw.world_size,
        device=hw.device,
        gpus=list(hw.gpus) if hw.device == "cuda" else [],
        model=model,
        data=data,
        imgsz=imgsz,
        optimizer=name,
        warmup_steps=warmup,
        measured_steps=steps,
        env=env,
        precision=precision,
        max_steps=max_steps,
        repeat_of=repeat_of,
        overrides=dict(overrides or {}),
        nnodes=hw.nnodes,
        optimizer_iterations=iterations,
    )


def parse_world_sizes(text: str, hw: Hardware) -> list[int]:
    sizes = parse_ints("--ranks", text, 1)
    if hw.nnodes > 1 and sorted(set(sizes)) != [hw.per_node, hw.world_size]:
        raise UsageError(
            f"--ranks {text}: on {hw.nnodes} nodes, --ranks compares one node against all of them: "
            f"give --ranks {hw.per_node},{hw.world_size}"
        )
    too_many = [r for r in sizes if r > hw.world_size]
    if too_many:
        raise UsageError(
            f"--ranks {too_many[0]}: the scan has {hw.world_size} ranks "
            f"({'--gpus' if hw.device == 'cuda' else '--nproc'} sets them)"
        )
    return sorted(sizes)


def cache_ram_risk(train_images: int, imgsz: int, ranks: int, available_mib: float) -> tuple[bool, str]:
    """(skip?, why) for a cache=ram trial: under DDP every rank caches the whole dataset.

    Ultralytics checks per rank that twice its own copy fits in free RAM, so N ranks all pass the
    check and then hold N copies. The estimate is an upper bound: images resized to imgsz on the
    long side, 3 bytes a pixel.
    """
    each_mib = train_images * imgsz * imgsz * 3 / 2**20
    total = each_mib * max(ranks, 1)
    copies = f"{ranks} ranks x up to {each_mib / 1024:.1f} GiB = {total / 1024:.1f} GiB"
    if total > 0.8 * available_mib:
        return True, (
            f"cache=ram skipped: every rank caches its own copy of the dataset ({copies}) and only "
            f"{available_mib / 1024:.1f} GiB RAM is free; the machine would run out of memory. Use cache=disk"
        )
    return (
        False,
        f"cache=ram under DDP holds one copy of the dataset per rank ({copies}; {available_mib / 1024:.1f} GiB free)",
    )
