"""Run one trial: torchrun in a session of its own, a free port, the trial's environment.

Every process of a trial (torchrun, its ranks, their DataLoader workers) shares one process
group, so a timeout or an interrupt ends all of them with one killpg and nothing outlives the scan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from yoloprof.analysis.aggregate import LaunchOutcome, read_ranks
from yoloprof.nodes import free_port  # noqa: F401 - the launches' port, used here and by pool, ceilings, collective
from yoloprof.records import TrialSpec, write_json


def offline_env(cache_dir: Path) -> dict[str, str]:
    """Variables that keep Ultralytics off the network and out of the user's home folders."""
    cache_dir = Path(cache_dir)
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(cache_dir / "ultralytics"),
        "MPLCONFIGDIR": str(cache_dir / "matplotlib"),
        "HF_HUB_OFFLINE": "1",
        "YOLO_VERBOSE": "True",  # the rank logs are where a failing trial explains itself
        "PYTHONUNBUFFERED": "1",
    }


def torchrun_prefix(nproc: int, port: Optional[int] = None, rendezvous: Optional["Rendezvous"] = None) -> list[str]:
    """torchrun under the orphan guard: a local master on one node, the launch's c10d rendezvous on several."""
    from yoloprof import nodes

    if rendezvous is None:
        return [sys.executable, "-m", "yoloprof.orphan_guard"] + nodes.torchrun(nproc, master_port=port)
    return [sys.executable, "-m", "yoloprof.orphan_guard"] + nodes.torchrun(
        nproc, rendezvous.nodes, rdzv_endpoint=rendezvous.endpoint, rdzv_id=rendezvous.rdzv_id
    )


@dataclass(frozen=True)
class Rendezvous:
    """One launch across nodes: this node's place, and the launch's own c10d endpoint and id."""

    nodes: "object"  # yoloprof.nodes.Nodes
    endpoint: str
    rdzv_id: str


def torchrun_command(spec: TrialSpec, spec_path: Path, port: int, rendezvous: Optional[Rendezvous] = None) -> list[str]:
    nproc = spec.nproc_per_node if rendezvous is not None else spec.world_size
    return torchrun_prefix(nproc, port, rendezvous) + ["-m", "yoloprof.worker", str(spec_path)]


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the trial's process group, then SIGKILL whatever is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; stragglers (DataLoader workers) may remain in the group
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


GONE_TIMEOUT_S = 60.0  # a rank tearing down its CUDA context can take seconds after SIGKILL


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie has exited: it holds no memory)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def wait_gone(pgid: int, timeout_s: float = GONE_TIMEOUT_S, poll_s: float = 0.1) -> Optional[float]:
    """Seconds until the whole group had exited, or None if some process outlived timeout_s."""
    start = time.monotonic()
    while group_alive(pgid):
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(poll_s)
    return time.monotonic() - start


TELEMETRY_FILE = "telemetry.jsonl"


@dataclass
class HangPolicy:
    """When a trial counts as hung. A hard limit when the user gives one (--trial-timeout), else
    derived from the trial's own speed: no new step for 20 times its median step (at least 2
    minutes), or no first step within the start-up allowance (dataset caching can be slow)."""

    total_s: Optional[float] = None
    startup_s: float = 900.0
    stall_factor: float = 20.0
    min_stall_s: float = 120.0

    def reason(self, watch: "TrialWatch", running_s: float, still_s: float) -> Optional[str]:
        """Why the trial counts as hung now (`still_s`: time since its last new step), or None."""
        if self.total_s is not None:
            return f"--trial-timeout {self.total_s:.0f} s reached" if running_s > self.total_s else None
        limit = watch.stall_limit_s(self)
        if still_s <= limit:
            return None
        if not watch.step_ms:
            return f"no first step within {limit:.0f} s"
        return (
            f"no step for {still_s:.0f} s (limit {limit:.0f} s: {self.stall_factor:.0f} x the median step, "
            f"at least {self.min_stall_s:.0f} s)"
        )


class TrialWatch:
    """Reads the ranks' step records while the trial runs: progress for the display and the watchdog."""

    def __init__(self, trial_dir: Path, world_size: int):
        self.files = [Path(trial_dir) / f"rank{r}.jsonl" for r in range(world_size)]
        self.steps = [0] * world_size
        self.step_ms: list[float] = []
        self._offsets = [0] * world_size
        self._timed_rank: Optional[int] = None  # rank 0, or on several nodes the first rank of this node

    def poll(self) -> bool:
        """Read what the ranks appended; True if any rank finished a step since the last poll."""
        moved = False
        for r, path in enumerate(self.files):
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[r])
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # only whole lines; a line being written waits for the next poll
            self._offsets[r] += end
            for line in chunk[:end].splitlines():
                if b'"kind": "step"' in line:
                    self.steps[r] += 1
                    moved = True
                    if self._timed_rank is None:
                        self._timed_rank = r
                    if r == self._timed_rank:
                        try:
                            self.step_ms.append(float(json.loads(line)["step_ms"]))
                        except (ValueError, KeyError):
                            pass
        return moved

    def stall_limit_s(self, policy: HangPolicy) -> float:
        if not self.step_ms:
            return policy.startup_s
        typical = sorted(self.step_ms)[len(self.step_ms) // 2] / 1e3
        return max(policy.min_stall_s, policy.stall_factor * typical)


class TrialClock:
    """One trial's watch loop step, shared by a launch per trial and a rank pool: new steps reset the
    stall clock, the hang rule and a stop request end the wait."""

    def __init__(
        self,
        watch: "TrialWatch",
        policy: HangPolicy,
        start: float,
        on_poll: Optional[Callable] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        abort: Optional[Callable[[], Optional[str]]] = None,
    ):
        self.watch, self.policy, self.start, self.last_move = watch, policy, start, time.monotonic()
        self.on_poll, self.should_stop, self.abort = on_poll, should_stop, abort
        self.timeout_reason: Optional[str] = None
        self.node_failure: Optional[str] = None  # another node is gone or could not launch
        self.interrupted = False

    def poll(self) -> None:
        if self.watch.poll():
            self.last_move = time.monotonic()
        if self.on_poll is not None:
            self.on_poll(self.watch)

    def must_end(self) -> bool:
        """Hung by the policy, another node lost, or asked to stop (Ctrl-C, SIGTERM)."""
        now = time.monotonic()
        self.timeout_reason = self.policy.reason(self.watch, now - self.start, now - self.last_move)
        if self.timeout_reason is None and self.abort is not None:
            self.node_failure = self.abort()
        if self.timeout_reason is None and self.node_failure is None and self.should_stop is not None:
            self.interrupted = bool(self.should_stop())
        return self.timeout_reason is not None or self.node_failure is not None or self.interrupted


def run_trial(
    spec: TrialSpec,
    trial_dir: Path,
    *,
    cache_dir: Path,
    policy: HangPolicy = HangPolicy(),
    on_poll: Optional[Callable[[TrialWatch], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    extra_env: Optional[dict[str, str]] = None,
    telemetry_interval_s: float = 0.1,
    rendezvous: Optional[Rendezvous] = None,
) -> LaunchOutcome:
    """One trial's launch on this node. A trial over several nodes (`spec.nnodes` > 1) is published to
    the other nodes first (yoloprof.scan.cluster); a follower passes the `rendezvous` it was handed."""
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    spec_path = trial_dir / "spec.json"
    write_json(spec_path, spec)
    job, rendezvous = _published(spec, rendezvous)
    env = {**os.environ, **offline_env(cache_dir), **spec.env, **(extra_env or {})}
    cmd = torchrun_command(spec, spec_path, free_port(), rendezvous)
    (trial_dir / "cmd.txt").write_text(" ".join(cmd) + "\n")
    watch = TrialWatch(trial_dir, spec.world_size)
    start = time.monotonic()
    clock = TrialClock(watch, policy, start, on_poll, should_stop, abort=job.failure if job else None)
    from yoloprof.probes.telemetry import TelemetrySampler

    sampler = TelemetrySampler(
        trial_dir / TELEMETRY_FILE, interval_s=telemetry_interval_s, gpus=spec.gpus if spec.device == "cuda" else []
    )
    from yoloprof.probes.gpu_release import ReleaseWatch

    release = ReleaseWatch(spec.gpus if spec.device == "cuda" else [])  # the GPUs' memory before the trial
    with open(trial_dir / "launcher.log", "wb") as log, sampler:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        sampler.attach(proc.pid)
        try:
            while proc.poll() is None:
                clock.poll()
                if clock.must_end():
                    break
                time.sleep(0.25)
        finally:
            kill_group(proc)
    wall_s = time.monotonic() - start
    watch.poll()
    outcome = LaunchOutcome(
        returncode=proc.returncode,
        timed_out=clock.timeout_reason is not None,
        interrupted=clock.interrupted,
        wall_s=wall_s,
        timeout_reason=clock.timeout_reason,
        node_failure=clock.node_failure,
    )
    if job is not None:  # the other nodes' records, whatever happened here
        from yoloprof.scan import cluster

        outcome.node_failure = outcome.node_failure or job.finish(trial_dir)
        outcome.node_lost = cluster.lost() is not None
    _wait_released(proc, trial_dir, release, outcome)
    return outcome


def _published(spec: TrialSpec, rendezvous: Optional[Rendezvous]):
    """(the job, the rendezvous): a trial over several nodes is published to the other nodes first, by node 0."""
    if spec.nnodes <= 1 or rendezvous is not None:
        return None, rendezvous
    from yoloprof.records import to_dict
    from yoloprof.scan import cluster

    lead = cluster.active()
    job = lead.job("trial", {"spec": to_dict(spec)})
    return job, Rendezvous(lead.nodes, job.rdzv_endpoint, job.rdzv_id)


def _wait_released(proc: subprocess.Popen, trial_dir: Path, release, outcome: LaunchOutcome) -> None:
    """The next trial must never meet this one's processes or GPU memory: wait for both, noting what outlived it."""
    release_s = wait_gone(proc.pid)
    if release_s is None:
        outcome.release_note = f"processes of this trial outlived {GONE_TIMEOUT_S:.0f} s after being killed"
    try:
        waited_s, held = release.wait(_rank_pids(trial_dir))
    finally:
        release.close()
    outcome.release_s = (release_s or 0.0) + waited_s
    if held is not None:
        outcome.release_note = f"GPU memory not released {waited_s:.0f} s after the trial ended: {held}"


def _rank_pids(trial_dir: Path) -> set[int]:
    return {r.info.pid for r in read_ranks(trial_dir) if r.info is not None}
