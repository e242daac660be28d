"""Rank pools: one torchrun launch that runs a sequence of trials sharing an environment.

Most of a short trial's wall time is fixed cost: torchrun start, imports, the process group, CUDA
and NCCL initialisation. A pool pays it once per environment (world size, device, GPUs, NCCL
variables, OMP threads, and `deterministic`, whose CUBLAS_WORKSPACE_CONFIG cuBLAS reads once per process:
TrialSpec.env_key) and hands its ranks one trial at a time through job
files (job-0001.json, ...). Each trial still builds its own trainer, model, optimizer, dataloader
and DDP wrapper in the ranks (yoloprof.worker). Isolation is kept by never trusting a pool after a
failure: a trial that does not end `ok` on every rank (OOM, error, hang, killed rank, interrupt)
ends its pool, and the next trial gets a fresh launch.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from yoloprof.analysis.aggregate import LaunchOutcome, read_ranks
from yoloprof.records import TrialSpec, write_json
from yoloprof.scan import launch

EXIT_GRACE_S = 30.0  # a rank that failed leaves the pool; torchrun then needs a moment to stop its peers


def _write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    write_json(tmp, obj)
    os.replace(tmp, path)  # a rank polling for the file never reads half of it


def _ends(trial_dir: Path, world_size: int) -> list[Optional[str]]:
    """Each rank's end status once its end record is written (None before)."""
    out: list[Optional[str]] = []
    for r in range(world_size):
        path = trial_dir / f"rank{r}.jsonl"
        try:
            tail = path.read_bytes()[-4096:]
        except OSError:
            out.append(None)
            continue
        status = None
        for line in tail.splitlines():
            if line.startswith(b'{"kind": "end"'):
                status = "ok" if b'"status": "ok"' in line else "failed"
        out.append(status)
    return out


class RankPool:
    """Ranks that stay up between trials. `run` one trial at a time; `alive` says whether the next
    trial may reuse them; `close` ends the launch and waits until its processes and GPU memory are gone."""

    def __init__(self, first: TrialSpec, pool_dir: Path, *, cache_dir: Path, telemetry_interval_s: float = 0.1):
        self.key = first.env_key
        self.world_size, self.device, self.gpus = first.world_size, first.device, list(first.gpus)
        self.dir = Path(pool_dir)
        self.dir.mkdir(parents=True, exist_ok=False)  # a fresh folder: no job file of another pool
        self.cache_dir, self.telemetry_interval_s = cache_dir, telemetry_interval_s
        self.jobs = 0
        self.trials: list[Path] = []  # the trial folders it ran, for their ranks' PIDs at close
        self._log = open(self.dir / "launcher.log", "wb")
        env = {**os.environ, **launch.offline_env(cache_dir), **first.env}
        cmd = launch.torchrun_prefix(first.world_size, launch.free_port()) + [
            "-m",
            "yoloprof.worker",
            "--pool",
            str(self.dir),
        ]
        (self.dir / "cmd.txt").write_text(" ".join(cmd) + "\n")
        from yoloprof.probes.gpu_release import ReleaseWatch

        self._release = ReleaseWatch(self.gpus if self.device == "cuda" else [])  # memory before the pool
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def accepts(self, spec: TrialSpec) -> bool:
        return self.alive and spec.env_key == self.key

    def run(
        self,
        spec: TrialSpec,
        trial_dir: Path,
        *,
        policy: launch.HangPolicy = launch.HangPolicy(),
        on_poll: Optional[Callable] = None,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> LaunchOutcome:
        """One trial in the pool. Its wall time runs from the job (or the launch, for the pool's first
        trial) to the last rank's end record, so a pool's trials add up to its wall time."""
        trial_dir = Path(trial_dir)
        trial_dir.mkdir(parents=True, exist_ok=True)
        spec_path = trial_dir / "spec.json"
        write_json(spec_path, spec)
        (trial_dir / "cmd.txt").write_text(
            f"rank pool {self.dir} (job {self.jobs + 1}): " + (self.dir / "cmd.txt").read_text()
        )
        log_from = self._log.tell()
        start = self.started if not self.trials else time.monotonic()
        self.jobs += 1
        self.trials.append(trial_dir)
        _write_atomic(self.dir / f"job-{self.jobs:04d}.json", {"spec": str(spec_path.resolve())})
        watch = launch.TrialWatch(trial_dir, spec.world_size)
        clock = launch.TrialClock(watch, policy, start, on_poll, should_stop)
        ends = [None] * spec.world_size
        from yoloprof.probes.telemetry import TelemetrySampler

        sampler = TelemetrySampler(
            trial_dir / launch.TELEMETRY_FILE,
            interval_s=self.telemetry_interval_s,
            gpus=self.gpus if self.device == "cuda" else [],
            mem_used_before_launch_mib=self._release.baseline_mib or None,
        )
        with sampler:
            sampler.attach(self.proc.pid)
            while True:
                clock.poll()
                ends = _ends(trial_dir, spec.world_size)
                if all(e is not None for e in ends) or self.proc.poll() is not None:
                    break
                if clock.must_end():
                    break
                time.sleep(0.05)
        wall_s = time.monotonic() - start
        timeout_reason, interrupted = clock.timeout_reason, clock.interrupted
        ok = all(e == "ok" for e in ends) and timeout_reason is None and not interrupted
        if not ok:  # a failed rank leaves the pool by itself; a hang or an interrupt is ended here
            if timeout_reason is None and not interrupted:
                try:
                    self.proc.wait(timeout=EXIT_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            self.close(kill=True)
        watch.poll()
        (trial_dir / "launcher.log").write_bytes(_read_from(self.dir / "launcher.log", log_from))
        returncode = 0 if ok else self.proc.returncode
        outcome = LaunchOutcome(
            returncode=returncode,
            timed_out=timeout_reason is not None,
            interrupted=interrupted,
            wall_s=wall_s,
            timeout_reason=timeout_reason,
        )
        if not ok:
            outcome.release_s, outcome.release_note = self.release_s, self.release_note
        return outcome

    release_s: Optional[float] = None
    release_note: Optional[str] = None

    def close(self, kill: bool = False) -> None:
        """End the launch: ask the ranks to leave (or kill them), then wait until nothing of it is left."""
        if self.closed:
            return
        self.closed = True
        if not kill and self.proc.poll() is None:
            _write_atomic(self.dir / f"job-{self.jobs + 1:04d}.json", {"stop": True})
            try:
                self.proc.wait(timeout=EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        launch.kill_group(self.proc)
        gone_s = launch.wait_gone(self.proc.pid)
        if gone_s is None:
            self.release_note = f"processes of this rank pool outlived {launch.GONE_TIMEOUT_S:.0f} s after being killed"
        try:
            pids = {r.info.pid for t in self.trials for r in read_ranks(t) if r.info is not None}
            waited_s, held = self._release.wait(pids)
        finally:
            self._release.close()
        self.release_s = (gone_s or 0.0) + waited_s
        if held is not None:
            self.release_note = f"GPU memory not released {waited_s:.0f} s after the ranks ended: {held}"
        self._log.close()


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""
