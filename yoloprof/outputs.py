"""Scan folder -> every output (results.csv, ranking.json, report.html, best.*), from records only.

`yoloprof scan` calls this when its trials end and `yoloprof report DIR` calls it on a saved
folder, so both produce the same files and neither needs the hardware.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from yoloprof import aggregate, against
from yoloprof.errors import UsageError
from yoloprof.paths import SCAN_MARKER, trial_dir
from yoloprof.telemetry import read_telemetry
from yoloprof.ranking import headline, rank_trials
from yoloprof.records import SCHEMA_VERSION, Ranking, RecordError, ScanMeta, TrialResult, TrialSpec, read_json, write_json

LAUNCH_FILE = "launch.json"
TELEMETRY_FILE = "telemetry.jsonl"  # written by probes.telemetry (yoloprof.launch.TELEMETRY_FILE)
RESULT_FILE = "result.json"


@dataclass
class ScanOutputs:
    meta: ScanMeta
    results: list[TrialResult]
    ranking: Ranking
    headline: str
    best: Optional[TrialResult]
    missing: list[str]  # planned trials with no result yet
    ceilings: against.Ceilings


def load_meta(scan_dir: Path) -> ScanMeta:
    path = Path(scan_dir) / SCAN_MARKER
    if not Path(scan_dir).is_dir():
        raise UsageError(f"{scan_dir} is not a folder; give the folder a scan wrote (e.g. runs/yoloprof/scan-1)")
    if not path.is_file():
        raise UsageError(f"{scan_dir} holds no {SCAN_MARKER}: it is not a yoloprof scan folder")
    try:
        raw = read_json(path)
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_VERSION:
        found = raw.get("schema") if isinstance(raw, dict) else None
        raise UsageError(
            f"{path} has record schema {found!r}, this yoloprof reads schema {SCHEMA_VERSION}; "
            "re-run the scan, or use the yoloprof version that wrote it"
        )
    try:
        return read_json(path, ScanMeta)
    except RecordError as exc:
        raise UsageError(f"{path}: {exc}") from None


def trial_result(scan_dir: Path, trial_id: str) -> Optional[TrialResult]:
    """The trial's result, re-aggregated from its rank records when they are there."""
    tdir = trial_dir(scan_dir, trial_id)
    try:
        if (tdir / LAUNCH_FILE).is_file() and (tdir / "spec.json").is_file():
            spec = read_json(tdir / "spec.json", TrialSpec)
            outcome = read_json(tdir / LAUNCH_FILE, aggregate.LaunchOutcome)
            telemetry = read_telemetry(tdir / TELEMETRY_FILE) if (tdir / TELEMETRY_FILE).is_file() else None
            result = aggregate.aggregate(spec, aggregate.read_ranks(tdir), outcome, telemetry)
            saved = read_json(tdir / RESULT_FILE, TrialResult) if (tdir / RESULT_FILE).is_file() else None
            if saved is not None:  # facts only the scan knew when the trial ended
                result.stderr_tail, result.notes = saved.stderr_tail, saved.notes
                result.gpu_util_pct = result.gpu_util_pct if result.gpu_util_pct is not None else saved.gpu_util_pct
            return result
        if (tdir / RESULT_FILE).is_file():
            return read_json(tdir / RESULT_FILE, TrialResult)
    except RecordError as exc:
        raise UsageError(f"trial {trial_id}: {exc}") from None
    return None


def collect(scan_dir: Path) -> ScanOutputs:
    meta = load_meta(scan_dir)
    results, missing = [], []
    for tid in meta.trial_ids:
        r = trial_result(scan_dir, tid)
        (results.append(r) if r is not None else missing.append(tid))
    ranking = rank_trials(results)
    best = next((r for r in results if r.trial_id == ranking.best_trial_id), None)
    ceilings = against.load(Path(scan_dir) / "ceilings")
    return ScanOutputs(meta, results, ranking, headline(results, ranking), best, missing, ceilings)


def write_all(scan_dir: Path) -> ScanOutputs:
    from reports import config_files, csv_table, html

    scan_dir = Path(scan_dir)
    out = collect(scan_dir)
    csv_table.write(scan_dir / "results.csv", out.results, out.ranking)
    write_json(scan_dir / "ranking.json", dataclasses.asdict(out.ranking))
    best_cfg = None
    if out.best is not None:
        best_cfg = config_files.write(scan_dir, out.meta, out.best)
    else:
        for name in ("best.yaml", "best.env", "best.sh"):
            (scan_dir / name).unlink(missing_ok=True)
    page = html.render(out, best_cfg, title=str(scan_dir))
    (scan_dir / "report.html").write_text(page)
    return out
