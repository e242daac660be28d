"""results.csv: one row per trial, best first; empty cells where a value was not measured.

img_per_s_ci_low/high: the trial's own 95% interval (batch means over its steps), widened to the pooled
run-to-run spread where repeats measured it. img_per_s_config*: its configuration's combined figure (the
mean of its runs) and that mean's interval, what the ranking orders by. epoch_s (95% band epoch_s_low/high),
run_h, cost_epoch, cost_run, energy_*_kwh: the training run it predicts (yoloprof.analysis.epoch; the run's
epochs and price are in scan.json run_plan); epoch_parts_missing: what those figures could not include.
batch_effective: the global batch that ran (empty: not recorded), below `batch` where the dataset, or each
rank's shard of it, holds fewer images than a batch; notes: the trial's notes, that one among them; optimizer:
the optimizer the trial ran, as its ranks built it (its spec's name where they did not record it)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from yoloprof.analysis import noise
from yoloprof.records import EpochPrediction, Ranking, RunPlan, TrialResult
from yoloprof.search import knob_table

PREDICTED = (
    "epoch_s",
    "epoch_s_low",
    "epoch_s_high",
    "run_h",
    "run_h_low",
    "run_h_high",
    "cost_epoch",
    "cost_run",
    "energy_epoch_kwh",
    "energy_run_kwh",
    "steps_s",
    "val_s",
    "save_s",
    "boundary_s",
    "no_mosaic_epoch_s",
    "once_s",
    "compile_s",
    "startup_s",
    "final_s",
)

COLUMNS = [
    "trial_id",
    "status",
    "world_size",
    "batch",
    "workers",
    "amp",
    "pin_memory",
    "cache",
    "nccl",
    "img_per_s",
    "img_per_s_ci_low",
    "img_per_s_ci_high",
    "step_ms_p50",
    "step_ms_p90",
    "data_wait_frac",
    "comm_ms_p50",
    "comm_frac",
    "peak_mem_mib",
    "gpu_util_pct",
    "bottleneck",
    "position",
    "epoch_s",
    "epoch_s_low",
    "epoch_s_high",
    "run_h",
    "run_h_low",
    "run_h_high",
    "cost_epoch",
    "cost_run",
    "img_per_s_p10",
    "img_per_s_p90",
    "comm_wait_ms_p50",
    "workers_effective",
    "accumulate",
    "rank_skew",
    "measured_steps",
    "error",
    "epoch_boundary_steps",
    "epoch_boundary_ms_p50",
    "mem_overhead_mib",
    "tied_with_best",
    "repeat_of",
    "img_per_s_config",
    "img_per_s_config_ci_low",
    "img_per_s_config_ci_high",
    "energy_epoch_kwh",
    "energy_run_kwh",
    "steps_s",
    "val_s",
    "save_s",
    "boundary_s",
    "no_mosaic_epoch_s",
    "once_s",
    # the knobs beyond the five, at the end: the first columns keep their places
    "epoch_parts_missing",
    "deterministic",
    "compile",
    "channels_last",
    "setup_s",
    "warmup_extra_s",
    "compile_s",
    # the global batch that ran where it was less than `batch` asked (a dataset smaller than a batch), and the notes
    "batch_effective",
    "notes",
    # the optimizer the trial ran, read back from its ranks (Ultralytics' auto resolved for the planned run by default)
    "optimizer",
    # once per run, measured by the epoch job: the process's start to the trainer (interpreter and imports), and the
    # end after the last epoch (final validation of best.pt, plots)
    "startup_s",
    "final_s",
]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def ordered(results: list[TrialResult], ranking: Ranking) -> list[TrialResult]:
    by_id = {r.trial_id: r for r in results}
    return [by_id[v.trial_id] for v in ranking.verdicts if v.trial_id in by_id]


def rows(
    results: list[TrialResult],
    ranking: Ranking,
    predictions: Optional[dict[str, EpochPrediction]] = None,
    run_plan: Optional[RunPlan] = None,
) -> list[dict[str, Optional[object]]]:
    predictions = predictions or {}
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    rtr = noise.run_to_run(results)
    out = []
    for r in ordered(results, ranking):
        v = verdicts[r.trial_id]
        k = r.knobs
        low, high = noise.trial_interval(r, rtr)
        out.append(
            {
                "trial_id": r.trial_id,
                "status": r.status,
                "world_size": r.world_size,
                **{name: getattr(k, name) for name in knob_table.NAMES},  # placed by COLUMNS
                "setup_s": r.setup_s,
                "warmup_extra_s": r.warmup_extra_s,
                "img_per_s": r.img_per_s,
                "img_per_s_ci_low": low,
                "img_per_s_ci_high": high,
                "step_ms_p50": r.step_ms_p50,
                "step_ms_p90": r.step_ms_p90,
                "data_wait_frac": r.data_wait_frac,
                "comm_ms_p50": r.comm_ms_p50,
                "comm_frac": r.comm_frac,
                "peak_mem_mib": r.peak_mem_mib,
                "gpu_util_pct": r.gpu_util_pct,
                "bottleneck": v.bottleneck,
                "position": v.position,
                "img_per_s_p10": r.img_per_s_p10,
                "img_per_s_p90": r.img_per_s_p90,
                "comm_wait_ms_p50": r.comm_wait_ms_p50,
                "workers_effective": r.workers_effective,
                "accumulate": r.accumulate,
                "rank_skew": r.rank_skew,
                "measured_steps": r.measured_steps,
                "error": r.error,
                "epoch_boundary_steps": r.epoch_boundary_steps,
                "epoch_boundary_ms_p50": r.epoch_boundary_ms_p50,
                "mem_overhead_mib": r.mem_overhead_mib,
                "tied_with_best": v.tied_with_best if v.position is not None else None,
                "repeat_of": v.repeat_of,
                "img_per_s_config": v.img_per_s,
                "img_per_s_config_ci_low": v.img_per_s_ci_low,
                "img_per_s_config_ci_high": v.img_per_s_ci_high,
                "batch_effective": r.batch_effective,
                "notes": "; ".join(r.notes) or None,
                "optimizer": r.optimizer,
            }
        )
        p = predictions.get(r.trial_id) or EpochPrediction(r.trial_id)
        out[-1].update({k: getattr(p, k) for k in PREDICTED})
        out[-1]["epoch_parts_missing"] = "; ".join(p.parts_missing) or None
    return out


def render(
    results: list[TrialResult],
    ranking: Ranking,
    predictions: Optional[dict[str, EpochPrediction]] = None,
    run_plan: Optional[RunPlan] = None,
) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(results, ranking, predictions, run_plan):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def write(
    path: Path,
    results: list[TrialResult],
    ranking: Ranking,
    predictions: Optional[dict[str, EpochPrediction]] = None,
    run_plan: Optional[RunPlan] = None,
) -> None:
    Path(path).write_text(render(results, ranking, predictions, run_plan))
