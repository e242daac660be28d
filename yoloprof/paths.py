"""Where yoloprof keeps things: its cache (datasets, Ultralytics settings) and scan folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

SCAN_MARKER = "scan.json"


def cache_dir() -> Path:
    if os.environ.get("YOLOPROF_CACHE"):
        return Path(os.environ["YOLOPROF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "yoloprof"


def next_run_dir(kind: str = "scan", root: Path = Path("runs/yoloprof")) -> Path:
    """runs/yoloprof/<kind>-N with N one above the highest present: an earlier run is never overwritten."""
    taken = [int(m.group(1)) for p in root.glob(f"{kind}-*") if (m := re.fullmatch(rf"{kind}-(\d+)", p.name))]
    return root / f"{kind}-{max(taken, default=0) + 1}"


def trial_dir(scan_dir: Path, trial_id: str) -> Path:
    return Path(scan_dir) / "trials" / trial_id


COMPILE_CACHE = "compile-cache"  # a compile trial's own compiler cache, in its folder; removed after the trial
