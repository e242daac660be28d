"""The report's "What the training will take" section: epoch, run, cost and energy of the recommended
trial, the parts each is made of, how they were measured, and the caveats of this hardware. Pure."""

from __future__ import annotations

from typing import Optional

from yoloprof.analysis import epoch_costs
from yoloprof.analysis.epoch import amount, duration, duration_band
from yoloprof.analysis.ranking import settings_tail
from yoloprof.records import EpochCosts, EpochPart, EpochPrediction, RunPlan


def _part(name: str, s: Optional[float], how: str) -> dict:
    return dict(name=name, value=duration(s) if s is not None else "n/a", how=how)


def _passes(p: EpochPart) -> str:
    return ", ".join(f"{x:.2f}" for x in p.s) + " s" if p.s else "not timed"


def measured_rows(costs: dict[int, EpochCosts]) -> list[dict]:
    """One row per world size: what the epoch job timed, pass by pass."""
    rows = []
    for ws, c in sorted(costs.items()):
        k = c.knobs
        settings = ", ".join([f"batch {k.batch}", f"workers {k.workers}", *settings_tail(k)])
        if c.status != "ok":
            rows.append(dict(ranks=ws, settings=settings, status=c.status, error=c.error or ""))
            continue
        subset = (
            f"{c.val_images_timed} of {c.val_images_total} images timed, scaled"
            if c.val_images_timed and c.val_images_timed < c.val_images_total
            else f"{c.val_images_total} images"
        )
        ratio = "n/a"
        if c.no_mosaic_ratio:
            ratio = epoch_costs.ratio_text(c.no_mosaic_ratio, c.no_mosaic_ratio_ci).replace(" img/s (", " img/s (95% ")
        rows.append(
            dict(
                ranks=ws,
                settings=settings,
                status="ok",
                val=_passes(c.val),
                val_subset=subset,
                save=_passes(c.save),
                end=_passes(c.end),
                setup=duration(c.setup_s),
                startup=duration(c.startup_s),
                boundary="n/a" if c.boundary_ms is None else f"{c.boundary_ms:.0f} ms",
                no_mosaic=ratio,
                notes=c.notes,
            )
        )
    return rows


def caveats(device: str, world_size: int, costs: dict[int, EpochCosts]) -> list[str]:
    out = [
        "Validation and saving were timed once per world size, with the recommended settings; validation runs at "
        "twice the batch per rank and twice the workers, so a trial with other settings validates at a slightly "
        "different speed.",
        "The prediction is for the dataset this scan ran on; an epoch's steps scale with its number of images.",
    ]
    if device == "cpu":
        out.append(
            f"On CPU, plain `yolo train device=cpu` runs one process with workers=0; these figures are for "
            f"{world_size} gloo rank{'s' if world_size != 1 else ''} as the trials ran them."
        )
    if not costs:
        out.append("No epoch-cost measurement in this scan: the epoch figures hold the training steps only.")
    return out


def context(
    p: Optional[EpochPrediction], rp: RunPlan, costs: dict[int, EpochCosts], device: str, world_size: int
) -> Optional[dict]:
    """None where the recommended trial has no prediction."""
    if p is None or p.epoch_s is None:
        return None
    parts = [
        _part(
            "training steps",
            p.steps_s,
            "its batches at the trial's steady images/s"
            if p.cold_img_per_s is None
            else f"its batches at the lower of the trial's images/s and the loaders' cold {p.cold_img_per_s:.0f} img/s: "
            "the dataset does not fit in memory, so every epoch reads it from storage",
        ),
        _part(
            "epoch start",
            p.boundary_s,
            "an epoch's first step beyond a steady one: the loader's restart"
            + (" (and the end work, in the trial's own step)" if p.end_s is None else ""),
        ),
        _part("epoch end", p.end_s, "EMA, metrics, memory clearing, the stop broadcast, timed by the epoch job"),
        _part(
            "validation",
            p.val_s,
            "Ultralytics' validator, as yolo train runs it" if rp.val else "val=False: only the final epoch",
        ),
        _part("saving", p.save_s, "last.pt and best.pt" if rp.save else "save=False: only the final epoch"),
    ]
    parts = [x for x in parts if x["value"] != "n/a" or x["name"] in ("validation", "saving")]
    money = None
    if rp.gpu_hour_price is not None and p.cost_epoch is not None:
        money = f"{amount(p.cost_epoch)} {rp.currency} an epoch, {amount(p.cost_run)} {rp.currency} for the run"
    energy = None
    if p.energy_epoch_kwh is not None:
        energy = f"{p.energy_epoch_kwh:.3f} kWh an epoch, {p.energy_run_kwh:.2f} kWh for the run (the steps')"
    return dict(
        epoch=duration_band(p.epoch_s, p.epoch_s_low, p.epoch_s_high),
        run=duration_band(*(None if x is None else x * 3600 for x in (p.run_h, p.run_h_low, p.run_h_high))),
        epochs=rp.epochs,
        source=rp.source,
        close_mosaic=rp.close_mosaic,
        no_mosaic=duration(p.no_mosaic_epoch_s) if p.no_mosaic_epoch_s is not None else None,
        once=duration(p.once_s) if p.once_s is not None else "n/a",
        money=money,
        price=f"{rp.gpu_hour_price:g} {rp.currency}" if rp.gpu_hour_price is not None else None,
        energy=energy,
        parts=parts,
        missing=p.parts_missing,
        measured=measured_rows(costs),
        caveats=caveats(device, world_size, costs),
    )


def table_cells(p: Optional[EpochPrediction]) -> dict:
    """The trial table's epoch, run and cost cells (sortable values)."""
    if p is None or p.epoch_s is None:
        return dict(epoch_s=None, epoch_text="n/a", run_h=None, run_text="n/a", cost_run=None)
    return dict(
        epoch_s=p.epoch_s,
        epoch_text=duration_band(p.epoch_s, p.epoch_s_low, p.epoch_s_high),
        run_h=p.run_h,
        run_text=duration(p.run_h * 3600) if p.run_h is not None else "n/a",
        cost_run=p.cost_run,
    )
