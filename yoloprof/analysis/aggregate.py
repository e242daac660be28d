"""Rank records -> TrialResult. Pure: reads JSON lines, imports no torch.

Conventions: only measured (non-warmup) steps count, and only step indices that every rank
reported; a step that starts an epoch carries the previous epoch's end (validation off, still
metrics, broadcasts and memory clean-up) and is left out of the steady state, its extra cost kept
on its own; a step's duration is its slowest rank's (the ranks wait for each other in AllReduce);
phase times are means per step (so they add up to the mean step), the headline step time is a
median with p90 beside it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from yoloprof.records import (
    Breakdown,
    RankEnd,
    RankInfo,
    RankRecords,
    RankStat,
    StepSample,
    TrialResult,
    TrialSpec,
    batch_that_runs,
    capped_batch_note,
    from_dict,
)
from yoloprof.analysis import intervals
from yoloprof.analysis.stats import mean, median, quantile
from yoloprof.analysis.telemetry import summarize
from yoloprof.text import strip_ansi

PHASES = ("data_wait_ms", "h2d_ms", "forward_ms", "backward_ms", "comm_wait_ms", "optimizer_ms", "other_ms")
# A rank SIGKILLed while free RAM fell below this share of what was free during the trial was
# taken by the kernel's OOM killer (its log is not readable here; the telemetry is the evidence).
OOM_KILL_FREE_FRAC = 0.05


@dataclass
class LaunchOutcome:
    """What the launcher saw of a trial's processes."""

    returncode: Optional[int]
    timed_out: bool = False
    interrupted: bool = False
    wall_s: Optional[float] = None
    rank_exitcodes: Optional[dict] = None
    timeout_reason: Optional[str] = None
    release_s: Optional[float] = None  # from the kill until processes and GPU memory were gone
    release_note: Optional[str] = None  # what still held on when the wait ran out
    node_failure: Optional[str] = None  # several nodes: one was lost or could not launch (its cause, not a rank's)
    node_lost: bool = False  # that node is gone: the scan stops, and --resume runs the trial again


def read_rank_file(path: Path) -> RankRecords:
    rank = int(re.sub(r"\D", "", path.stem) or 0)
    info, end, steps = None, None, []
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed process
        kind = obj.pop("kind", None)
        if kind == "info":
            info = from_dict(RankInfo, obj)
        elif kind == "step":
            steps.append(from_dict(StepSample, obj))
        elif kind == "end":
            end = from_dict(RankEnd, obj)
    return RankRecords(rank, info, steps, end)


def read_ranks(trial_dir: Path) -> list[RankRecords]:
    files = sorted(Path(trial_dir).glob("rank*.jsonl"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    return [read_rank_file(p) for p in files]


def log_tail(path: Path, lines: int = 15) -> list[str]:
    """Last lines of a log, with progress-bar redraws and colour codes removed."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    out = []
    for raw in text.splitlines():
        line = strip_ansi(raw.split("\r")[-1]).rstrip()
        if line.strip():
            out.append(line)
    return out[-lines:]


_TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank[^)]*\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def torchrun_exitcodes(log_text: str) -> dict[int, int]:
    """Per-rank exit codes from torchrun's failure summary (a negative code is the signal)."""
    return {int(r): int(c) for r, c in _TORCHRUN_FAILURE.findall(log_text)}


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (the kernel's OOM killer sends it too)" if name == "SIGKILL" else "")
    return f"exit code {code}"


def _status(spec: TrialSpec, ranks: list[RankRecords], outcome: LaunchOutcome) -> tuple[str, Optional[str]]:
    if outcome.interrupted:
        return "interrupted", "the scan was interrupted while this trial ran"
    if outcome.node_failure:  # the ranks of the other nodes then fail on a broken collective: not the cause
        return ("interrupted" if outcome.node_lost else "error"), outcome.node_failure
    if outcome.timed_out:
        reached = ", ".join(
            f"rank {r.rank} last finished step {r.steps[-1].step if r.steps else 'none'}" for r in ranks
        )
        why = outcome.timeout_reason or f"after {outcome.wall_s:.0f} s"
        return "timeout", f"hung: {why}; {reached or 'no rank started'}"
    ends = [r.end for r in ranks if r.end is not None]
    for end in ends:
        if end.status == "oom":
            return "oom", strip_ansi(end.error)
    failed = sorted((e for e in ends if e.status != "ok"), key=lambda e: e.t_end_s or float("inf"))
    if failed:  # the first rank to fail is the cause; the others fail because a peer left the collective
        return "error", strip_ansi(failed[0].error)
    missing = sorted(set(range(spec.world_size)) - {r.rank for r in ranks if r.end is not None})
    if missing:
        codes = {int(k): v for k, v in (outcome.rank_exitcodes or {}).items()}
        # torchrun SIGTERMs the surviving ranks once one fails: those are consequences, not the cause
        causes = [m for m in missing if codes.get(m) != -15] or missing
        detail = ", ".join(
            f"rank {m} " + (_describe_exit(codes[m]) if m in codes else "ended without a record") for m in causes
        )
        if len(causes) < len(missing):
            detail += "; torchrun then stopped the other ranks"
        return "error", detail
    if outcome.returncode not in (0, None):
        return "error", f"torchrun exited with code {outcome.returncode}"
    return "ok", None


def _common_measured(ranks: list[RankRecords]) -> tuple[dict[int, list[StepSample]], dict[int, list[StepSample]]]:
    """Measured steps every rank recorded, split into the steady state and the steps that start an epoch."""
    per_rank = [{s.step: s for s in r.steps if not s.warmup} for r in ranks]
    common = set.intersection(*(set(d) for d in per_rank)) if per_rank else set()
    steps = {k: [d[k] for d in per_rank] for k in sorted(common)}
    steady = {k: g for k, g in steps.items() if not any(s.epoch_boundary for s in g)}
    return steady, {k: g for k, g in steps.items() if k not in steady}


def _boundary_cost(result: TrialResult, steady: dict, boundary: dict) -> None:
    """What starting an epoch costs on top of a steady step: the epoch-time prediction needs it."""
    result.epoch_boundary_steps = len(boundary)
    ends = [
        max(s.epoch_end_ms for s in g if s.epoch_end_ms is not None)
        for g in boundary.values()
        if any(s.epoch_end_ms is not None for s in g)
    ]
    result.epoch_end_ms_p50 = median(ends) if ends else None
    if boundary and steady:
        typical = median(max(s.step_ms for s in g) for g in steady.values())
        result.epoch_boundary_ms_p50 = median(max(s.step_ms for s in g) for g in boundary.values()) - typical


def _rank_stat(rank: RankRecords, steps: list[StepSample]) -> RankStat:
    busy = [s.step_ms - s.data_wait_ms - (s.comm_wait_ms or 0.0) for s in steps]
    breakdown = Breakdown(**{p: mean(getattr(s, p) for s in steps) for p in PHASES + ("step_ms",)})
    return RankStat(
        rank=rank.rank,
        step_ms_p50=median(s.step_ms for s in steps),
        busy_ms_p50=median(busy),
        data_wait_ms_p50=median(s.data_wait_ms for s in steps),
        comm_wait_ms_p50=median(s.comm_wait_ms for s in steps),
        peak_mem_mib=rank.end.peak_mem_mib if rank.end else None,
        breakdown=breakdown,
    )


def rank_skew(per_rank: list[list[StepSample]]) -> tuple[Optional[float], Optional[int], Optional[int]]:
    """(skew, slow rank index, fast rank index): how much more one rank works than another, step by
    step: the largest median over steps of their difference in own work (step minus waits), over the
    other's median. Paired per step, so noise that slows every rank at once cancels, and two ranks
    that take turns being slower are no straggler; one that is slower in most steps is."""
    if len(per_rank) < 2:
        return None, None, None
    busy = [[s.step_ms - s.data_wait_ms - (s.comm_wait_ms or 0.0) for s in steps] for steps in per_rank]
    meds = [median(b) for b in busy]
    best = (None, None, None)
    for i, mine in enumerate(busy):
        for j, theirs in enumerate(busy):
            if i == j or not meds[j] or meds[j] <= 0:
                continue
            skew = median(a - b for a, b in zip(mine, theirs)) / meds[j]
            if best[0] is None or skew > best[0]:
                best = (skew, i, j)
    return best


def _frac(steps: list[StepSample], field: str) -> Optional[float]:
    total = sum(s.step_ms for s in steps)
    parts = [getattr(s, field) for s in steps]
    if not total or any(p is None for p in parts):
        return None
    return sum(parts) / total


def _throughput_interval(result: TrialResult, images: list[float], step_ms: list[float]) -> None:
    """The 95% batch-means interval of img_per_s over the steps in order (the global rate per step: every
    rank's images over the slowest rank's step). The interval's relative bounds are carried over to the point
    estimate img_per_s (images over the slowest rank's total time), which differs from the per-step form by
    the ranks' drift only."""
    iv = intervals.throughput(images, step_ms)
    if iv is None:
        return
    result.img_per_s_ci_method = iv.method
    if not math.isfinite(iv.high) or not iv.estimate or not result.img_per_s:
        return  # too few steps: no interval, and the method says so
    scale = result.img_per_s / iv.estimate
    result.img_per_s_ci_low, result.img_per_s_ci_high = iv.low * scale, iv.high * scale


def _frac_interval(per_rank: list[list[StepSample]], field: str) -> Optional[list[float]]:
    """[low, high] of a share of the step: each rank's batch-means interval, median rank's bounds (as the
    share itself is the median rank's). None where a part was not measured or too few steps."""
    ivs = []
    for steps in per_rank:
        iv = intervals.fraction([getattr(s, field) for s in steps], [s.step_ms for s in steps])
        if iv is None or iv.method.startswith("no interval"):
            return None
        ivs.append(iv)
    if not ivs:
        return None
    return [median(iv.low for iv in ivs), median(iv.high for iv in ivs)]


def warmup_extra(ranks: list[RankRecords]) -> tuple[Optional[float], int]:
    """(seconds, warm-up steps): what the warm-up steps took beyond as many steady steps, slowest rank.

    A run pays it once, on its first steps: torch.compile compiles there, cuDNN picks its algorithms.
    None where a rank has no warm-up or no measured step to compare with."""
    extra, n = [], 0
    for r in ranks:
        warm = [s.step_ms for s in r.steps if s.warmup]
        steady = [s.step_ms for s in r.steps if not s.warmup]
        if not warm or not steady:
            return None, 0
        extra.append((sum(warm) - len(warm) * median(steady)) / 1e3)
        n = len(warm)
    return (max(extra), n) if extra else (None, 0)


def measured_window(ranks: list[RankRecords]) -> Optional[tuple[float, float]]:
    """Wall-clock start and end of the measured steps (all ranks), for lining telemetry up with them."""
    starts, ends = [], []
    for r in ranks:
        measured = [s for s in r.steps if not s.warmup]
        if not measured:
            continue
        starts.append(measured[0].t_end_s - measured[0].step_ms / 1e3)
        ends.append(measured[-1].t_end_s)
    return (min(starts), max(ends)) if starts else None


def _local_gpu(spec: TrialSpec, r: RankRecords) -> Optional[int]:
    """The GPU of a rank on the node whose telemetry the scan holds (node 0), or None for another node's
    rank. The local rank indexes the node's GPU list; old records without it read the rank as local."""
    info = r.info
    if spec.nnodes > 1 and (info is None or info.node is None or info.node != 0):
        return None
    local = info.local_rank if info is not None else r.rank
    return spec.gpus[local] if 0 <= local < len(spec.gpus) else None


def mem_overhead(
    spec: TrialSpec,
    ranks: list[RankRecords],
    gpu_samples: list,
    bucket_sizes_bytes: list[int],
    before_mib: Optional[dict[int, float]] = None,
) -> Optional[float]:
    """Device memory a rank holds beyond its allocator's reserved peak, worst rank, in MiB.

    NVML's used memory on the rank's GPU, less what was used there before the launch started (the
    telemetry header's reading: for a pool's later trials, before the pool launched, since by then its
    ranks hold their context and NCCL's buffers; records without it: the trial's smallest reading), minus
    the caching allocator's reserved peak: the CUDA context and NCCL's buffers, which no world-size-1
    probe sees. Plus the DDP reducer's gradient buckets, which a DDP rank allocates through the allocator
    but a world-size-1 run does not. None off GPU.
    """
    if spec.device != "cuda" or not gpu_samples:
        return None
    out = []
    for r in ranks:
        gpu = _local_gpu(spec, r)
        if r.end is None or r.end.mem_source != "cuda_reserved" or r.end.peak_mem_mib is None or gpu is None:
            continue
        used = [g.mem_used_mib for g in gpu_samples if g.gpu == gpu and g.mem_used_mib is not None]
        base = (before_mib or {}).get(gpu)
        if base is not None and used:
            out.append(max(used) - base - r.end.peak_mem_mib)
        elif len(used) >= 2:
            out.append(max(used) - min(used) - r.end.peak_mem_mib)
    if not out:
        return None
    return max(max(out), 0.0) + (sum(bucket_sizes_bytes) / 2**20 if spec.world_size > 1 else 0.0)


def _batch_that_ran(result: TrialResult, spec: TrialSpec, infos: list[RankInfo]) -> None:
    """The batch per rank the ranks trained at (Ultralytics caps it at the dataset, DDP at a rank's shard),
    and a note where that is less than the trial asked: images/s count the images that ran, but the knobs
    name a batch that never ran."""
    result.batch_per_rank_effective = min(
        batch_that_runs(i.batch_per_rank, i.dataset_images, i.world_size) for i in infos
    )
    asked = max(spec.knobs.batch // max(spec.world_size, 1), 1)
    if result.batch_per_rank_effective < asked:
        result.notes.append(
            capped_batch_note(asked, result.batch_per_rank_effective, infos[0].dataset_images, spec.world_size) + "."
        )


def aggregate(
    spec: TrialSpec, ranks: list[RankRecords], outcome: LaunchOutcome, telemetry: Optional[tuple] = None
) -> TrialResult:
    """telemetry: what yoloprof.analysis.telemetry.read_telemetry returned for the trial, if anything.
    The outcome and what the ranks said of themselves, then the steps every rank measured (rates, phases,
    AllReduce, skew), then the telemetry over the measured window."""
    status, error = _oom_killed(*_status(spec, ranks, outcome), telemetry)
    result = TrialResult(
        repeat_of=getattr(spec, "repeat_of", None),
        trial_id=spec.trial_id,
        status=status,
        knobs=spec.knobs,
        world_size=spec.world_size,
        device=spec.device,
        error=error,
        wall_s=outcome.wall_s,
        optimizer=spec.optimizer,  # read back below where the ranks recorded what they built
    )
    if outcome.release_note:
        result.notes.append(f"{outcome.release_note}; the next trial may have started with less memory.")
    _from_the_ranks(result, spec, ranks)
    steady, boundary = _common_measured(ranks) if len(ranks) == spec.world_size else ({}, {})
    by_step = steady or boundary
    result.measured_steps = len(by_step)
    if status != "ok" or not by_step:
        if status == "ok":
            result.status, result.error = "error", "no measured step was recorded on every rank"
        return result
    _boundary_cost(result, steady, boundary)
    if not steady:
        result.notes.append(
            f"Every measured step started an epoch ({result.batches_per_epoch} batch(es) per epoch), so these figures "
            "include end-of-epoch work: give a larger dataset or a smaller batch for steady-state figures."
        )
    per_rank = [[steps[i] for steps in by_step.values()] for i in range(len(ranks))]
    images = _rates(result, by_step, per_rank)
    if spec.world_size > 1:
        _allreduce(result, per_rank)
    means = {p: [mean(getattr(s, p) for s in steps) for steps in per_rank] for p in PHASES + ("step_ms",)}
    result.breakdown = Breakdown(**{p: median(v) for p, v in means.items()})
    if spec.world_size <= 1:
        result.breakdown.comm_wait_ms = None
    result.ranks = [_rank_stat(r, steps) for r, steps in zip(ranks, per_rank)]
    skew, slow, fast = rank_skew(per_rank)
    result.rank_skew = skew
    if skew is not None:
        result.slow_rank, result.fast_rank = ranks[slow].rank, ranks[fast].rank
    window = measured_window(ranks)
    if telemetry is not None and window is not None:
        _telemetry(result, spec, ranks, telemetry, window, images)
    return result


def _oom_killed(status: str, error: Optional[str], telemetry: Optional[tuple]) -> tuple[str, Optional[str]]:
    """A rank SIGKILLed while free RAM collapsed: the kernel's OOM killer, an oom rather than an error."""
    if status == "error" and "SIGKILL" in (error or "") and telemetry is not None:
        free = [c.mem_available_mib for c in telemetry[2]]
        if free and min(free) < OOM_KILL_FREE_FRAC * max(free):
            return "oom", (
                f"{error.split(' (')[0]} while free RAM fell from {max(free):.0f} to {min(free):.0f} MiB: "
                "the kernel's OOM killer"
            )
    return status, error


def _from_the_ranks(result: TrialResult, spec: TrialSpec, ranks: list[RankRecords]) -> None:
    """What the ranks recorded of themselves: loader, AMP, accumulate, optimizer, the batch that ran, set-up,
    the first steps' extra time, memory."""
    infos = [r.info for r in ranks if r.info is not None]
    if infos:
        result.batches_per_epoch = infos[0].batches_per_epoch
        result.workers_effective = infos[0].workers_effective
        result.amp_effective = infos[0].amp_effective
        result.accumulate = infos[0].accumulate
        result.optimizer = infos[0].optimizer_effective or spec.optimizer
        _batch_that_ran(result, spec, infos)
    setups = [r.end.setup_s for r in ranks if r.end and r.end.setup_s is not None]
    result.setup_s = max(setups) if setups and len(setups) == len(ranks) else None  # a rank without one: unknown
    result.warmup_extra_s, result.warmup_steps_timed = warmup_extra(ranks)
    peaks = [r.end.peak_mem_mib for r in ranks if r.end and r.end.peak_mem_mib is not None]
    result.peak_mem_mib = max(peaks) if peaks else None
    totals = [r.end.device_mem_total_mib for r in ranks if r.end and r.end.device_mem_total_mib]
    result.device_mem_total_mib = min(totals) if totals else None


def _rates(result: TrialResult, by_step: dict, per_rank: list) -> list[int]:
    """img/s (all ranks' images over the slowest rank's time) with its interval, step quantiles, data wait.
    Returns the images of each measured step."""
    step_ms = [max(s.step_ms for s in group) for group in by_step.values()]
    images = [sum(s.images for s in group) for group in by_step.values()]
    span_s = max(sum(s.step_ms for s in steps) for steps in per_rank) / 1e3
    rates = [n / (ms / 1e3) for n, ms in zip(images, step_ms) if ms > 0]
    result.img_per_s = sum(images) / span_s if span_s > 0 else None
    _throughput_interval(result, images, step_ms)
    result.img_per_s_p10 = quantile(rates, 0.1)
    result.img_per_s_p90 = quantile(rates, 0.9)
    result.step_ms_p50 = quantile(step_ms, 0.5)
    result.step_ms_p90 = quantile(step_ms, 0.9)
    result.data_wait_frac = median(_frac(steps, "data_wait_ms") for steps in per_rank)
    result.data_wait_frac_ci = _frac_interval(per_rank, "data_wait_ms")
    return images


def _allreduce(result: TrialResult, per_rank: list) -> None:
    """AllReduce and its wait, the buckets' sizes and their AllReduce times, median over ranks and steps."""
    result.comm_ms_p50 = median(median(s.comm_ms for s in steps) for steps in per_rank)
    result.comm_wait_ms_p50 = median(median(s.comm_wait_ms for s in steps) for steps in per_rank)
    result.comm_frac = median(_frac(steps, "comm_wait_ms") for steps in per_rank)
    result.comm_frac_ci = _frac_interval(per_rank, "comm_wait_ms")
    first = next((s for s in per_rank[0] if s.buckets), None)
    result.bucket_sizes_bytes = [b.size_bytes for b in first.buckets] if first else []
    result.bucket_allreduce_ms_p50 = [
        median(b.allreduce_ms for steps in per_rank for s in steps for b in s.buckets if b.index == fb.index)
        for fb in (first.buckets if first else [])
    ]


def _telemetry(result: TrialResult, spec: TrialSpec, ranks, telemetry: tuple, window: tuple, images: list) -> None:
    """GPU and CPU samples over the measured window; the DDP memory overhead against the memory before launch."""
    header, gpu, cpu, notes = telemetry
    result.telemetry = summarize(header, gpu, cpu, window[0], window[1], sum(images))
    before = None
    if header is not None and header.mem_used_before_launch_mib is not None:
        before = {g: u for g, u in zip(header.gpus, header.mem_used_before_launch_mib) if u is not None}
    result.mem_overhead_mib = mem_overhead(spec, ranks, gpu, result.bucket_sizes_bytes, before)
    result.gpu_util_pct = result.telemetry.gpu_util_mean_pct
    result.notes += [n for n in notes if n not in result.notes]
