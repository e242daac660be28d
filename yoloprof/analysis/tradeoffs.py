"""What a setting changes besides speed, and when torch.compile pays for itself. Pure.

bf16, compile, deterministic=False and channels_last=False are not free the way a worker count is:
each gives something up (reproducibility, numerics, start-up time, a toolchain). The report and
best.yaml state that beside the measured gain, and a run too short for compile's one-time cost to
be won back is recommended without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

from yoloprof.analysis import noise
from yoloprof.records import EpochPrediction, Knobs, Ranking, TrialResult


def trade_off(knob: str, value) -> Optional[str]:
    """What this value gives up against Ultralytics' default, or None where it gives up nothing."""
    if knob == "deterministic" and value is False:
        return (
            "gives up bit-reproducible runs: torch's deterministic algorithms and cuDNN's deterministic mode are "
            "off, so two runs with the same seed can differ"
        )
    if knob == "amp" and value == "bf16":
        return (
            "changes the numerics: bfloat16 autocast keeps fp32's range with fewer mantissa bits (no GradScaler, "
            "no fp16 overflow); needs a GPU with native bf16 (Ampere or later)"
        )
    if knob == "compile" and value != "off":
        return (
            "the same math, but every run first compiles the model (start-up time, measured below) and needs a "
            "working compiler toolchain: a C++ compiler on CPU, Triton on CUDA"
        )
    if knob == "channels_last" and value is False:
        return "the same math in NCHW memory format; no Tensor-Core-friendly NHWC layout"
    return None


def trade_offs(k: Knobs) -> dict[str, str]:
    """knob -> what the configuration gives up, for each knob where it gives something up."""
    texts = {f.name: trade_off(f.name, getattr(k, f.name)) for f in fields(Knobs)}
    return {knob: text for knob, text in texts.items() if text is not None}


@dataclass
class CompilePayoff:
    """A compile trial against the same settings without compile."""

    trial_id: str
    twin_id: str
    mode: str
    one_time_s: Optional[float]  # its first steps' extra time beyond the twin's (compiled cold)
    difference: noise.Difference  # the compiled configuration's img/s over the twin's
    break_even_images: Optional[float]  # images after which the run is ahead; None where it never is
    break_even_epochs: Optional[float]
    text: str


def twin(results: list[TrialResult], r: TrialResult, **change) -> Optional[TrialResult]:
    """The finished trial with r's settings but for `change` (the first run of that configuration)."""
    want = replace(r.knobs, **change)
    return next(
        (
            t
            for t in results
            if t.status == "ok" and t.img_per_s and t.knobs == want and t.world_size == r.world_size and not t.repeat_of
        ),
        None,
    )


def compile_payoffs(results: list[TrialResult], images_per_epoch: Optional[int]) -> list[CompilePayoff]:
    """Every compile trial that has a twin without compile: its one-time cost and when it is won back."""
    out = []
    for r in results:
        if r.knobs.compile == "off" or r.status != "ok" or not r.img_per_s or r.repeat_of:
            continue
        off = twin(results, r, compile="off")
        if off is None:
            continue
        d = noise.difference(results, off.trial_id, r.trial_id)
        one_time = None
        if r.warmup_extra_s is not None:
            one_time = max(r.warmup_extra_s - (off.warmup_extra_s or 0.0), 0.0)
        rate_on, rate_off = d.ratio * _rate(results, off.trial_id), _rate(results, off.trial_id)
        saving = 1 / rate_off - 1 / rate_on if rate_on > 0 and rate_off > 0 else 0.0  # s per image
        images = one_time / saving if one_time is not None and saving > 0 and d.beyond_noise and d.ratio > 1 else None
        epochs = images / images_per_epoch if images is not None and images_per_epoch else None
        what = f"compile {r.knobs.compile}"
        cost = "n/a (no warm-up steps timed)" if one_time is None else f"{one_time:.0f} s"
        if not (d.beyond_noise and d.ratio > 1):
            text = (
                f"{what}: no faster steps beyond the noise ({d.gain_text()}), and {cost} of compilation at "
                f"the start of every run: leave it off"
            )
        elif images is None:
            text = f"{what}: {d.gain_text()} on the steady steps; its start-up cost was not measured"
        else:
            when = f"{epochs:.1f} epochs" if epochs is not None else f"{images:,.0f} images"
            text = (
                f"{what}: {d.gain_text()} on the steady steps, after {cost} of compilation at the start "
                f"(measured cold); it pays for itself after {when} ({images:,.0f} images): a shorter run is "
                "faster without it"
            )
        out.append(CompilePayoff(r.trial_id, off.trial_id, r.knobs.compile, one_time, d, images, epochs, text))
    return out


def _rate(results: list[TrialResult], trial_id: str) -> float:
    cfg = next((c for c in noise.configurations(results) if trial_id in c.trial_ids), None)
    return cfg.mean if cfg is not None else 0.0


def short_run_swap(
    ranking: Ranking, results: list[TrialResult], predictions: dict[str, EpochPrediction]
) -> Optional[tuple[str, str]]:
    """(trial id, why) when the recommended trial compiles and the planned run is predicted to end sooner
    with the same settings uncompiled: compile's start-up is not won back in that many epochs."""
    rec = next((r for r in results if r.trial_id == ranking.recommended_trial_id), None)
    if rec is None or rec.knobs.compile == "off":
        return None
    off = twin(results, rec, compile="off")
    if off is None:
        return None
    a, b = predictions.get(rec.trial_id), predictions.get(off.trial_id)
    if a is None or b is None or a.run_h is None or b.run_h is None or not math.isfinite(a.run_h):
        return None
    if a.run_h <= b.run_h:
        return None
    return off.trial_id, (
        f"{rec.trial_id} compiles ({rec.knobs.compile}), and the planned run is predicted to take "
        f"{60 * a.run_h:.1f} min with it against {60 * b.run_h:.1f} min without: compile's start-up "
        f"is not won back in this run, so {off.trial_id} (the same settings, uncompiled) is "
        "recommended"
    )


ULTRALYTICS_DEFAULT = {"deterministic": True, "compile": "off", "channels_last": True, "amp": True}


def measured_against_default(results: list[TrialResult], best: TrialResult, knob: str) -> str:
    """The best trial's gain over the same settings with this knob at Ultralytics' default, as measured."""
    other = twin(results, best, **{knob: ULTRALYTICS_DEFAULT[knob]})
    if other is None:
        return f"no trial changed only {knob}, so its own gain was not measured"
    d = noise.difference(results, other.trial_id, best.trial_id)
    return f"{d.gain_text()} against {other.trial_id}"


def config_notes(
    results: list[TrialResult], best: TrialResult, images_per_epoch: Optional[int], payoff: bool = True
) -> dict[str, str]:
    """knob -> the comment best.yaml writes beside it: what it gives up, and what it was measured to gain
    (with compile's pay-off unless `payoff` is False, where it is shown on its own)."""
    notes = {}
    for knob, cost in trade_offs(best.knobs).items():
        note = f"{cost}; measured: {measured_against_default(results, best, knob)}"
        if knob == "compile" and payoff:
            payoff = next((p for p in compile_payoffs(results, images_per_epoch) if p.trial_id == best.trial_id), None)
            if payoff is not None:
                note += f"; {payoff.text}"
        notes[knob] = note
    return notes
