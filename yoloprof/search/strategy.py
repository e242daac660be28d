"""`--strategy auto`: coordinate descent over the pruned space, then repeats of the contenders.

The product of every knob's values is thousands of trials; a trial takes a minute. The knobs act
mostly independently on throughput (workers feed the input, AMP speeds compute, NCCL presets move
AllReduce), so walking one knob at a time from a good start finds the optimum of such a surface in
tens of trials. The incumbent's bottleneck picks which knob to walk first, so the budget goes to
the knob most likely to pay. A change is adopted only when it beats the incumbent beyond noise
(the injected `beats`), and the contenders are run again, interleaved, so the final ranking is not
decided by one lucky run. Every step is a Decision for the report. Pure: no torch.

Driving it: `while (p := search.propose(results, spent_s)) is not None:` run p as a trial, append
its TrialResult to `results`. The search matches results to its proposals by their Knobs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Optional

from yoloprof.records import Decision, Knobs, TrialResult
from yoloprof.search.space import ORDINAL, Space, knobs_text, neighbours, show

# Which knob to walk first, by what bounds the incumbent (analysis.ranking.classify's names).
ORDER: dict[str, tuple[str, ...]] = {
    "input": ("workers", "cache", "batch", "pin_memory", "amp", "nccl", "deterministic", "compile", "channels_last"),
    "communication": (
        "nccl",
        "batch",
        "workers",
        "amp",
        "pin_memory",
        "cache",
        "deterministic",
        "compile",
        "channels_last",
    ),
    # compute-bound: what makes the same math faster (precision, compile, determinism, memory format) first
    "compute": ("amp", "compile", "deterministic", "channels_last", "batch", "workers", "pin_memory", "cache", "nccl"),
    "memory": ("batch", "amp", "channels_last", "workers", "pin_memory", "cache", "nccl", "deterministic", "compile"),
    "straggler": (
        "workers",
        "nccl",
        "batch",
        "amp",
        "pin_memory",
        "cache",
        "deterministic",
        "compile",
        "channels_last",
    ),
    "unknown": ("batch", "workers", "amp", "pin_memory", "cache", "nccl", "deterministic", "compile", "channels_last"),
}

Beats = Callable[[list[TrialResult], str, str], bool]  # (results, candidate id, incumbent id) -> beyond noise?


@dataclass
class Proposal:
    knobs: Knobs
    why: str
    repeat_of: Optional[str] = None  # a confirmation run of this trial id's configuration
    stage: str = "descent"  # "start" | "descent" | "confirm"


class _OutOfBudget(Exception):
    def __init__(self, knob: str, value: Any, estimate_s: float):
        super().__init__(knob)
        self.knob, self.value, self.estimate_s = knob, value, estimate_s


class AutoSearch:
    """Propose one trial at a time; None when done. `decisions` grows as it goes."""

    def __init__(
        self,
        space: Space,
        start: Knobs,
        budget_s: float,
        *,
        beats: Beats,
        contenders: Callable[[list[TrialResult]], list[str]],
        bottleneck: Callable[[TrialResult], Optional[str]],
        promote: Iterable[str] = (),
        max_fit: Optional[dict[bool, int]] = None,
        references: Iterable[Knobs] = (),
        repeats: int = 1,
        first_guess_s: float = 60.0,
        max_passes: int = 2,
        after_trials: float = 0.0,
        noise_df: Optional[Callable[[list[TrialResult]], int]] = None,
        target_df: int = 3,
    ):
        """`start`: Ultralytics' defaults or the user's baseline, run even where pruned (it is the reference);
        `references`: other must-run configurations (the defaults when the start is the baseline);
        `promote`: NCCL presets pruned as slower, tried when communication bounds the incumbent;
        `max_fit`: amp -> largest global batch the compute ceiling says fits (prune.Pruned.max_fit);
        `after_trials`: what runs after the search within the same budget (the epoch job), in trials' time;
        `noise_df`: degrees of freedom of the run-to-run noise so far: with it, budget left after the
        confirmation buys more repeats of the contenders until there are `target_df` (one repeat pair
        gives 1, and a t-interval on 1 df is 12.7 spreads wide: every configuration would be tied)."""
        if repeats < 0 or budget_s <= 0 or max_passes < 1:
            raise ValueError("repeats >= 0, budget_s > 0 and max_passes >= 1 are required")
        self.space, self.start, self.budget_s = space, start, budget_s
        self.beats, self.contenders, self.bottleneck = beats, contenders, bottleneck
        self.promote = [p for p in promote if p not in space.values["nccl"]]
        self.max_fit = dict(max_fit or {})
        self.references = [r for r in references if r != start]
        self.repeats, self.first_guess_s, self.max_passes = repeats, first_guess_s, max_passes
        self.after_trials = after_trials
        self.noise_df, self.target_df = noise_df, target_df
        self.decisions: list[Decision] = []
        self.incumbent: Optional[TrialResult] = None
        self._results: list[TrialResult] = []
        self._spent = 0.0
        self._proposed: set[Knobs] = set()
        self._oom: dict[bool, int] = {}  # amp -> smallest batch that ran out of memory in a trial
        self._pending: list[str] = []  # knobs still to walk in this pass (for skipped-budget)
        self._gen: Optional[Iterator[Proposal]] = self._search()

    @classmethod
    def from_pruned(cls, pruned, start: Knobs, budget_s: float, **kw) -> "AutoSearch":
        """From prune.prune's result: its space, promoted presets and batch limits."""
        return cls(pruned.space, start, budget_s, promote=pruned.promote, max_fit=pruned.max_fit, **kw)

    def propose(self, results: list[TrialResult], spent_s: float) -> Optional[Proposal]:
        """The next trial to run, given every result so far and the scan's wall time spent; None = done."""
        if self._gen is None:
            return None
        self._results, self._spent = list(results), spent_s
        try:
            return next(self._gen)
        except StopIteration:
            self._gen = None
            return None

    # -- bookkeeping ------------------------------------------------------------------------------

    def _log(
        self,
        stage: str,
        kind: str,
        reason: str,
        knob: Optional[str] = None,
        value: Any = None,
        trial_id: Optional[str] = None,
    ) -> None:
        shown = None if value is None else show(value)
        self.decisions.append(Decision(stage, kind, reason, knob, shown, trial_id, round(self._spent, 1)))

    def _runs(self, k: Knobs) -> list[TrialResult]:
        """Every trial of this configuration (workers above Ultralytics' cap count as the cap)."""
        return [r for r in self._results if self.space.same_run(r.knobs, k)]

    def _first(self, k: Knobs) -> Optional[TrialResult]:
        return next(iter(self._runs(k)), None)

    def estimate_s(self) -> float:
        """The next trial's cost: the median wall time of the finished trials, else the first guess."""
        walls = [r.wall_s for r in self._results if r.status == "ok" and r.wall_s]
        return statistics.median(walls) if walls else self.first_guess_s

    def _reserve_s(self) -> float:
        """Wall time held back for the confirmation repeats of today's contenders, and at least for as many
        repeats as the run-to-run noise needs to reach target_df (on 1 df every interval is 12.7 spreads wide,
        so every configuration ties and the cheapest, often the slowest, is recommended), each at what that
        contender's own trial took (a large batch's trial can take several times the median); and for the
        epoch job."""
        ok = any(r.status == "ok" for r in self._results)
        firsts = self._contender_firsts() if ok else []
        confirm = self.repeats * (sum(self._cost_s(f) for f in firsts) if firsts else self.estimate_s())
        extra = 0.0
        if self.noise_df is not None:
            missing = self.target_df - self.noise_df(self._results) - self.repeats * max(len(firsts), 1)
            extra = max(missing, 0) * (min((self._cost_s(f) for f in firsts), default=self.estimate_s()))
        return confirm + extra + self._after_s()

    def _contender_firsts(self) -> list[TrialResult]:
        out: list[TrialResult] = []
        for tid in self.contenders(self._results):
            k = self._id_knobs(tid)
            first = self._first(k) if k is not None else None
            if first is not None and first not in out:
                out.append(first)
        return out

    def _cost_s(self, first: TrialResult) -> float:
        """What one more run of this configuration will take: its own runs' median wall time."""
        walls = [r.wall_s for r in self._runs(first.knobs) if r.wall_s]
        return statistics.median(walls) if walls else self.estimate_s()

    def _after_s(self) -> float:
        return self.after_trials * self.estimate_s()

    def _id_knobs(self, trial_id: str) -> Optional[Knobs]:
        return next((r.knobs for r in self._results if r.trial_id == trial_id), None)

    def _bn(self, r: Optional[TrialResult]) -> str:
        name = self.bottleneck(r) if r is not None else None
        return name if name in ORDER else "unknown"

    @staticmethod
    def _said(r: Optional[TrialResult]) -> str:
        if r is None:
            return "no result came back"
        if r.status == "ok" and r.img_per_s:
            return f"{r.trial_id} {r.img_per_s:.1f} img/s"
        return f"{r.trial_id} {r.status}" + (f" ({r.error})" if r.error else "")

    def _unfit(self, k: Knobs) -> Optional[str]:
        if k.amp in self._oom and k.batch >= self._oom[k.amp]:
            return f"batch {self._oom[k.amp]} ran out of memory with amp {show(k.amp)}, so batch {k.batch} would too"
        if k.amp in self.max_fit and k.batch > self.max_fit[k.amp]:
            return (
                f"the compute ceiling fits at most batch {self.max_fit[k.amp]} with amp {show(k.amp)}; "
                f"batch {k.batch} would run out of memory"
            )
        return None

    def _run(self, k: Knobs, why: str, stage: str, knob: Optional[str] = None, check_budget: bool = True):
        """Run `k` unless some trial already did (a configuration is never run twice outside confirmation)."""
        hit = self._first(k)
        if hit is not None or self.space.effective(k) in self._proposed:
            return hit
        if check_budget and self._spent + self.estimate_s() > self.budget_s - self._reserve_s():
            raise _OutOfBudget(knob or "", getattr(k, knob) if knob else None, self.estimate_s())
        self._proposed.add(self.space.effective(k))
        yield Proposal(k, why, None, stage)
        hit = self._first(k)
        if hit is not None and hit.status == "oom":  # at the batch that ran (a small dataset caps the one asked)
            self._oom[k.amp] = min(self._oom.get(k.amp, hit.batch_ran), hit.batch_ran)
        self._log(
            stage,
            "tried",
            f"{why}: {self._said(hit)}",
            knob,
            getattr(k, knob) if knob else None,
            hit.trial_id if hit else None,
        )
        return hit

    def _wins(self, r: Optional[TrialResult]) -> bool:
        inc = self.incumbent
        return bool(
            r is not None
            and r.status == "ok"
            and r.img_per_s
            and inc is not None
            and self.beats(self._results, r.trial_id, inc.trial_id)
        )

    def _adopt(self, r: TrialResult, knob: str) -> None:
        v = getattr(r.knobs, knob)
        self._log(
            "descent",
            "adopted",
            f"{knob} {show(v)}: {self._said(r)} beats the incumbent {self._said(self.incumbent)} beyond noise",
            knob,
            v,
            r.trial_id,
        )
        self.incumbent = r

    # -- the search -------------------------------------------------------------------------------

    def _search(self) -> Iterator[Proposal]:
        yield from self._begin()
        if self.incumbent is None:
            return self._log("start", "done", "the start configuration did not finish: nothing to search from")
        try:
            yield from self._descent()
        except _OutOfBudget as stop:
            what = f"{stop.knob} {show(stop.value)}" if stop.knob else "the next trial"
            reason = (
                f"the next trial (~{stop.estimate_s:.0f} s, median of the finished ones) would pass the budget: "
                f"{self._spent:.0f} s spent of {self.budget_s:.0f} s, {self._reserve_s():.0f} s kept for "
                "confirmation repeats" + (" and the epoch job" if self.after_trials else "")
            )
            self._log("budget", "skipped-budget", f"{what} not tried: {reason}", stop.knob or None, stop.value)
            for knob in self._pending:
                self._log(
                    "budget", "skipped-budget", f"{knob} not walked from {self.incumbent.trial_id}: {reason}", knob
                )
        yield from self._confirm()
        n, inc = len({self.space.effective(r.knobs) for r in self._results}), self.incumbent
        self._log(
            "confirm",
            "done",
            f"{n} configurations in {len(self._results)} trials, {self._spent:.0f} s of the "
            f"{self.budget_s:.0f} s budget; incumbent {self._said(inc)} "
            f"({knobs_text(inc.knobs)})",
            trial_id=inc.trial_id,
        )

    def _begin(self) -> Iterator[Proposal]:
        k = self.start
        r = yield from self._run(k, "start: the reference every gain is measured against", "start", check_budget=False)
        while r is not None and r.status == "oom":
            down, _ = neighbours(self.space, "batch", k.batch)
            if down is None:
                break
            k, was = replace(k, batch=down), k.batch
            r = yield from self._run(
                k, f"start at batch {down}: batch {was} ran out of memory", "start", "batch", check_budget=False
            )
        if r is None or r.status != "ok" or not r.img_per_s:
            return
        self.incumbent = r
        for ref in self.references:
            rr = yield from self._run(ref, f"reference: {knobs_text(ref)}", "start", check_budget=False)
            if self._wins(rr):
                self._log(
                    "start",
                    "adopted",
                    f"{self._said(rr)} beats the start {self._said(r)} beyond noise",
                    trial_id=rr.trial_id,
                )
                self.incumbent = rr

    def _current(self, knob: str) -> Any:
        """The incumbent's value as it runs (workers above the cap walk from the cap)."""
        return getattr(self.space.effective(self.incumbent.knobs), knob)

    def _order(self) -> list[str]:
        return [k for k in ORDER[self._bn(self.incumbent)] if self._candidates(k)]

    def _candidates(self, knob: str) -> list:
        """Values of `knob` other than the incumbent's (categorical knobs) or its two neighbours (ordinal)."""
        cur = self._current(knob)
        if knob in ORDINAL:
            return [v for v in neighbours(self.space, knob, cur) if v is not None]
        vals = list(self.space.values[knob])
        if knob == "nccl" and self._bn(self.incumbent) == "communication":
            vals += self.promote
        return [v for v in vals if v != cur]

    def _descent(self) -> Iterator[Proposal]:
        walked: set[tuple[str, Knobs]] = set()  # (knob, incumbent it was walked from)
        for _ in range(self.max_passes):
            moved_any, visited = False, []
            while True:
                todo = [k for k in self._order() if k not in visited and (k, self.incumbent.knobs) not in walked]
                if not todo:
                    break
                knob, self._pending = todo[0], todo[1:]
                visited.append(knob)
                walked.add((knob, self.incumbent.knobs))
                moved = yield from self._walk(knob)
                walked.add((knob, self.incumbent.knobs))
                moved_any |= moved
            self._pending = []
            if not moved_any:
                break

    def _walk(self, knob: str) -> Iterator[Proposal]:
        """Walk one knob from the incumbent; True if a value was adopted."""
        start, bn = self.incumbent, self._bn(self.incumbent)
        seen: list[TrialResult] = []
        if knob in ORDINAL:
            steps = (0, 1) if knob == "batch" and bn == "memory" else (1, 0)  # index into (down, up)
            for side in steps:
                moved = False
                while True:
                    v = neighbours(self.space, knob, self._current(knob))[side]
                    if v is None:
                        break
                    r = yield from self._try(knob, v, bn, seen)
                    if not self._wins(r):
                        break
                    self._adopt(r, knob)
                    moved = True
                if moved:
                    return True
        else:
            for v in self._candidates(knob):
                r = yield from self._try(knob, v, bn, seen)
                if self._wins(r):
                    self._adopt(r, knob)
            if self.incumbent is not start:
                return True
        tried, v = ", ".join(self._said(r) for r in seen) or "no neighbour could run", getattr(start.knobs, knob)
        self._log(
            "descent",
            "kept",
            f"{knob} {show(v)}: nothing beat {start.trial_id} beyond noise ({tried})",
            knob,
            v,
            start.trial_id,
        )
        return False

    def _try(self, knob: str, v: Any, bn: str, seen: list) -> Iterator[Proposal]:
        inc = self.incumbent
        k = replace(inc.knobs, **{knob: v})
        unfit = self._unfit(k)
        if unfit:
            self._log("descent", "pruned", unfit, knob, v)
            return None
        why = f"{knob} {show(getattr(inc.knobs, knob))} -> {show(v)} from {inc.trial_id} ({bn}-bound)"
        r = yield from self._run(k, why, "descent", knob)
        if r is not None:
            seen.append(r)
        return r

    def _confirm(self) -> Iterator[Proposal]:
        firsts = self._contender_firsts()
        for rnd in range(self.repeats):
            for first in firsts[::-1] if rnd % 2 == 0 else firsts:
                if len(self._runs(first.knobs)) >= 2 + rnd:
                    continue
                what, est = f"run {rnd + 2} of {first.trial_id}", self._cost_s(first)
                if self._spent + est + self._after_s() > self.budget_s:
                    after = f" with ~{self._after_s():.0f} s kept for the epoch job" if self.after_trials else ""
                    self._log(
                        "budget",
                        "skipped-budget",
                        f"{what} not run: {self._spent:.0f} s + ~{est:.0f} s "
                        f"passes the {self.budget_s:.0f} s budget{after}",
                        trial_id=first.trial_id,
                    )
                    continue
                yield from self._repeat(first, what)
        yield from self._noise_floor()

    def _repeat(self, first: TrialResult, what: str, why: str = "") -> Iterator[Proposal]:
        before = {r.trial_id for r in self._results}
        yield Proposal(first.knobs, f"confirmation: {what}", first.trial_id, "confirm")
        new = [r for r in self._runs(first.knobs) if r.trial_id not in before]
        last = new[-1] if new else None
        self._log("confirm", "repeat", f"{what}{why}: {self._said(last)}", trial_id=last.trial_id if last else None)

    def _noise_floor(self) -> Iterator[Proposal]:
        """Repeats while the run-to-run noise rests on fewer than target_df degrees of freedom and the
        budget allows: the contenders as they stand now, the one with the fewest runs (then the cheapest) first."""
        if self.noise_df is None:
            return
        for _ in range(2 * self.target_df):  # bounded: each repeat adds one df, a failed one none
            df = self.noise_df(self._results)
            if df >= self.target_df:
                return
            firsts = sorted(self._contender_firsts(), key=lambda f: (len(self._runs(f.knobs)), self._cost_s(f)))
            if not firsts:
                return
            first = firsts[0]
            est = self._cost_s(first)
            what = f"run {len(self._runs(first.knobs)) + 1} of {first.trial_id}"
            if self._spent + est + self._after_s() > self.budget_s:
                self._log(
                    "budget",
                    "skipped-budget",
                    f"{what} not run: the run-to-run noise rests on {df} df (of "
                    f"{self.target_df} wanted) but {self._spent:.0f} s + ~{est:.0f} s passes the "
                    f"{self.budget_s:.0f} s budget",
                    trial_id=first.trial_id,
                )
                return
            yield from self._repeat(first, what, f" (the run-to-run noise rests on {df} df; {self.target_df} wanted)")
