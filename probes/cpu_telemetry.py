"""CPU readings of a trial's process tree: the cores, the ranks, their DataLoader workers, free RAM.

"More workers did not help" is usually a machine whose cores are all busy: this is the evidence.
Process objects are kept between reads so cpu_percent() covers the interval since the last one.
"""

from __future__ import annotations

import time
from typing import Optional

import psutil

from yoloprof.records import CpuSample

MIB = 2**20
RANK_MARK = "yoloprof.worker"


class CpuReader:
    REDISCOVER_S = 1.0  # walking the tree and reading command lines is the expensive part: not every read

    def __init__(self, root_pid: Optional[int] = None):
        self.root_pid = root_pid
        self._procs: dict[int, psutil.Process] = {}
        self._cmdlines: dict[int, str] = {}
        self._tree_cache: tuple[list[psutil.Process], list[psutil.Process]] = ([], [])
        self._tree_at = -1e9
        psutil.cpu_percent(percpu=True)  # start the per-core interval

    def _tree(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        now = time.monotonic()
        if now - self._tree_at >= self.REDISCOVER_S or not self._tree_cache[0]:
            self._tree_cache, self._tree_at = self._walk(), now
        return self._tree_cache

    def _walk(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        if self.root_pid is None:
            return [], []
        try:
            everyone = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:
            return [], []
        ranks, workers, parent = [], [], {}
        for p in everyone:
            try:
                parent[p.pid] = p.ppid()
                if p.pid not in self._cmdlines:
                    self._cmdlines[p.pid] = " ".join(p.cmdline())
                if RANK_MARK in self._cmdlines[p.pid]:
                    ranks.append(p)
            except psutil.Error:
                continue
        rank_pids = {p.pid for p in ranks}
        ranks = [p for p in ranks if parent.get(p.pid) not in rank_pids]  # a worker inherits its rank's cmdline
        rank_pids = {p.pid for p in ranks}
        workers = [p for p in everyone if p.pid not in rank_pids and parent.get(p.pid) in rank_pids]
        return ranks, workers

    def _usage(self, procs: list[psutil.Process]) -> tuple[float, float]:
        cpu = rss = 0.0
        for p in procs:
            cached = self._procs.setdefault(p.pid, p)
            try:
                with cached.oneshot():
                    cpu += cached.cpu_percent(None)
                    rss += cached.memory_info().rss / MIB
            except psutil.Error:
                self._procs.pop(p.pid, None)
                self._tree_at = -1e9  # something exited: look at the tree again next read
        return cpu, rss

    def read(self, t_s: Optional[float] = None) -> CpuSample:
        t_s = time.time() if t_s is None else t_s
        ranks, workers = self._tree()
        alive = {p.pid for p in ranks + workers}
        for pid in [pid for pid in self._procs if pid not in alive]:
            del self._procs[pid]
            self._cmdlines.pop(pid, None)
        ranks_cpu, ranks_rss = self._usage(ranks)
        loader_cpu, loader_rss = self._usage(workers)
        return CpuSample(
            t_s=t_s,
            cpu_pct_per_core=[float(x) for x in psutil.cpu_percent(percpu=True)],
            loader_workers=len(workers),
            loader_cpu_pct=loader_cpu,
            loader_rss_mib=loader_rss,
            ranks_cpu_pct=ranks_cpu,
            ranks_rss_mib=ranks_rss,
            mem_available_mib=psutil.virtual_memory().available / MIB,
        )
