"""Ceilings -> values the auto search need not try, each with the figure that rules it out.

A trial costs a minute; a ceiling point costs seconds and was measured anyway. Values the ceilings
show cannot help are dropped before the descent. The thresholds are deliberately loose (5-20%) so
that run-to-run noise in the probes does not prune a value that might win, and a missing ceiling
prunes nothing. Pure: no torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from yoloprof.analysis.headroom import Ceilings
from yoloprof.records import AllReduceCeiling, ComputeCeiling, Decision, LoaderCeiling, precision_name
from yoloprof.search.plan import Hardware
from yoloprof.search.space import Space, show

PLATEAU_GAIN = 1.05  # a workers step that adds < 5% to the loader's img/s: the input ceiling has flattened
INPUT_HEADROOM = 1.2  # loaders >= 1.2x the fastest training step: more workers cannot help (headroom.py's ~1.2)
NCCL_SLOWER = 1.10  # a preset > 10% slower than default at the model's bucket sizes; within 10% is a tie


@dataclass
class Pruned:
    space: Space  # what remains to search
    decisions: list[Decision] = field(default_factory=list)  # stage "ceilings": pruned, or kept with why
    promote: list[str] = field(default_factory=list)  # slower NCCL presets, tried if communication bounds the incumbent
    max_fit: dict[bool, int] = field(default_factory=dict)  # amp -> largest global batch the compute ceiling says fits


def prune(space: Space, ceilings: Ceilings, hw: Hardware, cold: bool = False) -> Pruned:
    """Prune a copy of `space` by the loader, compute and AllReduce ceilings measured on this machine.
    `cold`: the dataset does not fit in memory (analysis.dataset_fit), so every epoch reads it from storage:
    workers are judged by the loaders' cold rates, and cache disk is kept for the search to try."""
    out = Pruned(copy.deepcopy(space))
    _batches(out, ceilings.compute, hw)
    _workers(out, ceilings.loader, ceilings.compute, hw, cold)
    if cold and "disk" in out.space.values["cache"]:
        _note(
            out,
            "cache",
            "cache disk: kept, the dataset does not fit in memory and epochs read it from storage "
            "(the input ceiling's cold rate at cache disk says what it reads at)",
            "disk",
        )
    _nccl(out, ceilings.allreduce, hw)
    return out


def _note(out: Pruned, knob: str, reason: str, value: Optional[str] = None) -> None:
    out.decisions.append(Decision(stage="ceilings", kind="kept", knob=knob, value=value, reason=reason))


def _cut(out: Pruned, knob: str, value, reason: str) -> None:
    out.space.without(knob, value)
    out.decisions.append(Decision(stage="ceilings", kind="pruned", knob=knob, value=show(value), reason=reason))


def _batches(out: Pruned, compute: Optional[ComputeCeiling], hw: Hardware) -> None:
    if compute is None:
        return _note(out, "batch", "no compute ceiling was measured: no batch is pruned for memory")
    n = max(hw.world_size, 1)
    limit: dict[bool, tuple[int, str]] = {}  # amp -> (largest batch per rank that fits, why)
    for amp in out.space.values["amp"]:
        name = precision_name(amp)
        oom = [p.batch_ran for p in compute.points if p.amp == amp and p.status == "oom"]  # the batch that ran
        fit = compute.max_batch_fit.get(name)
        found = []
        if oom:
            found.append((min(oom) - 1, f"the compute probe ran out of memory at {min(oom)} per rank ({name})"))
        if fit is not None:
            margin = f"{100 * compute.mem_margin_frac:.0f}%"
            found.append((fit, f"the largest batch that fits with {name} is {fit} per rank ({margin} margin kept)"))
        if found:
            limit[amp] = min(found)
            out.max_fit[amp] = limit[amp][0] * n
    if not limit:
        return _note(out, "batch", "the compute ceiling shows no OOM and no memory limit: no batch is pruned")
    for b in list(out.space.values["batch"]):
        if all(amp in limit and b // n > limit[amp][0] for amp in out.space.values["amp"]):
            why = "; ".join(limit[amp][1] for amp in out.space.values["amp"])
            _cut(out, "batch", b, f"batch {b} ({b // n} per rank) will not fit: {why}")


def _rates(loader: LoaderCeiling, cold: bool = False) -> dict[int, float]:
    """workers -> machine img/s (cold: after the page cache lost the files), the best point per value (any
    pin_memory) at the ceiling's own cache setting."""
    rate: dict[int, float] = {}
    for p in loader.points:
        v = p.img_per_s_machine_cold if cold else p.img_per_s_machine
        if p.status == "ok" and v and (p.cache or loader.cache) == loader.cache:
            rate[p.workers] = max(rate.get(p.workers, 0.0), v)
    return rate


def _workers(
    out: Pruned, loader: Optional[LoaderCeiling], compute: Optional[ComputeCeiling], hw: Hardware, cold: bool = False
) -> None:
    """workers 0 loads in the training process, between steps, so the loader alone cannot show its cost:
    it is never the value that rules out larger ones."""
    if loader is None:
        return _note(out, "workers", "no loader ceiling was measured: no workers value is pruned")
    rate = _rates(loader, cold)
    if cold and not rate:
        return _note(
            out,
            "workers",
            "the dataset does not fit in memory and the loaders' cold rates are n/a: no workers value is pruned",
        )
    if cold:
        _note(
            out,
            "workers",
            "the dataset does not fit in memory: workers are judged by the loaders' cold rates "
            "(files evicted from the page cache), what every epoch reads at",
        )
    input_word = "cold input ceiling" if cold else "input ceiling"
    measured = [w for w in out.space.values["workers"] if w > 0 and w in rate]
    prev = None
    for w in measured:
        if prev is not None and rate[w] < PLATEAU_GAIN * rate[prev]:
            for v in [v for v in out.space.values["workers"] if v > prev]:
                _cut(
                    out,
                    "workers",
                    v,
                    f"workers {v}: the {input_word} stops growing at workers {prev} ({rate[prev]:.0f} img/s; "
                    f"workers {w} loads {rate[w]:.0f} img/s, under +{100 * (PLATEAU_GAIN - 1):.0f}%)",
                )
            break
        prev = w
    if compute is None:
        return _note(out, "workers", "no compute ceiling: workers are not compared with what training can use")
    n = max(hw.world_size, 1)
    wanted = {(b // n, a) for b in out.space.values["batch"] for a in out.space.values["amp"]}
    pts = [p for p in compute.points if p.status == "ok" and p.img_per_s and (p.batch_ran, p.amp) in wanted]
    if not pts:
        return _note(out, "workers", "the compute ceiling has no point at the batches searched: workers not compared")
    top = max(pts, key=lambda p: p.img_per_s)
    need = top.img_per_s * n
    enough = next((w for w in out.space.values["workers"] if w > 0 and rate.get(w, 0) >= INPUT_HEADROOM * need), None)
    if enough is None:
        return
    for v in [v for v in out.space.values["workers"] if v > enough]:
        _cut(
            out,
            "workers",
            v,
            f"workers {v}: workers {enough} already loads {rate[enough]:.0f} img/s{' cold' if cold else ''}, "
            f"over {INPUT_HEADROOM:g}x the "
            f"{need:.0f} img/s the fastest training step measured can use (compute ceiling, {top.batch_ran} per rank "
            f"{'amp' if top.amp else 'fp32'} x {n} ranks); more workers cannot help",
        )


def _nccl(out: Pruned, allreduce: list[AllReduceCeiling], hw: Hardware) -> None:
    presets = [p for p in out.space.values["nccl"] if p != "default"]
    if not presets:
        return
    ok = {c.nccl: c for c in allreduce if c.status == "ok" and c.world_size == hw.world_size}
    base = ok.get("default")
    buckets = {p.size_bytes: p.time_us for p in base.points if p.is_bucket} if base else {}
    if not buckets:
        why = "no AllReduce ceiling with default NCCL" if base is None else "the default ceiling has no bucket sizes"
        return _note(out, "nccl", f"{why}: no NCCL preset is pruned")
    for preset in presets:
        c = ok.get(preset)
        times = {p.size_bytes: p.time_us for p in c.points if p.is_bucket and p.size_bytes in buckets} if c else {}
        if not times:
            _note(out, "nccl", f"nccl {preset}: no AllReduce ceiling at the model's bucket sizes; kept", preset)
            continue
        mine, ref = sum(times.values()), sum(buckets[s] for s in times)
        sizes = ", ".join(f"{s / 2**20:.1f}" for s in sorted(times))
        figures = (
            f"AllReduce at the model's {len(times)} bucket sizes ({sizes} MiB) takes {mine:.0f} us "
            f"against default's {ref:.0f} us ({100 * (mine / ref - 1):+.0f}%)"
        )
        if mine > NCCL_SLOWER * ref:
            out.promote.append(preset)
            _cut(
                out,
                "nccl",
                preset,
                f"nccl {preset}: {figures}, over +{100 * (NCCL_SLOWER - 1):.0f}%; "
                "promote if communication bounds the best trial",
            )
        else:
            tie = "ties default within" if mine >= ref / NCCL_SLOWER else "beats default by more than"
            _note(out, "nccl", f"nccl {preset}: {figures}, {tie} {100 * (NCCL_SLOWER - 1):.0f}%; kept", preset)
