"""Advice, only where a trial tested it. Pure.

A tested effect is a pair of finished trials that differ in one knob only: "workers 4 -> 8: +31%
images/s, data wait 38% -> 4%" is stated because both trials exist. What the verdict suggests but
no trial tried is labelled untested and comes with the scan that would test it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

from yoloprof.analysis import noise
from yoloprof.analysis import tradeoffs
from yoloprof.analysis.tradeoffs import trade_off
from yoloprof.records import Knobs, TrialResult

KNOBS = [f.name for f in fields(Knobs)]
_CACHE_ORDER = {"off": 0, "ram": 1, "disk": 2}
_AMP_ORDER = {False: 0, True: 1, "bf16": 2}


@dataclass
class Effect:
    knob: str
    before: str
    after: str
    from_trial: str
    to_trial: str
    gain: float  # images/s of to_trial's configuration over from_trial's (runs averaged), minus 1
    text: str
    beyond_noise: bool = True  # the ratio's 95% interval excludes 1 (analysis.noise.difference)
    low: Optional[float] = None  # 95% interval of the ratio (to / from); None where no interval was recorded
    high: Optional[float] = None


@dataclass
class Untested:
    text: str
    flags: str  # what to add to the scan command to test it


def _show(knob: str, v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _order(knob: str, v) -> tuple:
    """Effects read from Ultralytics' default towards the other value (deterministic on -> off)."""
    if knob == "cache":
        return (_CACHE_ORDER.get(v, 9),)
    if knob == "nccl":
        return (v != "default", str(v))
    if knob == "amp":
        return (_AMP_ORDER.get(v, 9),)
    if knob == "compile":
        return (v != "off", str(v))
    if knob in ("deterministic", "channels_last"):
        return (not v,)
    return (v,)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _evidence(knob: str, a: TrialResult, b: TrialResult) -> str:
    """The measurement that explains the effect of this knob."""
    if knob in ("workers", "cache"):
        return f"data wait {_pct(a.data_wait_frac)} -> {_pct(b.data_wait_frac)}"
    if knob == "nccl":
        ms = lambda r: "n/a" if r.comm_wait_ms_p50 is None else f"{r.comm_wait_ms_p50:.1f} ms"  # noqa: E731
        return f"exposed AllReduce {ms(a)} -> {ms(b)} per step"
    if knob == "pin_memory":
        h = lambda r: "n/a" if not r.breakdown or r.breakdown.h2d_ms is None else f"{r.breakdown.h2d_ms:.1f} ms"  # noqa: E731
        return f"host-to-device {h(a)} -> {h(b)} per step"
    mem = lambda r: "n/a" if r.peak_mem_mib is None else f"{r.peak_mem_mib:.0f} MiB"  # noqa: E731
    step = lambda r: "n/a" if r.step_ms_p50 is None else f"{r.step_ms_p50:.0f} ms"  # noqa: E731
    if knob == "compile":
        warm = lambda r: "n/a" if r.warmup_extra_s is None else f"{r.warmup_extra_s:.1f} s"  # noqa: E731
        return f"step {step(a)} -> {step(b)}, first steps' extra time {warm(a)} -> {warm(b)}"
    return f"step {step(a)} -> {step(b)}, peak memory {mem(a)} -> {mem(b)}"


def _ratio(d: noise.Difference) -> tuple[Optional[float], Optional[float]]:
    if not d.known:
        return None, None
    return d.low, (d.high if math.isfinite(d.high) else None)


def effects(results: list[TrialResult]) -> list[Effect]:
    """Every one-knob pair of finished configurations (repeats averaged), from the lower setting to the
    higher one. A difference inside the noise reads "no measurable effect (x% to y%)", never a gain."""
    ok = [r for r in results if r.status == "ok" and r.img_per_s]
    firsts = {c.first for c in noise.configurations(results)}
    ok = [r for r in ok if r.trial_id in firsts]
    out = []
    for a in ok:
        for b in ok:
            if a.world_size != b.world_size:
                continue  # scaling is its own section
            diff = [k for k in KNOBS if getattr(a.knobs, k) != getattr(b.knobs, k)]
            if len(diff) != 1:
                continue
            knob = diff[0]
            va, vb = getattr(a.knobs, knob), getattr(b.knobs, knob)
            if _order(knob, va) >= _order(knob, vb):
                continue
            d = noise.difference(results, a.trial_id, b.trial_id)
            cost = trade_off(knob, vb)
            text = (
                f"{knob} {_show(knob, va)} -> {_show(knob, vb)}: {d.gain_text()}, "
                f"{_evidence(knob, a, b)} ({a.trial_id} -> {b.trial_id})" + (f"; it {cost}" if cost else "")
            )
            low, high = _ratio(d)
            out.append(
                Effect(
                    knob,
                    _show(knob, va),
                    _show(knob, vb),
                    a.trial_id,
                    b.trial_id,
                    d.gain,
                    text,
                    d.beyond_noise,
                    low,
                    high,
                )
            )
    return sorted(out, key=lambda e: (KNOBS.index(e.knob), not e.beyond_noise, -abs(e.gain)))


def path_to_best(best: TrialResult, reference: TrialResult, results: list[TrialResult]) -> list[str]:
    """How each setting that differs between the reference and the best trial was tested; a change inside the
    noise reads "no measurable effect"."""
    lines = []
    for knob in KNOBS:
        va, vb = getattr(reference.knobs, knob), getattr(best.knobs, knob)
        if va == vb:
            continue
        twin = tradeoffs.twin(results, best, **{knob: va})
        if twin is None:
            lines.append(
                f"{knob} {_show(knob, va)} -> {_show(knob, vb)}: untested alone (no trial changes only {knob})"
            )
        else:
            d = noise.difference(results, twin.trial_id, best.trial_id)
            lines.append(
                f"{knob} {_show(knob, va)} -> {_show(knob, vb)}: {d.gain_text()} with everything "
                f"else as in the best trial, {_evidence(knob, twin, best)} ({twin.trial_id} -> {best.trial_id})"
            )
    return lines


def untested(
    best: TrialResult,
    bottleneck: Optional[str],
    results: list[TrialResult],
    device: str,
    workers_cap: int,
    max_batch_fit: Optional[int] = None,
) -> list[Untested]:
    """What the verdict points at that no trial tried, with the flags of the scan that would try it."""
    tried = {k: {getattr(r.knobs, k) for r in results if r.status not in ("skipped",)} for k in KNOBS}
    out = []
    n = max(best.world_size, 1)
    tel = best.telemetry
    starved = tel is not None and (tel.cpu_busy_cores_frac or 0) >= 0.5
    if bottleneck == "input":
        more = [w for w in (best.knobs.workers * 2, best.knobs.workers + 4, workers_cap) if w > max(tried["workers"])]
        if starved:
            out.append(
                Untested(
                    "every core was busy during the best trial: more workers cannot add CPU; cache "
                    "decoded images or lighten augmentation",
                    "--cache ram,disk",
                )
            )
        elif more and max(tried["workers"]) < workers_cap:
            w = min(min(more), workers_cap)
            out.append(
                Untested(
                    f"more DataLoader workers per rank (none above {max(tried['workers'])} tried; "
                    f"Ultralytics caps at {workers_cap})",
                    f"--workers {best.knobs.workers},{w}",
                )
            )
        if tried["cache"] == {"off"} and not starved:
            out.append(Untested("caching images (cache=disk keeps RAM free under DDP)", "--cache off,disk"))
    if bottleneck == "communication":
        if max(tried["batch"]) <= best.knobs.batch:
            out.append(
                Untested(
                    "a larger batch: fewer AllReduces per image", f"--batch {best.knobs.batch},{2 * best.knobs.batch}"
                )
            )
        if device == "cuda" and tried["nccl"] == {"default"}:
            out.append(
                Untested(
                    "NCCL algorithm presets (NCCL files them under debugging variables)", "--nccl default,ring,tree"
                )
            )
    if bottleneck == "compute":  # the same math done faster: these run on CPU too, bf16 on GPUs only
        if tried["deterministic"] == {True}:
            out.append(
                Untested(
                    "deterministic=False, which allows the fastest algorithms (and gives up bit-reproducible runs)",
                    "--deterministic on,off",
                )
            )
        if tried["compile"] == {"off"}:
            out.append(
                Untested("torch.compile (a one-time compilation at the start of every run)", "--compile off,default")
            )
    if bottleneck == "compute" and device == "cuda":
        if True not in tried["amp"]:
            out.append(Untested("AMP (mixed precision)", "--amp off,on"))
        if "bf16" not in tried["amp"]:
            out.append(Untested("bf16 autocast (Ampere or later: no GradScaler, other numerics)", "--amp on,bf16"))
        b = max_batch_fit * n if max_batch_fit else 2 * best.knobs.batch
        if max(tried["batch"]) <= best.knobs.batch and b > best.knobs.batch:
            out.append(
                Untested(
                    f"a larger batch, up to {b} (memory allows it per the compute probe)"
                    if max_batch_fit
                    else "a larger batch",
                    f"--batch {best.knobs.batch},{b}",
                )
            )
    if bottleneck == "memory":
        if device == "cuda" and True not in tried["amp"]:
            out.append(Untested("AMP, which roughly halves activation memory", "--amp on"))
        out.append(Untested("a smaller batch", f"--batch {max(best.knobs.batch // 2, n)},{best.knobs.batch}"))
    return out


def next_scan(command: list[str], flags: str, out_flag: bool = True) -> str:
    """The scan command that tests an untested suggestion: the original, with these knob flags replaced."""
    new = flags.split()
    replaced = {new[i] for i in range(0, len(new), 2)}
    drop = replaced | ({"--out", "--resume"} if out_flag else set())
    args, skip = [], False
    for tok in command[2:] if command[:2] == ["yoloprof", "scan"] else []:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in drop:
            skip = "=" not in tok
            continue
        args.append(tok)
    return " ".join(["yoloprof", "scan", *args, *new])
