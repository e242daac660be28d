"""The trial loop of a scan: run each planned trial, keep every result, survive every failure.

A result is written (atomically) the moment its trial ends, so a scan killed at any point loses at
most the trial that was running, and `--resume` runs only what has no result. SIGINT/SIGTERM end
the running trial cleanly and the scan writes what finished.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Optional

from rich.console import Console

from yoloprof import outputs, paths
from yoloprof.analysis import aggregate
from yoloprof.scan import launch
from yoloprof.search import plan
from yoloprof.console import ScanProgress
from yoloprof.analysis.failures import OomTracker, fatal_reason
from yoloprof.records import ScanMeta, TrialResult, TrialSpec, write_json

RESUMABLE = ("interrupted",)  # statuses that --resume runs again


class StopFlag:
    """SIGINT/SIGTERM: remember the signal; the loop ends the trial and the scan exits 128 + signal."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._saved = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


class ScanStopped(Exception):
    """A failure every trial would hit: the scan stops with this reason."""


def _tail_logs(tdir: Path) -> list[str]:
    tails = []
    for log in sorted(tdir.glob("rank*.log")):
        tails += [f"[{log.stem}] {line}" for line in aggregate.log_tail(log, 12)]
    return tails or [f"[launcher] {line}" for line in aggregate.log_tail(tdir / "launcher.log", 12)]


def _not_run(spec: TrialSpec, status: str, why: str) -> TrialResult:
    return TrialResult(spec.trial_id, status, spec.knobs, spec.world_size, spec.device, error=why)


def run_one(spec: TrialSpec, tdir: Path, policy: launch.HangPolicy, progress: ScanProgress, stop: StopFlag,
            note: Optional[str]) -> tuple[TrialResult, list]:  # fmt: skip
    if tdir.exists():
        shutil.rmtree(tdir)  # a trial cut short by an earlier, interrupted run starts over
    outcome = launch.run_trial(spec, tdir, cache_dir=paths.cache_dir(), policy=policy, on_poll=progress.poll,
                               should_stop=lambda: stop.signum is not None)  # fmt: skip
    outcome.rank_exitcodes = aggregate.torchrun_exitcodes(
        (tdir / "launcher.log").read_text(errors="replace") if (tdir / "launcher.log").exists() else "")
    write_json(tdir / outputs.LAUNCH_FILE, outcome)
    ranks = aggregate.read_ranks(tdir)
    result = outputs.trial_result(tdir.parent.parent, spec.trial_id)
    if result.status != "ok":
        result.stderr_tail = _tail_logs(tdir)
    if note:
        result.notes.append(note)
    write_json(tdir / outputs.RESULT_FILE, result)
    return result, ranks


def execute(out: Path, specs: list[TrialSpec], meta: ScanMeta, policy: launch.HangPolicy, console: Console) -> int:
    """Run every trial without a result; 0, or 128 + the signal that interrupted the scan."""
    ooms, done = OomTracker(), []
    with StopFlag() as stop, ScanProgress(console, len(specs)) as progress:
        for i, spec in enumerate(specs, start=1):
            tdir = paths.trial_dir(out, spec.trial_id)
            previous = outputs.trial_result(out, spec.trial_id) if (tdir / outputs.RESULT_FILE).is_file() else None
            if previous is not None and previous.status not in RESUMABLE:
                progress.kept(i, previous)
                ooms.record(previous)
                done.append(previous)
                continue
            note = None
            skip = ooms.skip_reason(spec)
            if skip is None and spec.knobs.cache == "ram":
                from probes.environment import available_ram_mib

                risky, note = plan.cache_ram_risk(meta.dataset.train_images, spec.imgsz, spec.world_size,
                                                  available_ram_mib())  # fmt: skip
                skip = note if risky else None
            if skip is not None:
                if tdir.exists():
                    shutil.rmtree(tdir)
                result = _not_run(spec, "skipped", skip)
                write_json(tdir / outputs.RESULT_FILE, result)
                progress.skip(i, result)
                continue
            progress.start(i, spec, tdir)
            result, ranks = run_one(spec, tdir, policy, progress, stop, note)
            progress.done(result)
            ooms.record(result)
            if stop.signum is not None:
                return 128 + stop.signum
            reason = fatal_reason(result, ranks, done)
            done.append(result)
            if reason is not None:
                raise ScanStopped(f"trial {spec.trial_id} failed before its first step with an error every trial "
                                  f"would hit: {reason}")  # fmt: skip
    return 0
