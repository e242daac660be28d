"""A watched run's outputs, as pipeline.py is a scan's: the prediction it starts with, and its records ->
summary.json and run.html in RUN_DIR/yoloprof/. `yoloprof train` writes them at the end, `yoloprof report
RUN_DIR` again from the records alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from yoloprof.records import RecordError, write_json
from yoloprof.records.run import RunSummary


def is_run(folder: Path) -> bool:
    return (Path(folder) / "yoloprof" / "rank0.jsonl").exists()


def prediction(cfg: Path, world_size: int) -> tuple[dict, Optional[str]]:
    """The scan's prediction for the configuration a scan folder's best.yaml holds: (fields of RunStart, why
    there is none). Only for the world size the scan predicted."""
    folder = Path(cfg).expanduser().resolve().parent
    if not (folder / "scan.json").exists():
        return {}, None
    from yoloprof import pipeline

    try:
        out = pipeline.collect(folder)
    except (RecordError, OSError, ValueError) as exc:
        return {}, f"the scan in {folder} cannot be read ({exc})"
    best = out.best
    p = out.predictions.get(best.trial_id) if best is not None else None
    if p is None or p.epoch_s is None:
        return {}, f"the scan in {folder} predicts no epoch for its recommendation"
    if best.world_size != world_size:
        return {}, f"the scan predicted {best.world_size} ranks, this run has {world_size}: not compared"
    return {
        "predicted_epoch_s": p.epoch_s,
        "predicted_low_s": p.epoch_s_low,
        "predicted_high_s": p.epoch_s_high,
        "predicted_no_mosaic_epoch_s": p.no_mosaic_epoch_s,
        "prediction_from": f"{folder} ({best.trial_id})",
        "prediction_missing": list(p.parts_missing),
    }, None


def write(run_dir: Path) -> RunSummary:
    from yoloprof.analysis import run_drift
    from yoloprof.reports import html

    summary = run_drift.summarize(Path(run_dir))
    folder = Path(run_dir) / "yoloprof"
    write_json(folder / "summary.json", dataclasses.asdict(summary))
    (folder / "run.html").write_text(html.render_run(summary))
    return summary


def lines(summary: RunSummary) -> list[str]:
    """What the terminal shows at the end: the verdict, each drift, what telemetry was sampled, where the report is."""
    out = [f"yoloprof: {summary.verdict}"]
    out += [f"  drift at epoch {d.epoch + 1} ({d.kind.replace('_', ' ')}): {d.evidence}" for d in summary.drifts]
    out += [f"  telemetry: {line}" for line in summary.telemetry]
    out.append(f"  report: {Path(summary.run_dir) / 'yoloprof' / 'run.html'}")
    return out
