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

from yoloprof import pipeline, paths
from yoloprof.analysis import aggregate
from yoloprof.scan import cluster, launch
from yoloprof.scan.pool import RankPool
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


def run_one(
    spec: TrialSpec,
    tdir: Path,
    policy: launch.HangPolicy,
    progress: ScanProgress,
    stop: StopFlag,
    note: Optional[str],
    pools: Optional["Pools"] = None,
) -> tuple[TrialResult, list]:
    if tdir.exists():
        shutil.rmtree(tdir)  # a trial cut short by an earlier, interrupted run starts over
    should_stop = lambda: stop.signum is not None  # noqa: E731
    if pools is None:
        outcome = launch.run_trial(
            spec, tdir, cache_dir=paths.cache_dir(), policy=policy, on_poll=progress.poll, should_stop=should_stop
        )
    else:
        outcome = pools.get(spec).run(spec, tdir, policy=policy, on_poll=progress.poll, should_stop=should_stop)
    outcome.rank_exitcodes = aggregate.torchrun_exitcodes(
        (tdir / "launcher.log").read_text(errors="replace") if (tdir / "launcher.log").exists() else ""
    )
    write_json(tdir / pipeline.LAUNCH_FILE, outcome)
    shutil.rmtree(tdir / paths.COMPILE_CACHE, ignore_errors=True)  # hundreds of MB of kernels, measured cold once
    ranks = aggregate.read_ranks(tdir)
    result = pipeline.trial_result(tdir.parent.parent, spec.trial_id)
    if result.status != "ok":
        result.stderr_tail = _tail_logs(tdir)
    if note:
        result.notes.append(note)
    write_json(tdir / pipeline.RESULT_FILE, result)
    return result, ranks


def discard(out: Path, trial_id: str) -> None:
    """Forget a trial's folder (a resumed auto search that proposes something else under its id)."""
    tdir = paths.trial_dir(out, trial_id)
    if tdir.exists():
        shutil.rmtree(tdir)


class Pools:
    """The rank pool of the current environment; a trial with another environment, or after a
    failure, gets a new one (scan folder/pools/pool-N). N is never reused, also across resumes:
    ranks of a new pool must not find an earlier pool's job files."""

    def __init__(self, out: Path):
        self.out, self.current = out, None
        taken = [int(p.name[5:]) for p in (out / "pools").glob("pool-*") if p.name[5:].isdigit()]
        self.count = max(taken, default=0)

    def get(self, spec: TrialSpec) -> RankPool:
        if self.current is not None and not self.current.accepts(spec):
            self.current.close()
            self.current = None
        if self.current is None:
            self.count += 1
            self.current = RankPool(spec, self.out / "pools" / f"pool-{self.count}", cache_dir=paths.cache_dir())
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


class TrialRunner:
    """Runs trials one at a time and keeps every result: resume, skips, OOM chains, fatal errors.
    Used by the grid (a list known up front) and the auto search (one proposal at a time)."""

    def __init__(
        self,
        out: Path,
        meta: ScanMeta,
        policy: launch.HangPolicy,
        console: Console,
        total: Optional[int],
        reuse: bool = True,
    ):
        self.out, self.meta, self.policy = out, meta, policy
        self.ooms, self.done = OomTracker(), []
        self.stop, self.progress = StopFlag(), ScanProgress(console, total)
        self.pools = Pools(out) if reuse and meta.nnodes == 1 else None  # several nodes: a launch per trial
        self.k = 0
        self.last_kept = False  # the last run() returned a result kept from an earlier run (--resume)

    def __enter__(self):
        self.stop.__enter__()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self.pools is not None:
                self.pools.close()
        finally:
            self.progress.__exit__(*exc)
            self.stop.__exit__(*exc)

    @property
    def interrupted(self) -> Optional[int]:
        return None if self.stop.signum is None else 128 + self.stop.signum

    def run(self, spec: TrialSpec) -> TrialResult:
        """The trial's result (kept from an earlier run when it has one); raises ScanStopped on an error
        every trial would hit. Check `interrupted` after each call."""
        self.k += 1
        out, i = self.out, self.k
        tdir = paths.trial_dir(out, spec.trial_id)
        previous = pipeline.trial_result(out, spec.trial_id) if (tdir / pipeline.RESULT_FILE).is_file() else None
        self.last_kept = previous is not None and previous.status not in RESUMABLE
        if self.last_kept:
            self.progress.kept(i, previous)
            self.ooms.record(previous)
            self.done.append(previous)
            return previous
        note = None
        skip = self.ooms.skip_reason(spec)
        if skip is None and spec.knobs.cache == "ram":
            risky, note = plan.cache_ram_risk(
                self.meta.dataset.train_images, spec.imgsz, spec.world_size, spare_mib(self.meta)
            )
            skip = note if risky else None
        if skip is not None:
            if tdir.exists():
                shutil.rmtree(tdir)
            result = _not_run(spec, "skipped", skip)
            write_json(tdir / pipeline.RESULT_FILE, result)
            self.progress.skip(i, result)
            self.done.append(result)
            return result
        self.progress.start(i, spec, tdir)
        result, ranks = run_one(spec, tdir, self.policy, self.progress, self.stop, note, self.pools)
        self.progress.done(result)
        self.ooms.record(result)
        reason = fatal_reason(result, ranks, self.done) if self.stop.signum is None else None
        self.done.append(result)
        gone = cluster.lost()
        if gone is not None:
            raise ScanStopped(
                f"{gone} during trial {spec.trial_id}. What finished is written; start that node's "
                f"command again and resume on node 0 with: yoloprof scan --resume {out}"
            )
        if reason is not None:
            raise ScanStopped(
                f"trial {spec.trial_id} failed before its first step with an error every trial would hit: {reason}"
            )
        return result


def spare_mib(meta: ScanMeta) -> float:
    """The memory cache=ram's copies must fit in: --mem-limit where given (scan.json keeps it), else what the machine
    has available now (psutil, or less where the cgroup's limit leaves less)."""
    if meta.memory is not None and meta.memory.source == "override":
        return meta.memory.available_mib
    from yoloprof.probes import host_memory

    return host_memory.budget().available_mib


def execute(
    out: Path, specs: list[TrialSpec], meta: ScanMeta, policy: launch.HangPolicy, console: Console, reuse: bool = True
) -> int:
    """Run every trial without a result; 0, or 128 + the signal that interrupted the scan."""
    with TrialRunner(out, meta, policy, console, len(specs), reuse) as runner:
        for spec in specs:
            runner.run(spec)
            if runner.interrupted:
                return runner.interrupted
    return 0
