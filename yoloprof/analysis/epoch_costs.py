"""Rank records of an "epoch" trial -> EpochCosts; reading <scan>/epoch/w<N>.json. Pure: no torch.

The worker (yoloprof.worker.trainer, mode "epoch") trains with mosaic, closes mosaic the way Ultralytics
does and trains on, then times Ultralytics' own epoch end part by part, each part between barriers.
Here every figure becomes the slowest rank's, and the step records give the two figures that steps
carry: the price of an epoch's first step and the throughput without mosaic over with it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

from yoloprof.analysis import intervals
from yoloprof.analysis.stats import median
from yoloprof.records import EpochCosts, EpochPart, RankRecords, RecordError, TrialSpec, from_dict, read_json
from yoloprof.records.epoch import RankEpochParts

EPOCH_DIR = "epoch"


def record_path(out: Path, world_size: int) -> Path:
    return Path(out) / EPOCH_DIR / f"w{world_size}.json"


def load(out: Path) -> dict[int, EpochCosts]:
    """{world size: EpochCosts} of a scan folder, rebuilt from the epoch job's rank records where they are there
    (as a trial's result is: `yoloprof report` recomputes from records), else as saved; an unreadable record
    counts as not measured."""
    found = {}
    for path in sorted((Path(out) / EPOCH_DIR).glob("w*.json")):
        m = re.fullmatch(r"w(\d+)\.json", path.name)
        if not m:
            continue
        try:
            found[int(m.group(1))] = rebuild(path.with_suffix("")) or read_json(path, EpochCosts)
        except (RecordError, OSError):
            continue
    return found


def rebuild(tdir: Path) -> Optional[EpochCosts]:
    """The epoch job's EpochCosts from its folder's spec, launch outcome and rank records; None without them."""
    from yoloprof.analysis import aggregate

    if not ((tdir / "spec.json").is_file() and (tdir / "launch.json").is_file()):
        return None
    try:
        spec = read_json(tdir / "spec.json", TrialSpec)
        outcome = read_json(tdir / "launch.json", aggregate.LaunchOutcome)
        ranks = aggregate.read_ranks(tdir)
    except (RecordError, OSError):
        return None
    result = aggregate.aggregate(spec, ranks, outcome)
    return build(spec, ranks, read_parts(tdir), result.status, result.error)


def read_parts(trial_dir: Path) -> list[RankEpochParts]:
    """The "epoch_parts" line of every rank file, by rank."""
    parts = []
    for path in sorted(Path(trial_dir).glob("rank*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed process
            if obj.pop("kind", None) == "epoch_parts":
                parts.append(from_dict(RankEpochParts, obj))
    return sorted(parts, key=lambda p: p.rank)


def _slowest(parts: list[RankEpochParts], name: str) -> list[float]:
    """Per pass, the largest of the ranks' seconds (passes every rank finished)."""
    series = [getattr(p, name) for p in parts]
    return [max(s[i] for s in series) for i in range(min(len(s) for s in series))] if series else []


def validation(parts: list[RankEpochParts]) -> tuple[list[float], int, int]:
    """(seconds per pass for the whole split, images timed, images in the split).

    Where the loader was capped, the batch loop (loading, inference, loss, NMS, metric updates: the work
    that grows with images) is scaled by images in the split / images timed; the rest of the pass (EMA
    broadcast, gathering the ranks' statistics, mAP) is kept as measured, since it is paid once per
    validation and scaling it would count it many times over. Uncapped, the pass is the measurement."""
    total = max(p.val_images_total for p in parts)
    passes, loops = _slowest(parts, "val_s"), _slowest(parts, "val_loop_s")
    images = [sum(p.val_images[i] for p in parts) for i in range(len(passes))]
    if not any(p.val_capped for p in parts):
        return passes, total, total
    out = [s + loop * max(total / n - 1.0, 0.0) if n else s for s, loop, n in zip(passes, loops, images)]
    return out, min(min(images, default=0), total), total


def final(parts: list[RankEpochParts]) -> Optional[float]:
    """The run's end after its last epoch (final_eval and plots), the slowest rank's; its validation's batch loop
    scaled to the whole split as `validation` scales a pass. None where a rank did not time it."""
    if not parts or any(p.final_s is None for p in parts):
        return None
    total = max(p.val_images_total for p in parts)
    slowest = max(parts, key=lambda p: p.final_s)
    images = sum(p.final_val_images or 0 for p in parts)
    if not any(p.val_capped for p in parts) or not images:
        return slowest.final_s
    return slowest.final_s + (slowest.final_val_loop_s or 0.0) * max(total / images - 1.0, 0.0)


def _steady(ranks: list[RankRecords], mosaic: bool) -> tuple[dict[int, list], dict[int, list]]:
    """Measured steps of one phase that every rank recorded: (steady steps, steps that start an epoch)."""
    per_rank = [{s.step: s for s in r.steps if not s.warmup and s.mosaic == mosaic} for r in ranks]
    common = set.intersection(*(set(d) for d in per_rank)) if per_rank else set()
    groups = {k: [d[k] for d in per_rank] for k in sorted(common)}
    steady = {k: g for k, g in groups.items() if not any(s.epoch_boundary for s in g)}
    return steady, {k: g for k, g in groups.items() if k not in steady}


def _rate(steady: dict[int, list]) -> Optional[intervals.Interval]:
    """img/s of a phase: all ranks' images over the slowest rank's step, batch-means interval."""
    groups = list(steady.values())
    return intervals.throughput([sum(s.images for s in g) for g in groups], [max(s.step_ms for s in g) for g in groups])


def no_mosaic_ratio(ranks: list[RankRecords]) -> tuple[Optional[float], Optional[list[float]], Optional[str]]:
    """(ratio, [low, high], why there is no interval): steady img/s without mosaic over with it.

    Each phase has its own 95% batch-means interval (yoloprof.analysis.intervals.throughput); the ratio's
    interval is conservative, the ratio of opposite bounds [off.low / on.high, off.high / on.low], as if both
    phases sat at their worst ends at once: at least 95% coverage, without assuming anything of the pair."""
    on, off = _rate(_steady(ranks, True)[0]), _rate(_steady(ranks, False)[0])
    if on is None or off is None or not on.estimate:
        return None, None, "the steps with and without mosaic were not both measured on every rank"
    ratio = off.estimate / on.estimate
    if not (math.isfinite(on.high) and math.isfinite(off.high)) or on.low <= 0 or off.low <= 0:
        return ratio, None, f"too few steady steps for an interval of the mosaic ratio ({on.method}; {off.method})"
    return ratio, [off.low / on.high, off.high / on.low], None


def priced_ratio(ratio: Optional[float], ci: Optional[list[float]]) -> Optional[float]:
    """The no-mosaic ratio a prediction prices with: 1 where its interval holds 1 (a difference inside the noise
    is no measurable effect: 20 steps a phase on a noisy machine read anywhere from x0.86 to x1.15 while plain
    training's own no-mosaic steps ran at its mosaic steps' speed, benchmarks/drift.py --kinds plain,closed),
    else the measured ratio."""
    if ratio is None:
        return None
    return 1.0 if ci and ci[0] <= 1.0 <= ci[1] else ratio


def ratio_text(ratio: float, ci: Optional[list[float]]) -> str:
    """ "x0.86 img/s (0.74-1.00, no measurable effect)" as the terminal and the report say it."""
    inside = priced_ratio(ratio, ci) == 1.0 and ratio != 1.0
    bounds = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else ""
    note = ", no measurable effect" if inside else ""
    return f"x{ratio:.2f} img/s" + (f" ({bounds}{note})" if bounds else "")


def boundary_ms(ranks: list[RankRecords]) -> tuple[Optional[float], int]:
    """(ms, epochs crossed): what the first step of an epoch costs beyond a steady step of the same phase,
    median over the epochs crossed. Its epoch_end_ms (the previous epoch's end, timed as `end` here) is left
    out; what is left is the new epoch's start: scheduler, sampler reshuffle, the loader's next pass. The
    raw figure may come out below 0 (a quick first step within the steps' noise)."""
    costs = []
    for mosaic in (True, False):
        steady, starts = _steady(ranks, mosaic)
        if not steady:
            continue
        typical = median(max(s.step_ms for s in g) for g in steady.values())
        costs += [max(s.step_ms - (s.epoch_end_ms or 0.0) for s in g) - typical for g in starts.values()]
    return (median(costs) if costs else None), len(costs)


def build(
    spec: TrialSpec, ranks: list[RankRecords], parts: list[RankEpochParts], status: str, error: Optional[str] = None
) -> EpochCosts:
    """The EpochCosts of one "epoch" trial; status/error: the trial's (yoloprof.analysis.aggregate)."""
    costs = EpochCosts(world_size=spec.world_size, device=spec.device, knobs=spec.knobs, status=status, error=error)
    if status != "ok":
        return costs
    missing = sorted(set(range(spec.world_size)) - {p.rank for p in parts})
    if missing or not parts:
        costs.status, costs.error = "error", f"rank {missing[0] if missing else 0} wrote no epoch-end timings"
        return costs
    setups = [p.setup_s for p in parts if p.setup_s is not None]
    costs.setup_s = max(setups) if setups else None
    startups = [p.startup_s for p in parts if p.startup_s is not None]
    costs.startup_s = max(startups) if len(startups) == len(parts) else None  # a rank without one: unknown
    costs.final_s, costs.final_plots = final(parts), next((p.final_plots for p in parts), None)
    costs.end, costs.save = EpochPart(_slowest(parts, "end_s")), EpochPart(_slowest(parts, "save_s"))
    val_s, costs.val_images_timed, costs.val_images_total = validation(parts)
    costs.val = EpochPart(val_s)
    if any(p.val_capped for p in parts):
        costs.notes.append(
            f"Validation was timed over {costs.val_images_timed} of {costs.val_images_total} images per pass "
            f"({max(p.val_batches for p in parts)} batch(es) per rank); its batch loop was scaled to the whole "
            "split, the once-per-validation rest (gathering, mAP) was kept as measured."
        )
    raw, crossed = boundary_ms(ranks)
    costs.boundary_ms = None if raw is None else max(raw, 0.0)
    if raw is not None and raw < 0:
        costs.notes.append(
            f"The first step of an epoch was no slower than a steady one ({raw:+.0f} ms, median of "
            f"{crossed}): it is priced at 0."
        )
    if costs.boundary_ms is None:
        nb = next((r.info.batches_per_epoch for r in ranks if r.info is not None), None)
        costs.notes.append(
            f"The measured steps crossed no epoch boundary ({nb} batches per epoch per rank): the "
            "first step of an epoch was not priced beyond a steady step."
        )
    costs.no_mosaic_ratio, costs.no_mosaic_ratio_ci, why = no_mosaic_ratio(ranks)
    if why:
        costs.notes.append(why[0].upper() + why[1:] + ".")
    return costs


def _s(part: EpochPart) -> str:
    return "n/a" if part.estimate is None else f"{part.estimate:.2f} s"


def summary_line(c: EpochCosts) -> str:
    """One console line per world size."""
    head = f"Epoch costs ({c.world_size} rank{'s' if c.world_size != 1 else ''})"
    if c.status != "ok":
        return f"{head}: not measured ({c.status}): {c.error or 'no reason recorded'}"
    parts = [
        f"validation {_s(c.val)} ({c.val_images_timed} of {c.val_images_total} images)",
        f"saving {_s(c.save)}",
        f"epoch end {_s(c.end)}",
    ]
    if c.startup_s is not None:
        parts.append(f"start-up {c.startup_s:.1f} s")
    if c.final_s is not None:
        parts.append(f"the run's end {c.final_s:.1f} s" + (" (with plots)" if c.final_plots else ""))
    if c.setup_s is not None:
        parts.append(f"set-up {c.setup_s:.1f} s")
    if c.boundary_ms is not None:
        parts.append(f"first step of an epoch +{c.boundary_ms:.0f} ms")
    if c.no_mosaic_ratio is not None:
        parts.append("without mosaic " + ratio_text(c.no_mosaic_ratio, c.no_mosaic_ratio_ci))
    return f"{head}: " + ", ".join(parts)
