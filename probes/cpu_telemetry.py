"""CPU readings of a trial's process tree: the cores, the ranks, their DataLoader workers, free RAM.

"More workers did not help" is usually a machine whose cores are all busy: this is the evidence.
Process objects are kept between reads so cpu_percent() covers the interval since the last one
(a process seen for the first time counts 0 in that read: it has no interval yet).

Finding the tree costs a read of every process on the machine (psutil walks all of /proc for
children(recursive=True)): milliseconds on a busy box, too much every 100 ms. So the tree is
walked once a second, or at once when one of its processes is gone, and each read between
looks only at the processes already known.
"""

from __future__ import annotations

import time
from typing import Optional

import psutil

from yoloprof.records import CpuSample

MIB = 2**20
RANK_MARK = "yoloprof.worker"  # in every rank's command line (python -u -m yoloprof.worker spec.json)
LAUNCHERS = ("torch.distributed.run", "torchrun")  # ... and in torchrun's, which is no rank


def is_rank_cmdline(cmdline: list[str]) -> bool:
    launcher = any(a == m or a.endswith("/" + m) for a in cmdline for m in LAUNCHERS)
    return not launcher and any(RANK_MARK in a for a in cmdline)


def busy_pct(before, after) -> float:
    """A core's busy % between two psutil.cpu_times readings, as psutil.cpu_percent computes it: all time
    less idle and iowait, guest time left out of the total (Linux counts it in user and nice too)."""
    delta = {f: max(getattr(after, f) - getattr(before, f), 0.0) for f in after._fields}
    total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
    busy = total - delta.get("idle", 0.0) - delta.get("iowait", 0.0)
    return round(100.0 * busy / total, 1) if total > 0 else 0.0


class CpuReader:
    WALK_S = 1.0  # walk the tree at most this often...
    WALK_SHARE = 0.01  # ...and less often if a walk would take more than this share of the time
    # The kernel counts CPU time in clock ticks (10 ms): a per-core reading over less than this many seconds is
    # all zeros or one tick's noise, so it is left empty (not measured) rather than written as idle cores.
    CORES_MIN_S = 0.05

    def __init__(self, root_pid: Optional[int] = None):
        self.root_pid = root_pid  # torchrun or a wrapper of it; may be set later (the sampler starts first)
        self._procs: dict[int, psutil.Process] = {}  # pid -> the Process whose cpu_percent() has a baseline
        self._marked: dict[int, bool] = {}  # pid -> a rank's command line (read once per process)
        self._ranks: list[psutil.Process] = []
        self._workers: list[psutil.Process] = []
        self._root: Optional[psutil.Process] = None
        self._next_walk = 0.0  # time.monotonic() of the next walk
        # The per-core baseline is the reader's own: psutil.cpu_percent keeps one per thread, so a reader made
        # in one thread and read in another (the sampler's) read [0.0, 0.0] first, a second after its start.
        self._cores, self._cores_t = psutil.cpu_times(percpu=True), time.monotonic()

    def _walk(self) -> None:
        """Find the ranks (a rank's command line, a parent without one: a forked DataLoader worker
        inherits its rank's) and the loader workers (any descendant of a rank)."""
        t0 = time.monotonic()
        try:
            if self._root is None or self._root.pid != self.root_pid:
                self._root = psutil.Process(self.root_pid)
            found = self._root.children(recursive=True)
        except psutil.Error:
            found = []
        procs, parent = {}, {}
        for p in found:
            old = self._procs.get(p.pid)
            p = old if old is not None and old == p else p  # equality includes the start time: pid reuse is new
            try:
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:
                        continue  # exited, not yet reaped by its parent
                    ppid = p.ppid()
                if p.pid not in self._marked or old is not p:
                    self._marked[p.pid] = is_rank_cmdline(p.cmdline())
            except psutil.Error:
                continue  # gone, or not ours to read
            procs[p.pid], parent[p.pid] = p, ppid
        self._procs = procs
        self._marked = {pid: m for pid, m in self._marked.items() if pid in procs}
        marked = {pid for pid, m in self._marked.items() if m}
        ranks = {pid for pid in marked if parent[pid] not in marked}
        workers, frontier = set(), ranks
        while frontier:
            frontier = {pid for pid, pp in parent.items() if pp in frontier and pid not in workers}
            workers |= frontier
        self._ranks = [procs[pid] for pid in sorted(ranks)]
        self._workers = [procs[pid] for pid in sorted(workers)]
        now = time.monotonic()
        self._next_walk = now + max(self.WALK_S, (now - t0) / self.WALK_SHARE)

    def _usage(self, procs: list[psutil.Process]) -> tuple[int, float, float]:
        """(alive, CPU % summed, RSS MiB summed)."""
        alive, cpu, rss = 0, 0.0, 0.0
        for p in procs:
            try:
                with p.oneshot():  # one read of /proc/<pid>/stat for status and CPU
                    if p.status() == psutil.STATUS_ZOMBIE:
                        raise psutil.ZombieProcess(p.pid)  # exited since the walk: no longer a worker
                    c, r = p.cpu_percent(None), p.memory_info().rss / MIB
            except psutil.Error:
                self._next_walk = 0.0  # the tree changed: look again next read
                continue
            alive, cpu, rss = alive + 1, cpu + c, rss + r
        return alive, cpu, rss

    def read(self, t_s: Optional[float] = None) -> CpuSample:
        t_s = time.time() if t_s is None else t_s
        now = time.monotonic()
        if now - self._cores_t >= self.CORES_MIN_S:
            cores = psutil.cpu_times(percpu=True)
            per_core = [busy_pct(a, b) for a, b in zip(self._cores, cores)]
            self._cores, self._cores_t = cores, now
        else:
            per_core = []  # too short an interval to mean anything; the baseline stays for the next read
        if self.root_pid is not None and (
            time.monotonic() >= self._next_walk or self._root is None or self._root.pid != self.root_pid
        ):
            self._walk()
        _, ranks_cpu, ranks_rss = self._usage(self._ranks)
        workers, loader_cpu, loader_rss = self._usage(self._workers)
        return CpuSample(
            t_s=t_s,
            cpu_pct_per_core=per_core,
            loader_workers=workers,
            loader_cpu_pct=loader_cpu,
            loader_rss_mib=loader_rss,
            ranks_cpu_pct=ranks_cpu,
            ranks_rss_mib=ranks_rss,
            mem_available_mib=psutil.virtual_memory().available / MIB,
        )
