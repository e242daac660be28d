"""Scan folder -> every output (results.csv, ranking.json, report.html, best.*), from records only.

`yoloprof scan` calls this when its trials end and `yoloprof report DIR` calls it on a saved
folder, so both produce the same files and neither needs the hardware.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from yoloprof.analysis import aggregate, headroom, dataset_fit, epoch, epoch_costs, tradeoffs
from yoloprof.errors import UsageError
from yoloprof.paths import SCAN_MARKER, trial_dir
from yoloprof.analysis.telemetry import read_telemetry
from yoloprof.text import strip_ansi
from yoloprof.analysis.ranking import headline, rank_trials
from yoloprof.records import (
    SCHEMA_VERSION,
    EpochCosts,
    EpochPrediction,
    Ranking,
    RecordError,
    RunPlan,
    ScanMeta,
    TrialResult,
    TrialSpec,
    read_json,
    write_json,
)

LAUNCH_FILE = "launch.json"
TELEMETRY_FILE = "telemetry.jsonl"  # written by probes.telemetry (yoloprof.scan.launch.TELEMETRY_FILE)
RESULT_FILE = "result.json"


@dataclass
class ScanOutputs:
    meta: ScanMeta
    results: list[TrialResult]
    ranking: Ranking
    headline: str
    best: Optional[TrialResult]
    missing: list[str]  # planned trials with no result yet
    ceilings: headroom.Ceilings
    epoch_costs: dict[int, EpochCosts] = dataclasses.field(default_factory=dict)  # by world size
    predictions: dict[str, EpochPrediction] = dataclasses.field(default_factory=dict)  # by trial id
    dataset_fit: Optional[dataset_fit.DatasetFit] = None  # whether an epoch's files fit in the memory the scan recorded
    memory_line: Optional[str] = None  # the verdict's sentence on it


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
            if saved is not None:  # facts only the scan knew when the trial ended, then what the records say now
                result.stderr_tail = saved.stderr_tail
                result.notes = saved.notes + [n for n in result.notes if n not in saved.notes]
                result.gpu_util_pct = result.gpu_util_pct if result.gpu_util_pct is not None else saved.gpu_util_pct
            return result
        if (tdir / RESULT_FILE).is_file():
            result = read_json(tdir / RESULT_FILE, TrialResult)
            result.error = strip_ansi(result.error)  # records written before errors were cleaned
            return result
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
    ceilings = headroom.load(Path(scan_dir) / "ceilings")
    costs = epoch_costs.load(scan_dir)
    fit = dataset_fit.decide(meta.dataset, meta.memory, meta.imgsz, meta.world_size)
    cold = dataset_fit.caps(results, fit, ceilings.loader)
    predictions = epoch.predict_all(results, costs, meta.dataset, meta.run_plan, ranking, cold)
    swap = tradeoffs.short_run_swap(ranking, results, predictions)
    if swap is not None:  # compile's start-up is not won back in the planned run
        ranking.best_trial_id = ranking.recommended_trial_id = swap[0]
        ranking.recommendation_reason = f"{ranking.recommendation_reason}; {swap[1]}"
        best = next(r for r in results if r.trial_id == swap[0])
    lead = epoch.one_line(predictions[best.trial_id], meta.run_plan.epochs) if best is not None else None
    text = headline(results, ranking, meta.baselines, lead)
    memory = dataset_fit.line(fit, best, ceilings.loader, predictions.get(best.trial_id) if best else None)
    return ScanOutputs(meta, results, ranking, text, best, missing, ceilings, costs, predictions, fit, memory)


def replan(
    scan_dir: Path, epochs: Optional[int] = None, price: Optional[float] = None, currency: Optional[str] = None
) -> Optional[RunPlan]:
    """`yoloprof report DIR --epochs/--gpu-hour-price/--currency`: the run to predict, changed in scan.json
    so every output, now and rebuilt later, prices the same run. Nothing measured changes."""
    if epochs is None and price is None and currency is None:
        return None
    meta = load_meta(scan_dir)
    fresh = epoch.plan_run(None, epochs, price, currency)
    rp = meta.run_plan
    if epochs is not None:
        rp.epochs, rp.source = fresh.epochs, "--epochs"
    if price is not None:
        rp.gpu_hour_price = fresh.gpu_hour_price
    if currency is not None:
        rp.currency = fresh.currency
    write_json(Path(scan_dir) / SCAN_MARKER, meta)
    return rp


def write_all(scan_dir: Path) -> ScanOutputs:
    from yoloprof.reports import config_files, csv_table, html

    scan_dir = Path(scan_dir)
    out = collect(scan_dir)
    csv_table.write(scan_dir / "results.csv", out.results, out.ranking, out.predictions, out.meta.run_plan)
    write_json(scan_dir / "ranking.json", dataclasses.asdict(out.ranking))
    best_cfg = None
    if out.best is not None:
        best_cfg = config_files.write(scan_dir, out.meta, out.best, out.results)
    else:
        for name in ("best.yaml", "best.env", "best.sh"):
            (scan_dir / name).unlink(missing_ok=True)
    ok = [v.trial_id for v in out.ranking.verdicts if v.position is not None]
    timelines = [timeline(scan_dir, tid) for tid in dict.fromkeys(ok[:1] + ok[-1:])]
    page = html.render(out, best_cfg, title=str(scan_dir), timelines=timelines)
    (scan_dir / "report.html").write_text(page)
    return out


@dataclass
class Timeline:
    """One trial's measured steps and telemetry on one time axis (seconds from the first measured step)."""

    trial_id: str
    step_t_s: list[float]  # end of each measured step, rank 0
    data_wait_ms: list[float]
    step_ms: list[float]
    util_t_s: list[float]  # telemetry sample times
    util_pct: list[float]  # GPU SM utilisation (mean over GPUs), or CPU utilisation where no GPU was sampled
    util_source: str  # "GPU" | "CPU"
    gpu_status: str


def timeline(scan_dir: Path, trial_id: str) -> Optional[Timeline]:
    tdir = trial_dir(scan_dir, trial_id)
    ranks = aggregate.read_ranks(tdir)
    window = aggregate.measured_window(ranks)
    if not ranks or window is None:
        return None
    t0, t1 = window
    steps = [s for s in ranks[0].steps if not s.warmup]
    header, gpu, cpu, _ = read_telemetry(tdir / TELEMETRY_FILE)
    by_t: dict[float, list[float]] = {}
    for g in gpu:
        if t0 <= g.t_s <= t1 and g.sm_util_pct is not None:
            by_t.setdefault(g.t_s, []).append(g.sm_util_pct)
    if by_t:
        ts = sorted(by_t)
        util, source = [sum(by_t[t]) / len(by_t[t]) for t in ts], "GPU"
    else:
        c = [x for x in cpu if t0 <= x.t_s <= t1 and x.cpu_pct_per_core]
        ts = [x.t_s for x in c]
        util, source = [sum(x.cpu_pct_per_core) / len(x.cpu_pct_per_core) for x in c], "CPU"
    return Timeline(
        trial_id=trial_id,
        step_t_s=[s.t_end_s - t0 for s in steps],
        data_wait_ms=[s.data_wait_ms for s in steps],
        step_ms=[s.step_ms for s in steps],
        util_t_s=[t - t0 for t in ts],
        util_pct=util,
        util_source=source,
        gpu_status=header.gpu_status if header else "not measured: no telemetry file",
    )
