"""TrialResults -> Ranking: positions by measured throughput, and what bounds each trial.

Thresholds are named and sourced (../shared/ANCHORS.md). The bottleneck of a trial is the first
rule that fires, in this order: memory (it broke or nearly broke the device), straggler (one
rank holds the others back), then input or communication (whichever takes the larger share of
the step), else compute, which is where a well-fed training run should be.
"""

from __future__ import annotations

from typing import Optional

from yoloprof.records import Ranking, TrialResult, Verdict

# TraceML warns at 10% of the step; torch-tb-profiler advises more workers above 5%. 10% keeps
# run-to-run noise on short trials from calling a compute-bound run input-bound.
INPUT_FRAC = 0.10
# torch-tb-profiler: communication above 10% of the step -> larger batch / accumulation.
COMM_FRAC = 0.10
# torch-tb-profiler: peak memory above 90% of device memory -> memory-bound.
MEMORY_FRAC = 0.90
# TraceML flags a rank whose step exceeds the median rank's by 10% (warn) / 20% (critical);
# we compare each rank's own work (step minus waits), at the critical level.
STRAGGLER_SKEW = 0.20

# CPU-starved: the ranks wait for data while every core is above 90% busy (probes.cpu_telemetry) in at
# least half the samples; "more workers did not help" is then the expected outcome, not a mystery.
CPU_STARVED_FRAC = 0.5

BOTTLENECKS = ("input", "compute", "communication", "memory", "straggler")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def classify(r: TrialResult) -> tuple[Optional[str], str]:
    if r.status == "oom":
        return "memory", f"out of memory at batch {r.knobs.batch}"
    if r.status != "ok":
        return None, r.error or r.status
    if r.peak_mem_mib and r.device_mem_total_mib and r.peak_mem_mib / r.device_mem_total_mib > MEMORY_FRAC:
        return "memory", (
            f"peak memory {r.peak_mem_mib:.0f} MiB is {_pct(r.peak_mem_mib / r.device_mem_total_mib)} "
            f"of {r.device_mem_total_mib:.0f} MiB (limit {_pct(MEMORY_FRAC)})"
        )
    if r.rank_skew is not None and r.rank_skew > STRAGGLER_SKEW and r.ranks:
        by_rank = {s.rank: s for s in r.ranks}
        slow = by_rank.get(r.slow_rank) or max(r.ranks, key=lambda s: s.busy_ms_p50)  # records before the pair
        fast = by_rank.get(r.fast_rank) or min(r.ranks, key=lambda s: s.busy_ms_p50)
        return "straggler", (
            f"rank {slow.rank} works {slow.busy_ms_p50:.0f} ms per step, rank {fast.rank} {fast.busy_ms_p50:.0f} ms "
            f"(+{_pct(r.rank_skew)}, limit {_pct(STRAGGLER_SKEW)}); the others wait in AllReduce"
        )
    data = r.data_wait_frac or 0.0
    comm = r.comm_frac or 0.0
    if data >= INPUT_FRAC and data >= comm:
        return "input", f"data wait is {_pct(data)} of the step (limit {_pct(INPUT_FRAC)})"
    if comm >= COMM_FRAC:
        return "communication", f"exposed AllReduce is {_pct(comm)} of the step (limit {_pct(COMM_FRAC)})"
    parts = [f"data wait {_pct(data)}"]
    if r.comm_frac is not None:
        parts.append(f"exposed AllReduce {_pct(comm)}")
    return "compute", ", ".join(parts) + " of the step: the model's own work dominates"


def rank_trials(results: list[TrialResult]) -> Ranking:
    ok = sorted((r for r in results if r.status == "ok" and r.img_per_s), key=lambda r: -r.img_per_s)
    position = {r.trial_id: i + 1 for i, r in enumerate(ok)}
    verdicts = []
    for r in results:
        bottleneck, evidence = classify(r)
        label = None
        tel = r.telemetry
        if bottleneck == "input" and tel is not None and (tel.cpu_busy_cores_frac or 0) >= CPU_STARVED_FRAC:
            label = "input (CPU-starved)"
            evidence += (f"; every core was busy in {100 * tel.cpu_busy_cores_frac:.0f}% of samples, so more workers "
                         "have no CPU to run on")  # fmt: skip
        verdicts.append(Verdict(r.trial_id, position.get(r.trial_id), bottleneck, evidence, label))
    verdicts.sort(key=lambda v: (v.position is None, v.position or 0))
    return Ranking(verdicts=verdicts, best_trial_id=ok[0].trial_id if ok else None)


def knob_text(r: TrialResult) -> str:
    k = r.knobs
    parts = [f"batch {k.batch}", f"workers {k.workers}"]
    if r.workers_effective is not None and r.workers_effective != k.workers:
        parts[-1] += f" (ran {r.workers_effective})"
    parts.append("amp" if k.amp else "fp32")
    if k.pin_memory:
        parts.append("pin_memory")
    if k.cache != "off":
        parts.append(f"cache {k.cache}")
    if k.nccl != "default":
        parts.append(f"nccl {k.nccl}")
    return ", ".join(parts)


def gains(results: list[TrialResult], ranking: Ranking, baselines: dict[str, str]) -> list[tuple[str, str, Optional[float]]]:
    """(role, trial id, best img/s over the baseline's - 1, None if the baseline did not finish)."""
    by_id = {r.trial_id: r for r in results}
    best = by_id.get(ranking.best_trial_id) if ranking.best_trial_id else None
    out = []
    for role, tid in baselines.items():
        base = by_id.get(tid)
        ok = best is not None and base is not None and base.status == "ok" and base.img_per_s
        out.append((role, tid, best.img_per_s / base.img_per_s - 1 if ok else None))
    return out


def headline(results: list[TrialResult], ranking: Ranking, baselines: Optional[dict[str, str]] = None) -> str:
    """The verdict in one sentence."""
    by_id = {r.trial_id: r for r in results}
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    if ranking.best_trial_id is None:
        failed = next((r for r in results if r.error), None)
        reason = f": {failed.trial_id} {failed.status}: {failed.error}" if failed else ""
        return f"No trial finished{reason}. See the trial's rank logs in trials/."
    best = by_id[ranking.best_trial_id]
    v = verdicts[best.trial_id]
    ok = [r for r in results if r.status == "ok" and r.img_per_s]
    slowest = min(ok, key=lambda r: r.img_per_s)
    text = f"Best: {best.trial_id} ({knob_text(best)}) at {best.img_per_s:.1f} img/s"
    against = []
    for role, tid, gain in gains(results, ranking, baselines or {}):
        if tid == best.trial_id:
            against.append(f"which is {role}: nothing measured beat them")
        elif gain is not None:
            against.append(f"{100 * gain:+.0f}% over {role} ({tid})")
        else:
            against.append(f"{role} ({tid}) did not finish")
    if against:
        text += ", " + ", ".join(against)
    elif slowest is not best:
        text += f", {best.img_per_s / slowest.img_per_s:.2f}x the slowest trial ({slowest.trial_id})"
    text += f". It is bound by {v.label or v.bottleneck}: {v.evidence}."
    failed = [r for r in results if r.status != "ok"]
    if failed:
        text += f" {len(failed)} of {len(results)} trials did not finish."
    return text
