"""`--strategy auto` as the scan runs it: ceilings first, pruning, then the search one trial at a time.

The search (yoloprof.search.strategy) decides; this module measures what it asks for, keeps the
plan in scan.json after every trial (so an interrupted scan resumes where it stopped), and hands
the search the noise test of yoloprof.analysis.noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import paths
from yoloprof.analysis import headroom, dataset_fit, noise
from yoloprof.analysis.ranking import classify
from yoloprof.records import Decision, ScanMeta, TrialResult, write_json
from yoloprof.scan import ceiling_runs, launch, runner
from yoloprof.search import baselines, plan, usercfg
from yoloprof.search.prune import prune
from yoloprof.search.space import Space, auto_space
from yoloprof.search.strategy import AutoSearch


def beats(results: list[TrialResult], candidate: str, incumbent: str) -> bool:
    """The candidate's configuration is faster than the incumbent's beyond the noise."""
    d = noise.difference(results, incumbent, candidate)
    return d.ratio > 1.0 and d.beyond_noise


def bottleneck(r: TrialResult) -> Optional[str]:
    return classify(r)[0]


def space_for(ctx, meta: ScanMeta) -> Space:
    risky, why = plan.cache_ram_risk(meta.dataset.train_images, ctx.imgsz, ctx.hw.world_size, runner.spare_mib(meta))
    return auto_space(
        ctx.hw,
        ctx.given,
        dataset_fits_ram=not risky,
        ram_reason=why if risky else None,
        train_images=meta.dataset.train_images,
    )


def cold_aware(loader):
    """(beats, bottleneck) for a dataset that does not fit in memory: a trial whose settings read slower cold than it
    trains is input-bound (the search walks workers and cache first), and a change wins where its cold-capped rate
    beats the incumbent's beyond both intervals; elsewhere the trials' own figures decide."""

    def judge(results: list[TrialResult], candidate: str, incumbent: str) -> bool:
        said = dataset_fit.cold_beats(results, candidate, incumbent, loader)
        return beats(results, candidate, incumbent) if said is None else said

    def bound(r: TrialResult) -> Optional[str]:
        return "input" if dataset_fit.cold_bound(r, loader) else bottleneck(r)

    return judge, bound


def axes_of(space: Space) -> plan.Axes:
    v = space.values
    return plan.Axes(
        list(v["batch"]), list(v["workers"]), list(v["amp"]), list(v["pin_memory"]), ["off"], list(v["nccl"])
    )


def run(out: Path, meta: ScanMeta, ctx, req, console: Console, started: float) -> int:
    """0, or 128 + the signal that interrupted the scan. `started`: time.monotonic() when the scan began
    (the budget counts ceilings and set-up too)."""
    hw = ctx.hw
    clock = SearchClock(started, list(meta.decisions))  # --resume: the interrupted run's clock
    space = space_for(ctx, meta)
    if not space.dropped:  # --resume rebuilds the space from the values left: keep what the first run ruled out
        space.dropped = [d for d in meta.decisions if d.stage == "space"]
    ctx.plan = plan.Plan(axes_of(space), [], ctx.plan.dropped)
    meta.axes = {k: list(v) for k, v in space.values.items()}  # the whole space: --resume rebuilds it from here
    if not req.no_ceilings and not _ceilings_measured(out):
        from yoloprof.probes import model_check

        buckets = model_check.ddp_bucket_sizes(ctx.model, len(ctx.dataset.classes)) if hw.world_size > 1 else []
        ceiling_runs.run_ceilings(out / "ceilings", ctx, req, console, bucket_sizes=buckets)
    found = headroom.load(out / "ceilings")
    cold = ctx.fit().fits is False  # epochs read the dataset from storage: the loaders' cold rates bound them
    pruned = prune(space, found, hw, cold=cold)
    defaults = baselines.ultralytics_defaults(hw)
    start = ctx.baseline or defaults
    roles = {baselines.YOURS: ctx.baseline} if ctx.baseline is not None else {}
    references = []
    if not req.no_defaults:
        roles = {baselines.DEFAULTS: defaults, **roles}
        if ctx.baseline is not None:
            references.append(defaults)
    judge, bound = (beats, bottleneck) if not cold else cold_aware(found.loader)
    search = AutoSearch.from_pruned(
        pruned,
        start,
        meta.budget_s,
        beats=judge,
        contenders=noise.contenders,
        bottleneck=bound,
        references=references,
        after_trials=EPOCH_JOB_TRIALS,  # also on --resume: the job's time was spent
        noise_df=lambda rs: noise.run_to_run(rs).df,
    )
    done_before = {s.trial_id: s for s in meta.specs}  # --resume: trials that may already have results
    meta.specs, meta.trial_ids = [], []
    results: list[TrialResult] = []
    console.print(f"  auto: {space.size()} combinations in the space; searching within {meta.budget_s / 60:.1f} min")
    policy = launch.HangPolicy(total_s=req.trial_timeout)
    with runner.TrialRunner(out, meta, policy, console, None, reuse=not req.no_reuse) as trials:
        while True:
            proposal = search.propose(results, clock.now())
            _save(out, meta, space, pruned, search)
            if proposal is None:
                break
            spec = plan.spec_for(
                proposal.knobs,
                len(meta.specs) + 1,
                hw,
                **ctx.trial_args(req),
                precision=ctx.precision,
                max_steps=ctx.max_steps,
                repeat_of=proposal.repeat_of,
                overrides=usercfg.held(meta.train_cfg_args),
            )
            earlier = done_before.get(spec.trial_id)
            if earlier is not None and (earlier.knobs, earlier.repeat_of) != (spec.knobs, spec.repeat_of):
                runner.discard(out, spec.trial_id)  # the resumed search went another way: that trial is stale
            meta.specs.append(spec)
            meta.trial_ids.append(spec.trial_id)
            for role, k in roles.items():
                if role not in meta.baselines and space.same_run(k, spec.knobs):
                    meta.baselines[role] = spec.trial_id
            _save(out, meta, space, pruned, search)
            why = proposal.why.removeprefix(f"{proposal.stage}: ").removeprefix("confirmation: ")
            console.print(f"  [dim]{proposal.stage}: {why}[/]")
            results.append(trials.run(spec))
            if trials.last_kept:
                clock.kept(results[-1])
            if trials.interrupted:
                return trials.interrupted
    _save(out, meta, space, pruned, search)
    return 0


# The epoch job (yoloprof.scan.epoch_job) runs after the search, within its budget: it trains about twice a
# trial's steps and times two epoch ends in a fresh launch (seen on 2 CPU ranks: 22 s beside a 10 s median trial).
EPOCH_JOB_TRIALS = 2.0


class SearchClock:
    """The scan's wall time as the budget sees it. A resumed search replays its kept trials in no time; the
    clock then reads what it read the first time after each (from scan.json's decisions), so a resume goes
    on with the budget that is left, not a new one."""

    def __init__(self, started: float, earlier: list[Decision]):
        self.started, self.earlier, self.credit_s = started, earlier, None

    def now(self) -> float:
        real = time.monotonic() - self.started
        if self.credit_s is None:  # the first proposal: where the earlier run stood when its search began
            spent = [d.budget_used_s for d in self.earlier if d.stage not in ("space", "ceilings") and d.budget_used_s]
            self.credit_s = max(0.0, min(spent, default=0.0) - real)
        return real + self.credit_s

    def kept(self, result: TrialResult) -> None:
        """A trial kept from the earlier run: the clock moves to where the earlier run stood when it judged the
        trial (or on by the trial's wall time, where that run stopped before judging it)."""
        now = self.now()
        after = _next_decision_s(self.earlier, result.trial_id)
        target = after if after is not None else now + (result.wall_s or 0.0)
        self.credit_s += max(0.0, target - now)


def _next_decision_s(decisions: list[Decision], trial_id: str) -> Optional[float]:
    """The clock when the search first judged this trial (every decision naming a trial comes after it ran)."""
    return next((d.budget_used_s for d in decisions if d.trial_id == trial_id and d.budget_used_s is not None), None)


def _ceilings_measured(out: Path) -> bool:
    return (out / "ceilings" / "compute.json").is_file()


def _save(out: Path, meta: ScanMeta, space: Space, pruned, search: AutoSearch) -> None:
    meta.decisions = list(space.dropped) + list(pruned.decisions) + list(search.decisions)
    write_json(out / paths.SCAN_MARKER, meta)
