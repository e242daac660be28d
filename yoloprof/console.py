"""Live progress while trials run: trial k of n, its settings, its steps, its result as it lands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from yoloprof.analysis.ranking import knob_text
from yoloprof.records import TrialResult, TrialSpec


def _interval(r: TrialResult) -> str:
    """' (+-3.1%, 95%)' for a trial with a within-run interval, ' (no interval: ...)' for one without."""
    if r.img_per_s_ci_low is not None and r.img_per_s_ci_high is not None and r.img_per_s:
        return f" (±{100 * (r.img_per_s_ci_high - r.img_per_s_ci_low) / 2 / r.img_per_s:.1f}%, 95%)"
    if r.img_per_s_ci_method:
        return f" ({r.img_per_s_ci_method})"
    return ""


class ScanProgress:
    def __init__(self, console: Console, total: Optional[int]):  # None: not known ahead (auto search)
        self.console = console
        self.total = total
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._trials = None
        self._steps = None
        self._spec: Optional[TrialSpec] = None
        self._seen = 0
        self._k = 0

    def _of(self, k: int) -> str:
        return f"{k}/{self.total}" if self.total is not None else str(k)

    def __enter__(self):
        self.progress.__enter__()
        self._trials = self.progress.add_task("trials", total=self.total)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start(self, k: int, spec: TrialSpec, trial_dir: Path) -> None:
        self._spec, self._seen, self._k = spec, 0, k
        desc = f"trial {self._of(k)} {spec.trial_id}"
        if self._steps is None:
            self._steps = self.progress.add_task(desc, total=spec.total_steps)
        else:
            self.progress.reset(self._steps, total=spec.total_steps, description=desc)

    def poll(self, watch) -> None:
        seen = min(watch.steps) if watch.steps else 0  # the slowest rank's steps
        if seen != self._seen:
            self._seen = seen
            self.progress.update(self._steps, completed=seen)

    def kept(self, k: int, r: TrialResult) -> None:
        self.progress.advance(self._trials)
        self.console.print(f"[{self._of(k)}] {r.trial_id}: kept from the earlier run ({r.status})")

    def skip(self, k: int, r: TrialResult) -> None:
        self.progress.advance(self._trials)
        self.console.print(f"[{self._of(k)}] {r.trial_id}: [yellow]skipped[/] {r.error}")

    def done(self, r: TrialResult) -> None:
        self.progress.advance(self._trials)
        head = f"[{self._of(self._k)}] {r.trial_id}  ({knob_text(r)})"
        if r.status == "ok":
            self.console.print(
                f"{head}: [bold]{r.img_per_s:.1f} img/s[/]{_interval(r)}, step {r.step_ms_p50:.0f} ms, "
                f"data wait {100 * (r.data_wait_frac or 0):.0f}%"
                + (f", exposed AllReduce {100 * r.comm_frac:.0f}%" if r.comm_frac is not None else "")
            )
        else:
            self.console.print(f"{head}: [red]{r.status}[/] {r.error or ''}")
        if r.repeat_of:
            self.console.print(f"  (a repeat of {r.repeat_of}: the same settings again, for the run-to-run noise)")
        if r.batch_capped:  # the dataset (or a rank's shard of it) holds fewer images than the batch asked
            for note in [n for n in r.notes if n.startswith("ran at batch")]:
                self.console.print(f"  [yellow]note[/]: {note}", highlight=False)
