"""TrialResults -> Ranking: positions by measured throughput, and what bounds each trial.

Thresholds are named and sourced (../shared/ANCHORS.md). The bottleneck of a trial is the first
rule that fires, in this order: memory (it broke or nearly broke the device), straggler (one
rank holds the others back; with communication where the slowest rank itself waits in AllReduce),
then input or communication (whichever takes the larger share of the step), else compute, which
is where a well-fed training run should be.
"""

from __future__ import annotations

import math
from typing import Optional

from yoloprof.analysis import noise
from yoloprof.records import Knobs, Ranking, TrialResult, Verdict

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


def _share(name: str, est: float, ci: Optional[list]) -> str:
    return f"{name} {_pct(est)}" + (f" (95% {100 * ci[0]:.0f}-{_pct(ci[1])})" if ci else "")


def _reaches(est: float, ci: Optional[list], limit: float) -> bool:
    """The share's 95% interval (or, without one, its estimate) reaches the limit."""
    return (ci[1] if ci else est) >= limit


def bounds(r: TrialResult) -> tuple[list[str], str]:
    """Every bound the evidence supports, primary first, and the evidence. Memory and straggler stand alone;
    input and communication are named together when both shares' intervals reach their limits (and one
    estimate does): their order then changes from run to run, so one name alone would flip."""
    if r.status == "oom":
        return ["memory"], f"out of memory at batch {r.batch_ran}" + (
            f" (asked {r.knobs.batch})" if r.batch_capped else ""
        )
    if r.status != "ok":
        return [], r.error or r.status
    if r.peak_mem_mib and r.device_mem_total_mib and r.peak_mem_mib / r.device_mem_total_mib > MEMORY_FRAC:
        return ["memory"], (
            f"peak memory {r.peak_mem_mib:.0f} MiB is {_pct(r.peak_mem_mib / r.device_mem_total_mib)} "
            f"of {r.device_mem_total_mib:.0f} MiB (limit {_pct(MEMORY_FRAC)})"
        )
    if r.rank_skew is not None and r.rank_skew > STRAGGLER_SKEW and r.ranks:
        by_rank = {s.rank: s for s in r.ranks}
        slow = by_rank.get(r.slow_rank) or max(r.ranks, key=lambda s: s.busy_ms_p50)  # records before the pair
        fast = by_rank.get(r.fast_rank) or min(r.ranks, key=lambda s: s.busy_ms_p50)
        evidence = (
            f"rank {slow.rank} works {slow.busy_ms_p50:.0f} ms per step, rank {fast.rank} {fast.busy_ms_p50:.0f} ms "
            f"(+{_pct(r.rank_skew)}, limit {_pct(STRAGGLER_SKEW)}); the others wait in AllReduce"
        )
        # The slowest rank waits for nobody, so AllReduce it still waits in is the link's own cost: a second
        # bound, first where it costs the step more than the skew does.
        own = (slow.comm_wait_ms_p50 or 0.0) / slow.step_ms_p50 if slow.step_ms_p50 else 0.0
        if own < COMM_FRAC:
            return ["straggler"], evidence
        evidence += (
            f"; rank {slow.rank} itself waits {slow.comm_wait_ms_p50:.0f} ms ({_pct(own)} of its step, limit "
            f"{_pct(COMM_FRAC)}) in AllReduce, so communication bounds it too"
        )
        skew_ms = slow.busy_ms_p50 - fast.busy_ms_p50
        return (
            ["communication", "straggler"] if slow.comm_wait_ms_p50 > skew_ms else ["straggler", "communication"]
        ), evidence
    data = r.data_wait_frac or 0.0
    comm = r.comm_frac or 0.0
    data_ci = r.data_wait_frac_ci if r.data_wait_frac is not None else None
    comm_ci = r.comm_frac_ci if r.comm_frac is not None else None
    shares = [("input", "data wait", data, data_ci, INPUT_FRAC)]
    if r.comm_frac is not None:
        shares.append(("communication", "exposed AllReduce", comm, comm_ci, COMM_FRAC))
    if any(est >= limit for _, _, est, _, limit in shares):
        both = sorted((s for s in shares if _reaches(s[2], s[3], s[4])), key=lambda s: -s[2])  # stable: input first
        if len(both) == 1:
            name, what, est, ci, limit = both[0]
            where = "data wait is" if name == "input" else "exposed AllReduce is"
            interval = f" (95% {100 * ci[0]:.0f}-{_pct(ci[1])})" if ci else ""
            return [name], f"{where} {_pct(est)}{interval} of the step (limit {_pct(limit)})"
        return [s[0] for s in both], (
            " and ".join(_share(what, est, ci) for _, what, est, ci, _ in both)
            + f" of the step: both {'intervals ' if all(s[3] for s in both) else ''}reach their limits "
            f"({', '.join(_pct(s[4]) for s in both)}), so either may bound the next run"
        )
    parts = [_share("data wait", data, data_ci)]
    if r.comm_frac is not None:
        parts.append(_share("exposed AllReduce", comm, comm_ci))
    return ["compute"], ", ".join(parts) + " of the step: the model's own work dominates"


def classify(r: TrialResult) -> tuple[Optional[str], str]:
    """The primary bound (first of `bounds`) and the evidence."""
    names, evidence = bounds(r)
    return (names[0] if names else None), evidence


# Below this many degrees of freedom of run-to-run noise, a tie says nothing and is not ranked by cost
# (the auto search repeats contenders until it has 3; yoloprof.search.strategy target_df).
SETTLED_DF = 3


def _img(v: Verdict) -> str:
    if v.img_per_s is None:
        return "n/a"
    text = f"{v.img_per_s:.1f} img/s"
    if (
        v.img_per_s_ci_high is not None
        and math.isfinite(v.img_per_s_ci_high)
        and v.img_per_s_ci_high > v.img_per_s_ci_low
    ):
        text += f" (95% {v.img_per_s_ci_low:.1f}-{v.img_per_s_ci_high:.1f})"
    return text


def _mem(c: noise.Config, by_id: dict) -> float:
    mems = [by_id[t].peak_mem_mib for t in c.trial_ids if by_id[t].peak_mem_mib is not None]
    return sum(mems) / len(mems) if mems else math.inf


def _recommend(tied: list[noise.Config], by_id: dict, by_cost: bool = True) -> tuple[noise.Config, Optional[str]]:
    """Among the tied (fastest first), the one that costs least: deterministic, uncompiled and not bf16 where one
    is (they give up reproducibility, start-up time, numerics), then fewer workers, then less memory (within
    MEMORY_TOLERANCE counts as the same), then no debug-only NCCL variable, then no cache, then the fastest.
    Returns it and what it saves over the fastest (None where it is the fastest). `by_cost` False: what gives up
    nothing still comes first, then the fastest (resources are not weighed where the tie says nothing)."""
    fastest = tied[0]
    knobs = lambda c: by_id[c.first].knobs  # noqa: E731
    cands = list(tied)
    for keeps in (lambda k: k.deterministic, lambda k: k.compile == "off", lambda k: k.amp != "bf16"):
        if any(keeps(knobs(c)) for c in cands):  # gives up nothing: reproducibility, start-up time, numerics
            cands = [c for c in cands if keeps(knobs(c))]
    if not by_cost:
        cands = cands[:1]
    w = min(knobs(c).workers for c in cands)
    cands = [c for c in cands if knobs(c).workers == w]
    m = min(_mem(c, by_id) for c in cands)
    if math.isfinite(m):
        cands = [c for c in cands if _mem(c, by_id) <= m * (1 + noise.MEMORY_TOLERANCE)]
    if any(knobs(c).nccl == "default" for c in cands):
        cands = [c for c in cands if knobs(c).nccl == "default"]
    if any(knobs(c).cache == "off" for c in cands):
        cands = [c for c in cands if knobs(c).cache == "off"]
    if any(knobs(c).channels_last for c in cands):
        cands = [c for c in cands if knobs(c).channels_last]
    rec = cands[0]
    if rec.first == fastest.first:
        return rec, None
    kr, kf = knobs(rec), knobs(fastest)
    if kr.deterministic and not kf.deterministic:
        why = "it keeps deterministic training (bit-reproducible runs), which the fastest gives up"
    elif kr.compile == "off" and kf.compile != "off":
        why = f"it needs no torch.compile (compile {kf.compile} adds start-up time to every run)"
    elif kr.amp != "bf16" and kf.amp == "bf16":
        why = "it keeps Ultralytics' default precision (the fastest changes the numerics with bf16)"
    elif kr.workers != kf.workers:
        why = f"it uses {kr.workers} DataLoader worker{'s' if kr.workers != 1 else ''} per rank instead of {kf.workers}"
    elif _mem(rec, by_id) < _mem(fastest, by_id):
        why = f"it peaks at {_mem(rec, by_id):.0f} MiB of memory instead of {_mem(fastest, by_id):.0f} MiB"
    elif kr.nccl != kf.nccl:
        why = f"it sets no debug-only NCCL variable (nccl {kf.nccl})"
    elif kr.cache != kf.cache:
        why = f"it caches no images (cache {kf.cache})"
    else:
        why = "it keeps Ultralytics' own memory format (channels_last auto)"
    return rec, why


def rank_trials(results: list[TrialResult]) -> Ranking:
    """Positions by configuration (runs of the same settings share one), by combined img/s; the winner only
    where its lead over the next is beyond the noise, else the cheapest of those tied with the fastest."""
    by_id = {r.trial_id: r for r in results}
    rtr = noise.run_to_run(results)
    configs = noise.configurations(results)
    tied = noise.tied_with_best(results)
    tied_keys = {c.key for c in tied} if len(tied) > 1 else set()
    position = {c.key: i + 1 for i, c in enumerate(configs)}
    config_of = {tid: c for c in configs for tid in c.trial_ids}
    verdicts = []
    for r in results:
        names, evidence = bounds(r)
        bottleneck = names[0] if names else None
        label = None
        tel = r.telemetry
        if bottleneck == "input" and tel is not None and (tel.cpu_busy_cores_frac or 0) >= CPU_STARVED_FRAC:
            label = "input (CPU-starved)"
            evidence += (
                f"; every core was busy in {100 * tel.cpu_busy_cores_frac:.0f}% of samples, so more workers "
                "have no CPU to run on"
            )
        if len(names) > 1:
            label = " + ".join([label or names[0], *names[1:]])
        c = config_of.get(r.trial_id)
        v = Verdict(r.trial_id, position[c.key] if c else None, bottleneck, evidence, label, bottlenecks=names)
        if c is not None:
            v.tied_with_best = c.key in tied_keys
            v.img_per_s, v.img_per_s_ci_low, v.img_per_s_ci_high = c.mean, c.low, c.high
            if not math.isfinite(c.high) or not c.known:  # unknown or not recorded: no bounds to show
                v.img_per_s_ci_low = v.img_per_s_ci_high = None
            v.uncertainty, v.runs = c.method, list(c.trial_ids)
            if r.trial_id != c.first:
                v.repeat_of = c.first
                v.evidence = f"repeat of {c.first}; {v.evidence}"
        verdicts.append(v)
    order = {tid: i for c in configs for i, tid in enumerate(c.trial_ids)}
    verdicts.sort(key=lambda v: (v.position is None, v.position or 0, order.get(v.trial_id, 0)))
    rk = Ranking(
        verdicts=verdicts,
        best_trial_id=None,
        run_to_run_rel=rtr.s_rel,
        run_to_run_df=rtr.df,
        run_to_run_configs=rtr.configs,
    )
    if not configs:
        return rk
    rec, why = _recommend(tied, by_id)
    if len(tied) > 1 and 0 < rtr.df < SETTLED_DF:
        # The tie is the noise estimate's, not the trials': on 1-2 df a t-interval is 4-13 spreads wide, so
        # "tied" says nothing, and picking the cheapest would pick by memory alone, often the slowest.
        fast, fast_why = _recommend(tied, by_id, by_cost=False)
        if fast.first != rec.first:
            note = (
                f"the run-to-run noise rests on {rtr.df} df, too few to tell the tied apart, so the fastest"
                + (" that gives up nothing" if fast.first != tied[0].first else "")
                + f" is recommended, not the one that costs least ({rec.first}); repeats settle it"
            )
            rec, why = fast, note if fast_why is None else f"{fast_why}; {note}"
    rk.best_trial_id = rk.recommended_trial_id = rec.first
    rk.fastest_trial_id = configs[0].first
    rk.tied = [c.first for c in tied] if len(tied) > 1 else []
    rk.recommendation_reason = _reason(results, configs, tied, rec, why)
    return rk


def _reason(results, configs, tied, rec, why) -> str:
    fastest = configs[0]
    if len(configs) == 1:
        return f"{fastest.first} is the only configuration that finished"
    if len(tied) == 1:
        d = noise.difference(results, fastest.first, configs[1].first)
        if not d.known:
            return (
                f"{fastest.first} is the fastest ({configs[1].first}: {d.ratio:.2f}x of it); the uncertainty "
                "was not recorded"
            )
        return (
            f"{fastest.first} leads the next configuration beyond the noise: {configs[1].first} runs at "
            f"{d.ratio:.2f}x of it ({d.interval_text()})"
        )
    other = rec if rec.first != fastest.first else tied[1]
    d = noise.difference(results, fastest.first, other.first)
    names = ", ".join(c.first for c in tied[:-1]) + f" and {tied[-1].first}"
    within = (
        "within the noise (uncertainty unknown: too few steps for an interval)"
        if not math.isfinite(d.half_rel)
        else f"within ±{100 * d.half_rel:.0f}% ({other.first}/{fastest.first} = {d.ratio:.2f}, {d.interval_text()})"
    )
    if why is not None and "rests on" in why:  # the noise is too poorly known to rank by cost
        return f"{names} are tied {within}: recommending {rec.first}: {why}"
    if why is None:
        return (
            f"{names} are tied {within}: recommending {rec.first}, the fastest; none of the tied costs less "
            "(fewer workers, less memory, no NCCL debug variable, no cache)"
        )
    return f"{names} are tied {within}: recommending {rec.first} because {why}"


def knob_text(r: TrialResult) -> str:
    k = r.knobs
    parts = [f"batch {k.batch}", f"workers {k.workers}"]
    if r.workers_effective is not None and r.workers_effective != k.workers:
        parts[-1] += f" (ran {r.workers_effective})"
    return ", ".join(parts + settings_tail(k))


def settings_tail(k: Knobs) -> list[str]:
    """Everything after batch and workers, as tables and sentences name a configuration."""
    parts = [k.precision]
    if k.pin_memory:
        parts.append("pin_memory")
    if k.cache != "off":
        parts.append(f"cache {k.cache}")
    if k.nccl != "default":
        parts.append(f"nccl {k.nccl}")
    return parts + k.extras()


def gains(
    results: list[TrialResult], ranking: Ranking, baselines: dict[str, str]
) -> list[tuple[str, str, Optional[float]]]:
    """(role, trial id, best img/s over the baseline's - 1, None if the baseline did not finish). Over the
    configurations' combined figures (repeats averaged); `gain_differences` adds the interval."""
    return [
        (role, tid, None if d is None else d.gain) for role, tid, d in gain_differences(results, ranking, baselines)
    ]


def gain_differences(
    results: list[TrialResult], ranking: Ranking, baselines: dict[str, str]
) -> list[tuple[str, str, Optional[noise.Difference]]]:
    """(role, trial id, the best configuration against the baseline's, None if the baseline did not finish)."""
    by_id = {r.trial_id: r for r in results}
    out = []
    for role, tid in baselines.items():
        base = by_id.get(tid)
        ok = ranking.best_trial_id is not None and base is not None and base.status == "ok" and base.img_per_s
        out.append((role, tid, noise.difference(results, tid, ranking.best_trial_id) if ok else None))
    return out


def headline(
    results: list[TrialResult], ranking: Ranking, baselines: Optional[dict[str, str]] = None, lead: Optional[str] = None
) -> str:
    """The verdict in one sentence; a gain is stated only where it is beyond the noise. `lead`: what the
    recommended trial's training will take ("11.8 min an epoch, 19.7 h for 100 epochs"), said first."""
    by_id = {r.trial_id: r for r in results}
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    if ranking.best_trial_id is None:
        failed = next((r for r in results if r.error), None)
        reason = f": {failed.trial_id} {failed.status}: {failed.error}" if failed else ""
        return f"No trial finished{reason}. See the trial's rank logs in trials/."
    best = by_id[ranking.best_trial_id]
    v = verdicts[best.trial_id]
    text = f"Best: {best.trial_id} ({knob_text(best)})" + (f": {lead}," if lead else "") + f" at {_img(v)}"
    if len(v.runs) > 1:
        text += f", mean of {len(v.runs)} runs"
    against = []
    for role, tid, d in gain_differences(results, ranking, baselines or {}):
        if d is None:
            against.append(f"{role} ({tid}) did not finish")
        elif tid == best.trial_id or tid in v.runs:
            against.append(f"which is {role}: nothing measured beat them")
        elif not d.known or d.beyond_noise:
            span = f", 95% {100 * (d.low - 1):+.0f}% to {100 * (d.high - 1):+.0f}%" if d.known else ""
            against.append(f"{100 * d.gain:+.0f}% over {role} ({tid}{span})")
        else:
            against.append(f"no measurable gain over {role} ({tid}: ratio {d.ratio:.2f}, {d.interval_text()})")
    configs = noise.configurations(results)
    if against:
        text += ", " + ", ".join(against)
    elif len(configs) > 1 and configs[-1].first not in v.runs:
        d = noise.difference(results, configs[-1].first, best.trial_id)
        if not d.known or d.beyond_noise:
            text += f", {d.ratio:.2f}x the slowest trial ({configs[-1].first}" + (
                f", {d.interval_text()})" if d.known else ")"
            )
        else:
            text += (
                f", no measurable difference from the slowest trial ({configs[-1].first}: ratio {d.ratio:.2f}, "
                f"{d.interval_text()})"
            )
    if ranking.tied and ranking.recommendation_reason:
        text += f". Within the noise: {ranking.recommendation_reason}"
    text += f". It is bound by {v.label or v.bottleneck}: {v.evidence}."
    failed = [r for r in results if r.status != "ok"]
    if failed:
        text += f" {len(failed)} of {len(results)} trials did not finish."
    return text
