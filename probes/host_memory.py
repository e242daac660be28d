"""What memory the machine can spare for a dataset's pages: psutil's available memory, and the cgroup's.

A container or a SLURM job is often limited by its cgroup far below the machine's free memory, and
the page cache it fills counts against that limit: the dataset fits only in the smaller of the two.
The cgroup's own file pages are reclaimable, so they count as spare (as psutil counts the machine's).
cgroup v2 (memory.max, memory.current, memory.stat `file`) and v1 (memory.limit_in_bytes,
memory.usage_in_bytes, memory.stat `total_cache`); every ancestor up to the mount is read, since a
parent's limit binds too. Reads files and psutil only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from yoloprof.probes import environment
from yoloprof.records import MemoryBudget

MIB = 2**20
UNLIMITED = 2**60  # v1 writes "no limit" as a page-rounded 2^63 - 1


def _int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        v = int(text)
    except ValueError:
        return None
    return None if v >= UNLIMITED else v


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_paths(proc_cgroup: str) -> tuple[Optional[str], Optional[str]]:
    """(v2 path, v1 memory path) of this process, from /proc/self/cgroup's text."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _chain(mount: Path, rel: str) -> list[Path]:
    """The cgroup's folder and its ancestors up to the mount (a namespaced cgroup is the mount itself)."""
    here = mount / rel.lstrip("/")
    if not here.is_dir():
        here = mount
    out = [here]
    while out[-1] != mount and mount in out[-1].parents:
        out.append(out[-1].parent)
    return out


def cgroup_spare(
    root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")
) -> tuple[Optional[float], Optional[float]]:
    """(limit MiB, spare MiB) of the tightest memory limit over this process's cgroup and its ancestors;
    (None, None) where no limit applies or none can be read."""
    try:
        v2, v1 = _own_paths(proc.read_text())
    except OSError:
        return None, None
    best: Optional[tuple[int, int]] = None  # (limit, spare) bytes
    levels = []
    if v2 is not None and (root / "cgroup.controllers").is_file():
        levels = [(d / "memory.max", d / "memory.current", d / "memory.stat", "file") for d in _chain(root, v2)]
    elif v1 is not None and (root / "memory").is_dir():
        levels = [
            (d / "memory.limit_in_bytes", d / "memory.usage_in_bytes", d / "memory.stat", "total_cache")
            for d in _chain(root / "memory", v1)
        ]
    for limit_f, usage_f, stat_f, key in levels:
        limit = _int(limit_f)
        if limit is None:
            continue
        usage = _int(usage_f) or 0
        spare = max(limit - usage + _stat(stat_f, key), 0)
        if best is None or spare < best[1]:
            best = (limit, spare)
    if best is None:
        return None, None
    return best[0] / MIB, min(best[1], best[0]) / MIB


def budget(override_mib: Optional[float] = None, override_text: Optional[str] = None) -> MemoryBudget:
    """The memory the fit test uses: the override where given, else the smaller of psutil's and the cgroup's."""
    avail = environment.available_ram_mib()  # psutil's available memory
    limit, spare = cgroup_spare()
    out = MemoryBudget(
        available_mib=avail, source="psutil", psutil_available_mib=avail, cgroup_limit_mib=limit, cgroup_spare_mib=spare
    )
    if spare is not None and spare < avail:
        out.available_mib, out.source = spare, "cgroup"
    if override_mib is not None:
        out.available_mib, out.source, out.override = override_mib, "override", override_text
    return out
