"""The trials every recommendation is measured against: Ultralytics' defaults and the user's own.

A gain means something only against what the user would otherwise run, so the plan always holds
a trial with Ultralytics' defaults (unless --no-defaults) and, with --baseline, one with the
user's current settings. A baseline equal to a planned trial (Ultralytics caps workers the same
way) is that trial, not a second run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from yoloprof.errors import UsageError
from yoloprof.search import knob_table
from yoloprof.search.knob_table import _AMP, _CACHE, _COMPILE
from yoloprof.search.plan import Hardware, Plan, workers_cap
from yoloprof.records import Knobs

DEFAULTS = "Ultralytics defaults"
YOURS = "your settings"


def ultralytics_defaults(hw: Hardware) -> Knobs:
    """What `yolo train` runs with no arguments (batch 16, workers 8, AMP and pinned memory on GPU)."""
    n = max(hw.world_size, 1)
    batch = max(16 // n, 1) * n  # Ultralytics gives each rank batch // world size
    if hw.device == "cuda":
        return Knobs(batch=batch, workers=8, amp=True, pin_memory=True, cache="off", nccl="default")
    return Knobs(batch=batch, workers=0, amp=False, pin_memory=False, cache="off", nccl="default")  # CPU: workers=0


def parse_baseline(text: str, hw: Hardware) -> Knobs:
    """--baseline batch=32,workers=4,amp=off: unnamed knobs keep Ultralytics' defaults."""
    k = ultralytics_defaults(hw)
    for item in (t.strip() for t in text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise UsageError(f"--baseline '{item}': give key=value pairs, e.g. --baseline batch=32,workers=4,amp=off")
        name, v = knob_table.parse_setting(key, value, f"--baseline '{item}'")
        k = replace(k, **{name: v})
    return _fit(k, hw, "--baseline batch=")


def from_cfg(args: dict, hw: Hardware, name: str) -> Knobs:
    """--cfg: the config's measured keys (usercfg.MEASURED) as "your settings"; what it leaves out keeps
    Ultralytics' defaults (pin_memory and NCCL have no argument in a config). Values a trial cannot
    reproduce exactly are refused rather than rounded: the gain would be over another run."""
    k = ultralytics_defaults(hw)
    where = f"--cfg {name}"
    batch, workers, amp = args.get("batch", k.batch), args.get("workers", k.workers), args.get("amp", k.amp)
    if isinstance(batch, float) and batch.is_integer() and batch >= 1:
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(
            f"{where}: batch: {batch} lets AutoBatch pick a size (single GPU only); give the batch "
            "you train with, e.g. batch: 64"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"{where}: workers: {workers}; give a whole number >= 0")
    amp = _AMP.get(str(amp).lower())
    if amp is None:
        raise UsageError(f"{where}: amp: {args['amp']}; give true (fp16), bf16 or false (fp32)")
    cache = _CACHE.get(str(args.get("cache", False)).lower())
    if cache is None:
        raise UsageError(f"{where}: cache: {args['cache']}; give false, ram (or true) or disk")
    deterministic = args.get("deterministic", k.deterministic)
    if not isinstance(deterministic, bool):
        raise UsageError(f"{where}: deterministic: {deterministic}; give true or false")
    mode = _COMPILE.get(str(args.get("compile", False)).lower())
    if mode is None:
        raise UsageError(
            f"{where}: compile: {args['compile']}; give false, true or a mode (default, reduce-overhead, "
            "max-autotune-no-cudagraphs)"
        )
    channels_last = args.get("channels_last")
    if channels_last not in (None, True, False):
        raise UsageError(f"{where}: channels_last: {channels_last}; give true, false or leave it out (auto)")
    knobs = Knobs(
        batch,
        workers,
        amp,
        k.pin_memory,
        cache,
        k.nccl,
        deterministic=deterministic,
        compile=mode,
        channels_last=channels_last is not False,
    )
    return _fit(knobs, hw, f"{where}: batch: ")


def _fit(k: Knobs, hw: Hardware, what: str) -> Knobs:
    if k.batch % max(hw.world_size, 1) or k.batch < hw.world_size:
        raise UsageError(f"{what}{k.batch}: must be a multiple of the {hw.world_size} ranks")
    if hw.device != "cuda":
        k = replace(k, amp=False, pin_memory=False, nccl="default", channels_last=True)
    if hw.compile_blocker and k.compile != "off":
        raise UsageError(f"compile {k.compile} in your settings cannot run here: {hw.compile_blocker}")
    return k


def _same_run(a: Knobs, b: Knobs, hw: Hardware) -> bool:
    cap = workers_cap(hw)
    return replace(a, workers=min(a.workers, cap)) == replace(b, workers=min(b.workers, cap))


def add(plan: Plan, hw: Hardware, baseline: Optional[Knobs], with_defaults: bool) -> dict[str, Knobs]:
    """Put the baselines into the plan (first, so an interrupted scan still has them); role -> knobs."""
    roles: dict[str, Knobs] = {}
    wanted = ([(DEFAULTS, ultralytics_defaults(hw))] if with_defaults else []) + (
        [(YOURS, baseline)] if baseline is not None else []
    )
    front = []
    for role, knobs in wanted:
        hit = next((k for k in front + plan.knobs if _same_run(k, knobs, hw)), None)
        if hit is None:
            front.append(knobs)
            hit = knobs
        roles[role] = hit
    plan.knobs = front + plan.knobs
    return roles
