"""TrialResult + measured epoch costs + the run to predict -> epoch and run time, cost and energy.

An epoch is its steps at the trial's steady rate, plus what `yolo train` adds around them, each
part measured (yoloprof.scan.epoch_job): the first step of an epoch (the loader's restart, carrying
the previous epoch's end work), validation, checkpoint saving. A run adds what happens once: set-up,
the warm-up's extra optimizer steps, the last close_mosaic epochs at their own measured rate, and
the final validation of best.pt. A part that was not measured is left out and named in
`parts_missing`, never guessed. Bands add the parts' bands: the steps' from the throughput
interval, each part's from its fastest and slowest timed pass.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

from yoloprof.analysis import epoch_costs
from yoloprof.errors import UsageError
from yoloprof.records import DatasetInfo, EpochCosts, EpochPrediction, Ranking, RunPlan, TrialResult

J_PER_KWH = 3.6e6


def plan_run(
    cfg_args: Optional[dict] = None,
    epochs: Optional[int] = None,
    price: Optional[float] = None,
    currency: Optional[str] = None,
) -> RunPlan:
    """The run to predict: flags win over the user's config, which wins over Ultralytics' defaults."""
    cfg_args = cfg_args or {}
    rp = RunPlan()
    for key in ("epochs", "close_mosaic", "warmup_epochs", "nbs", "val", "save"):
        if cfg_args.get(key) is not None:
            setattr(rp, key, type(getattr(rp, key))(cfg_args[key]))
    rp.source = "your config" if cfg_args else "Ultralytics defaults"
    if epochs is not None:
        if epochs < 1:
            raise UsageError(f"--epochs {epochs}: give the number of epochs of the run to predict, at least 1")
        rp.epochs, rp.source = epochs, "--epochs"
    if price is not None:
        if not price > 0:
            raise UsageError(f"--gpu-hour-price {price}: give the price of one GPU-hour, > 0")
        rp.gpu_hour_price = price
    if currency is not None:
        if not re.fullmatch(r"[A-Za-z$€£¥]{1,5}", currency):
            raise UsageError(f"--currency {currency}: give a short code such as USD or EUR")
        rp.currency = currency
    return rp


def steps_per_epoch(r: TrialResult, dataset: Optional[DatasetInfo]) -> Optional[int]:
    """Ultralytics' own loader length where the trial recorded it; else from the split, as its
    DistributedSampler shards it (each rank ceil(images / ranks), batches not dropped)."""
    if r.batches_per_epoch:
        return r.batches_per_epoch
    if dataset is None or not dataset.train_images:
        return None
    per_rank = max(r.knobs.batch // max(r.world_size, 1), 1)
    return math.ceil(math.ceil(dataset.train_images / max(r.world_size, 1)) / per_rank)


def warmup_extra_steps(nb: int, rp: RunPlan, batch: int, epochs: Optional[int] = None) -> float:
    """Optimizer steps the lr warm-up adds: Ultralytics ramps accumulate from 1 to round(nbs / batch)
    over its first round(min(warmup_epochs, epochs - 1) * nb) iterations (engine/trainer.py)."""
    epochs = rp.epochs if epochs is None else epochs
    nw = round(min(rp.warmup_epochs, max(epochs - 1, 0)) * nb) if rp.warmup_epochs > 0 else 0
    acc0 = max(round(rp.nbs / batch), 1)
    if nw == 0 or acc0 == 1:
        return 0.0
    stepped = sum(1.0 / max(1, round(1 + (acc0 - 1) * ni / nw)) for ni in range(nw))
    return max(stepped - nw / acc0, 0.0)


def _band(parts: list[tuple[Optional[float], Optional[float], Optional[float]]]) -> tuple[float, float, float]:
    est = sum(p[0] for p in parts if p[0] is not None)
    low = sum((p[1] if p[1] is not None else p[0]) for p in parts if p[0] is not None)
    high = sum((p[2] if p[2] is not None else p[0]) for p in parts if p[0] is not None)
    return est, low, high


def _capped(rate: tuple, cap: tuple) -> tuple:
    """The lower of two rates, bound by bound; a bound unknown on either side is unknown (None)."""
    lows, highs = (rate[1], cap[1]), (rate[2], cap[2])
    low = None if None in lows else min(lows)
    high = None if None in highs else min(highs)
    return min(rate[0], cap[0]), low, high


def predict(
    r: TrialResult,
    costs: Optional[EpochCosts],
    dataset: Optional[DatasetInfo],
    rp: RunPlan,
    rate: Optional[tuple] = None,
    cold: Union[tuple, str, None] = None,
) -> EpochPrediction:
    """`rate`: (img/s, low, high) to use instead of the trial's own: its configuration's mean over repeats.
    `cold`: the dataset does not fit in memory (analysis.dataset_fit.caps): the loaders' cold (img/s, low,
    high), which caps the steps' rate, or why it is unknown (the steps then stay at the warm rate, named missing).
    An epoch = its steps + the measured parts; a run = the epochs by kind + what happens once; then cost and energy."""
    out = EpochPrediction(r.trial_id)
    if r.status != "ok" or not r.img_per_s:
        return out
    nb = steps_per_epoch(r, dataset)
    if nb is None:
        out.parts_missing.append("the number of steps in an epoch (the dataset's size is unknown)")
        return out
    steps, known, warm_rate = _steps(out, r, nb, rate, cold)
    ok = costs is not None and costs.status == "ok"
    if costs is None:
        out.parts_missing.append("validation, checkpoint saving and epoch-end work (not measured in this scan)")
    elif not ok:
        out.parts_missing.append(
            f"validation, saving and epoch end: their measurement failed ({costs.error or costs.status})"
        )
    val, save = _epoch(out, r, costs if ok else None, rp, steps)
    if out.cold_img_per_s is not None:
        out.epoch_s_warm = out.epoch_s - out.steps_s + nb * r.batch_ran / warm_rate
    closed = min(rp.close_mosaic, rp.epochs) if rp.close_mosaic > 0 else 0
    no_mosaic = _no_mosaic(out, costs if ok else None, steps, closed)
    once = _once(out, r, costs if ok else None, rp, nb, val, save)
    runs = [(b[0] * n, b[1] * n, b[2] * n) for b, n in ((out_band(out), rp.epochs - closed), (no_mosaic, closed)) if n]
    run_s = _band(runs + once)
    out.once_s = _band(once)[0] if once else None
    out.run_h, out.run_h_low, out.run_h_high = (x / 3600 for x in run_s)
    if not known:  # a band of the other parts alone would look tighter than what is known
        out.epoch_s_low = out.epoch_s_high = out.run_h_low = out.run_h_high = None
    _cost_and_energy(out, r, rp, nb)
    return out


def _steps(out: EpochPrediction, r: TrialResult, nb: int, rate, cold) -> tuple[tuple, bool, float]:
    """An epoch's steps (time, low, high) at the trial's rate (capped by the cold loaders where the data do not
    fit); whether the rate's interval is known; the warm rate."""
    rate, lo_rate, hi_rate = rate or (r.img_per_s, r.img_per_s_ci_low, r.img_per_s_ci_high)
    warm_rate = rate
    if isinstance(cold, str):
        out.parts_missing.append(
            f"the dataset does not fit in memory and {cold}: its steps are priced at the warm rate, a lower bound"
        )
    elif cold is not None:
        out.cold_img_per_s = cold[0]
        rate, lo_rate, hi_rate = _capped((rate, lo_rate, hi_rate), cold)
    known = bool(lo_rate and hi_rate and math.isfinite(hi_rate) and hi_rate >= rate >= lo_rate > 0)
    batch = r.batch_ran  # an epoch's images: its batches as they ran (a dataset smaller than a batch caps it)
    out.steps_s = nb * batch / rate
    if not known:
        out.parts_missing.append(
            "the throughput interval (too few steps, or too wide to bound the time): the band "
            "holds the other parts only"
        )
        return (out.steps_s,) * 3, known, warm_rate
    return (out.steps_s, nb * batch / hi_rate, nb * batch / lo_rate), known, warm_rate


def _epoch(out: EpochPrediction, r: TrialResult, costs: Optional[EpochCosts], rp: RunPlan, steps: tuple):
    """The epoch's band: steps, an epoch's first step, its end, validation and saving as the run has them.
    Returns the (val, save) bands, which the run's end may count again."""
    # An epoch's first step: the trial's own where it crossed an epoch (its settings; its span carries the
    # previous epoch's end work, as val and save were off), else the epoch job's, which leaves the end work to
    # its own timed part.
    parts = [steps]
    if r.epoch_boundary_ms_p50 is not None and r.epoch_boundary_ms_p50 > 0:  # <= 0: its few boundaries drowned in noise
        out.boundary_s = max(r.epoch_boundary_ms_p50, 0.0) / 1e3
        parts.append((out.boundary_s,) * 3)
    else:
        if costs is not None and costs.boundary_ms is not None:
            out.boundary_s = max(costs.boundary_ms, 0.0) / 1e3
            parts.append((out.boundary_s,) * 3)
        elif costs is not None:
            out.parts_missing.append(
                "the loader's restart at an epoch's first step (no measured step crossed an epoch)"
            )
        if costs is not None and costs.end.s:
            out.end_s = costs.end.estimate
            parts.append((out.end_s, costs.end.low, costs.end.high))
    none = (None, None, None)
    val = (costs.val.estimate, costs.val.low, costs.val.high) if costs is not None and costs.val.s else none
    save = (costs.save.estimate, costs.save.low, costs.save.high) if costs is not None and costs.save.s else none
    if rp.val:
        out.val_s = val[0]
        parts.append(val)
    if rp.save:
        out.save_s = save[0]
        parts.append(save)
    out.epoch_s, out.epoch_s_low, out.epoch_s_high = _band(parts)
    return val, save


def _no_mosaic(out: EpochPrediction, costs: Optional[EpochCosts], steps: tuple, closed: int) -> tuple:
    """The band of a close_mosaic epoch: the steps at the no-mosaic ratio (1 where its interval holds 1: no
    measurable effect), the other parts as a mosaic epoch's."""
    ratio = costs.no_mosaic_ratio if costs is not None and costs.no_mosaic_ratio else None
    ratio_ci = costs.no_mosaic_ratio_ci if costs is not None else None
    if closed and ratio and ratio_ci and ratio_ci[0] > 0:
        rest = tuple(a - b for a, b in zip(out_band(out), steps, strict=True))
        point = epoch_costs.priced_ratio(ratio, ratio_ci)
        nm = (steps[0] / point, steps[1] / ratio_ci[1], steps[2] / ratio_ci[0])
        no_mosaic = tuple(a + b for a, b in zip(nm, rest, strict=True))
        out.no_mosaic_epoch_s = no_mosaic[0]
        return no_mosaic
    if closed and ratio:  # a ratio without an interval cannot tell its effect from the noise
        out.parts_missing.append(
            f"the last {closed} epochs' step cost without mosaic: x{ratio:.2f} measured without an interval (too few "
            "or too noisy steps), counted at the mosaic rate"
        )
    elif closed:
        out.parts_missing.append(
            f"the last {closed} epochs' step cost without mosaic: not measured, counted at the mosaic rate"
        )
    return out_band(out)


def _once(
    out: EpochPrediction, r: TrialResult, costs: Optional[EpochCosts], rp: RunPlan, nb: int, val: tuple, save: tuple
) -> list[tuple]:
    """What a run pays once: set-up, the process's start-up, compile, the warm-up's extra optimizer steps, the
    run's end, and the final epoch's validation and saving where the run turned them off."""
    setup = r.setup_s if r.setup_s is not None else (costs.setup_s if costs is not None else None)  # the trial's own
    once = [(setup,) * 3] if setup is not None else []
    if not once:
        out.parts_missing.append("set-up (dataset scan, caching, model build): not measured")
    if costs is not None and costs.startup_s is not None:  # a fresh process of the epoch job: its imports
        out.startup_s = costs.startup_s
        once.append((out.startup_s,) * 3)
    else:
        out.parts_missing.append("the process's start-up (interpreter, torch and Ultralytics imports): not measured")
    if r.knobs.compile != "off":  # compiled cold on the first steps, once a run
        if r.warmup_extra_s is not None:
            out.compile_s = max(r.warmup_extra_s, 0.0)
            once.append((out.compile_s,) * 3)
        else:
            out.parts_missing.append("torch.compile's start-up: not measured (no warm-up steps)")
    opt_ms = r.breakdown.optimizer_ms * (r.accumulate or 1) if r.breakdown and r.breakdown.optimizer_ms else None
    extra = warmup_extra_steps(nb, rp, r.knobs.batch)  # the batch asked: Ultralytics' accumulate comes from args.batch
    if extra and opt_ms is not None:
        once.append((extra * opt_ms / 1e3,) * 3)
    if costs is not None and costs.final_s is not None:  # final_eval (best.pt validated once more), plots, as timed
        out.final_s = costs.final_s
        once.append((out.final_s,) * 3)
    elif costs is not None and costs.val.s:
        once.append(val)  # final_eval validates best.pt once more; its plots were not timed
        out.parts_missing.append(
            "the run's end beyond the final validation (stripping checkpoints, plots): not measured"
        )
    if costs is not None and costs.val.s and not rp.val:  # the final epoch validates even with val=False
        once.append(val)
    if costs is not None and costs.save.s and not rp.save:  # and saves even with save=False
        once.append(save)
    return once


def _cost_and_energy(out: EpochPrediction, r: TrialResult, rp: RunPlan, nb: int) -> None:
    ranks = max(r.world_size, 1)
    if rp.gpu_hour_price is not None:
        out.cost_epoch = out.epoch_s / 3600 * ranks * rp.gpu_hour_price
        out.cost_run = out.run_h * ranks * rp.gpu_hour_price
    tel = r.telemetry
    if tel is not None and tel.energy_j_per_img is not None:
        out.energy_epoch_kwh = tel.energy_j_per_img * nb * r.batch_ran / J_PER_KWH
        out.energy_run_kwh = out.energy_epoch_kwh * rp.epochs
        out.parts_missing.append("energy of validation, saving and epoch end: not metered (the figure is the steps')")


def out_band(p: EpochPrediction) -> tuple[float, float, float]:
    return (p.epoch_s, p.epoch_s_low, p.epoch_s_high)


def predict_all(
    results: list[TrialResult],
    costs: dict[int, EpochCosts],
    dataset: Optional[DatasetInfo],
    rp: RunPlan,
    ranking: Optional[Ranking] = None,
    cold: Optional[dict[str, Union[tuple, str]]] = None,
) -> dict[str, EpochPrediction]:
    """Every trial; a repeated configuration's trials all at its combined figure (the mean of its runs, with
    the run-to-run spread in its interval), as the ranking and the verdict state it. `cold`: trial id -> its
    cold cap (analysis.dataset_fit.caps), where the dataset does not fit in memory."""
    combined = {}
    for v in ranking.verdicts if ranking else []:
        if v.img_per_s and len(v.runs) > 1:
            low, high = v.img_per_s_ci_low, v.img_per_s_ci_high
            combined[v.trial_id] = (
                v.img_per_s,
                low if low is not None else 0.0,
                high if high is not None else math.inf,
            )
    cold = cold or {}
    return {
        r.trial_id: predict(r, costs.get(r.world_size), dataset, rp, combined.get(r.trial_id), cold.get(r.trial_id))
        for r in results
    }


def duration(seconds: Optional[float]) -> str:
    """'42 s', '11.8 min', '19.7 h': the unit a team plans in."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 1:
        return f"{1e3 * seconds:.0f} ms"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _unit(seconds: float) -> tuple[float, str]:
    if seconds < 90:
        return 1.0, "s"
    return (60.0, "min") if seconds < 90 * 60 else (3600.0, "h")


def duration_band(est: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    """'11.8 min (11.2-12.5)': the band in the estimate's unit."""
    if est is None or not math.isfinite(est):
        return "n/a"
    if low is None or high is None or not high > low:
        return duration(est)
    scale, unit = _unit(est)
    digits = 0 if unit == "s" and est >= 10 else 1
    if unit == "s" and est < 1:  # shown in ms
        return f"{duration(est)} ({1e3 * low:.0f}-{1e3 * high:.0f})"
    return f"{duration(est)} ({low / scale:.{digits}f}-{high / scale:.{digits}f})"


def amount(v: Optional[float]) -> str:
    """Money without losing small sums to rounding: '1,234.50', '0.0312'."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3g}"


def one_line(p: EpochPrediction, epochs: int) -> Optional[str]:
    """'11.8 min an epoch, 19.7 h for 100 epochs' (None where there is no prediction)."""
    if p.epoch_s is None:
        return None
    text = f"{duration(p.epoch_s)} an epoch"
    if p.run_h is not None:
        text += f", {duration(p.run_h * 3600)} for {epochs} epochs"
    return text
