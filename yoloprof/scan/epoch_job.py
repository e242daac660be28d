"""What an epoch adds beyond its steady steps, measured once per scan per world size.

Trials stop before any epoch ends, so validation, checkpoint saving and the rest of Ultralytics'
epoch end never show in them; nor does training without mosaic (the last close_mosaic epochs) or
the run's set-up. One extra trial per world size, in the worker's "epoch" mode with the scan's
recommended settings, times them on the scan's own ranks with Ultralytics' own code, and writes
<scan>/epoch/w<N>.json (rank logs in <scan>/epoch/w<N>/). A failure is a record, never an exception:
the scan's results stand without it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import pipeline, paths
from yoloprof.analysis import aggregate, epoch_costs
from yoloprof.records import EpochCosts, RecordError, TrialResult, TrialSpec, read_json, write_json
from yoloprof.scan import launch
from yoloprof.text import error_line

# The epoch trial trains about twice a trial's steps and then validates and saves twice: a --trial-timeout
# meant for one trial gets this factor.
TIMEOUT_FACTOR = 3.0


def pick(results: list[TrialResult], best_trial_id: Optional[str], ranking_order: list[str]) -> dict[int, TrialResult]:
    """{world size: the trial whose settings to measure with}: the recommended trial where it has that world
    size, else the best-placed finished trial of it, else its first finished trial."""
    ok = [r for r in results if r.status == "ok"]
    place = {tid: i for i, tid in enumerate(ranking_order)}
    chosen = {}
    for w in sorted({r.world_size for r in ok}):
        mine = [r for r in ok if r.world_size == w]
        best = next((r for r in mine if r.trial_id == best_trial_id), None)
        chosen[w] = best or min(mine, key=lambda r: place.get(r.trial_id, len(place)))
    return chosen


def epoch_spec(spec: TrialSpec) -> TrialSpec:
    """The trial's settings in "epoch" mode: fixed steps (no stopping rule), not a repeat of anything."""
    return dataclasses.replace(
        spec, trial_id=f"epoch-w{spec.world_size}", mode="epoch", max_steps=None, precision=None, repeat_of=None
    )


def measure(spec: TrialSpec, tdir: Path, policy: launch.HangPolicy = launch.HangPolicy()) -> EpochCosts:
    """Run one "epoch" trial into tdir and aggregate it. An interrupt (Ctrl-C) propagates, as it does from the
    ceilings: run_trial has ended the trial's processes by then, and no record is written, so --resume
    measures it."""
    if tdir.exists():
        shutil.rmtree(tdir)  # an earlier, interrupted attempt
    try:
        outcome = launch.run_trial(spec, tdir, cache_dir=paths.cache_dir(), policy=policy)
        log = tdir / "launcher.log"
        outcome.rank_exitcodes = aggregate.torchrun_exitcodes(log.read_text(errors="replace") if log.exists() else "")
        write_json(tdir / pipeline.LAUNCH_FILE, outcome)
        ranks = aggregate.read_ranks(tdir)
        result = aggregate.aggregate(spec, ranks, outcome)
        return epoch_costs.build(spec, ranks, epoch_costs.read_parts(tdir), result.status, result.error)
    except Exception as exc:  # noqa: BLE001 - the scan's results stand without this record
        return EpochCosts(spec.world_size, spec.device, spec.knobs, "error", error=error_line(exc))


def run(out: Path, meta, ctx, req, console: Console) -> list[EpochCosts]:
    """Measure every world size the scan finished a trial at and has no record for; print a line each."""
    out = Path(out)
    try:
        scan = pipeline.collect(out)
    except Exception as exc:  # noqa: BLE001
        console.print(f"Epoch costs: not measured ({error_line(exc)})")
        return []
    order = [v.trial_id for v in sorted(scan.ranking.verdicts, key=lambda v: (v.position is None, v.position or 0))]
    timeout = getattr(req, "trial_timeout", None)
    policy = launch.HangPolicy(total_s=timeout * TIMEOUT_FACTOR if timeout else None)
    done = []
    for w, trial in pick(scan.results, scan.ranking.best_trial_id, order).items():
        path = epoch_costs.record_path(out, w)
        try:
            done.append(read_json(path, EpochCosts))
            continue  # measured by an earlier run of this scan (--resume)
        except (OSError, RecordError):
            pass
        try:
            spec = epoch_spec(read_json(paths.trial_dir(out, trial.trial_id) / "spec.json", TrialSpec))
        except (OSError, RecordError) as exc:
            costs = EpochCosts(
                w, trial.device, trial.knobs, "error", error=f"trial {trial.trial_id}: {error_line(exc)}"
            )
        else:
            console.print(
                f"Epoch costs ({w} rank{'s' if w != 1 else ''}): validation, saving and the epoch end with "
                f"the settings of {trial.trial_id}..."
            )
            tdir = out / epoch_costs.EPOCH_DIR / f"w{w}"
            costs = measure(spec, tdir, policy)
            for ckpt in (tdir / "ultralytics" / "weights").glob("*.pt"):
                ckpt.unlink()  # saving them was the measurement; a few steps' weights are of no use (~10 MB each)
        write_json(path, costs)
        console.print(epoch_costs.summary_line(costs))
        done.append(costs)
    return done
