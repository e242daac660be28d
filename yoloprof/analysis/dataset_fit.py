"""Does the dataset fit in the memory the machine can spare, and what does an epoch read at when it does not? Pure.

Trials read a few hundred batches; after the first pass their images come from the page cache, and
so does every later epoch of a run whose files fit in memory. A dataset larger than that is read
from storage every epoch: the loaders' cold rate (the input ceiling after the files were evicted,
probes/loader_bench.py) then caps training, whatever the trials measured. With cache=ram each rank
also keeps its own decoded copy (Ultralytics caches per rank), which must fit beside the rest.

The memory comes from scan.json (records.MemoryBudget: psutil, the cgroup limit, or --mem-limit), so
`yoloprof report` decides as the scan did.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Union

from yoloprof.analysis.epoch import duration
from yoloprof.errors import UsageError
from yoloprof.records import DatasetInfo, EpochPrediction, LoaderCeiling, LoaderPoint, MemoryBudget, TrialResult

MIB = 2**20
# The share of the spare memory the dataset's pages (or cache=ram copies) may take: the ranks, their workers and
# the model need the rest (the same 80% rule as search.plan.cache_ram_risk).
FIT_SHARE = 0.8
_UNITS = {
    "": MIB,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": MIB,
    "mb": 10**6,
    "mib": MIB,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}

Cap = tuple[float, Optional[float], Optional[float]]  # a rate (img/s) with its 95% interval (None: unknown)


def parse_mem_limit(text: str, flag: str = "--mem-limit") -> float:
    """'512MiB', '1.5GiB', '800MB', '2G' -> MiB (a bare number is MiB); one line and exit 2 otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    said = f"{flag} {text}" if flag.startswith("-") else f"{flag}={text}"  # a flag, or an environment variable
    if not m or unit not in _UNITS:
        raise UsageError(
            f"{said}: give the memory the dataset may use, e.g. 512MiB, 1.5GiB or 800MB (a bare number is MiB)"
        )
    mib = float(m.group(1)) * _UNITS[unit] / MIB
    if not mib > 0 or not math.isfinite(mib):
        raise UsageError(f"{said}: the memory must be more than 0")
    return mib


def size_text(nbytes: Optional[float]) -> str:
    if nbytes is None:
        return "n/a"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", MIB), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


SOURCES = {"psutil": "available memory, psutil", "cgroup": "the cgroup's memory limit", "override": "--mem-limit"}


@dataclass
class DatasetFit:
    fits: Optional[bool]  # the files an epoch reads fit in FIT_SHARE of the spare memory; None: unknown (`why`)
    epoch_bytes: Optional[int] = None  # the train and val images: what an epoch reads through the page cache
    available_mib: Optional[float] = None
    source: Optional[str] = None  # MemoryBudget.source
    ram_copies_mib: Optional[float] = None  # cache=ram: every rank's decoded copy, at most imgsz x imgsz x 3 an image
    ram_fits: Optional[bool] = None
    why: Optional[str] = None  # why `fits` is None

    @property
    def where(self) -> str:
        return SOURCES.get(self.source or "", self.source or "n/a")


def decoded_mib(train_images: int, imgsz: int) -> float:
    """One rank's cache=ram copy, at most: Ultralytics resizes the long side to imgsz and keeps uint8 BGR."""
    return train_images * imgsz * imgsz * 3 / MIB


def decide(dataset: DatasetInfo, memory: Optional[MemoryBudget], imgsz: int, ranks: int) -> DatasetFit:
    if memory is None:
        return DatasetFit(None, why="the scan recorded no memory reading (a scan from before the fit test)")
    out = DatasetFit(None, available_mib=memory.available_mib, source=memory.source)
    out.ram_copies_mib = decoded_mib(dataset.train_images, imgsz) * max(ranks, 1)
    out.ram_fits = out.ram_copies_mib <= FIT_SHARE * memory.available_mib
    if dataset.train_bytes is None or dataset.val_bytes is None:
        out.why = "the image files' sizes were not recorded"
        return out
    out.epoch_bytes = dataset.train_bytes + dataset.val_bytes
    out.fits = out.epoch_bytes / MIB <= FIT_SHARE * memory.available_mib
    return out


def summary(fit: DatasetFit) -> str:
    """'1.2 GiB of images, 0.5 GiB to spare (--mem-limit): does not fit, epochs read from storage'."""
    if fit.available_mib is None:
        return "n/a (no reading)"
    head = f"{size_text(fit.epoch_bytes)} of images, {size_text(fit.available_mib * 2**20)} to spare ({fit.where})"
    if fit.fits is None:
        return f"{head}: whether it fits is n/a ({fit.why})"
    return head + (
        ": fits in the page cache"
        if fit.fits
        else ": does not fit, epochs read it from storage (the input ceiling times it cold too)"
    )


COLD_ANYWAY_BYTES = 2**30  # a dataset that fits is still timed cold up to this size: its read-back costs little


def cold_skip(fit: DatasetFit) -> Optional[str]:
    """Why the input ceiling skips its cold window, or None to time it. Each loader point evicts the files and reads
    them back afterwards (so the next point and the trials find the page cache as it was): where a large dataset
    fits, that is its whole size read again per point, to time a case its epochs never meet."""
    if fit.fits is True and (fit.epoch_bytes or 0) > COLD_ANYWAY_BYTES:
        return (
            f"not timed: the dataset's {size_text(fit.epoch_bytes)} fit in memory, so epochs read them warm, and "
            "a cold window would re-read them per loader point"
        )
    return None


def cold_point(r: TrialResult, loader: Optional[LoaderCeiling]) -> Union[LoaderPoint, str]:
    """The input-ceiling point that read as this trial's ranks do (workers, pin_memory, cache, ranks), or why none."""
    if loader is None:
        return "no input ceiling was measured, so the cold read is n/a"
    n = max(r.world_size, 1)
    pts = [
        p
        for p in loader.points
        if p.workers == r.knobs.workers
        and (p.cache or loader.cache) == r.knobs.cache
        and (p.pin_memory is None or p.pin_memory == r.knobs.pin_memory)
        and p.ranks == n
    ]
    if not pts:
        return (
            f"the cold read at workers {r.knobs.workers}, cache {r.knobs.cache} on {n} rank(s) was not measured "
            "(the input ceiling ran other settings)"
        )
    p = next((p for p in pts if p.img_per_s_machine_cold), pts[0])
    if not p.img_per_s_machine_cold:
        return f"the cold read is n/a: {p.cold_error or p.error or 'not measured by this version of the probe'}"
    return p


def caps(results: list[TrialResult], fit: DatasetFit, loader: Optional[LoaderCeiling]) -> dict[str, Union[Cap, str]]:
    """trial id -> the cold input rate that caps its epoch's steps (or why it is unknown); {} where the data fit."""
    if fit.fits is not False:
        return {}
    out: dict[str, Union[Cap, str]] = {}
    for r in results:
        if r.status != "ok" or r.knobs.cache == "ram":  # cache=ram reads no file after set-up
            continue
        p = cold_point(r, loader)
        out[r.trial_id] = (
            p
            if isinstance(p, str)
            else (p.img_per_s_machine_cold, p.img_per_s_machine_cold_ci_low, p.img_per_s_machine_cold_ci_high)
        )
    return out


def line(
    fit: DatasetFit, best: Optional[TrialResult], loader: Optional[LoaderCeiling], prediction: Optional[EpochPrediction]
) -> str:
    """The verdict's sentence on memory: fits or not, with the numbers, and what an epoch reads at."""
    if fit.fits is None:
        return f"Whether the dataset fits in memory is n/a: {fit.why}."
    room = (
        f"the {size_text(fit.available_mib * MIB)} this machine can spare ({fit.where}; {100 * FIT_SHARE:.0f}% of it "
        "for the page cache)"
    )
    files = f"The dataset's {size_text(fit.epoch_bytes)} of images (train and val)"
    if fit.fits:
        return f"{files} fit in {room}: after the first epoch they come from the page cache, as in the trials."
    head = f"{files} do not fit in {room}, so every epoch reads them from storage"
    if best is None:
        return head + "."
    p = cold_point(best, loader)
    if isinstance(p, str):
        return f"{head}, but {p}: the epoch is priced at the warm rate the trials measured, a lower bound."
    warm = f"{p.img_per_s_machine:.0f}" if p.img_per_s_machine else "n/a"
    unverified = (
        "; the eviction unverified: mincore shows the page cache only for files this user owns or may write"
        if p.resident_frac_evicted is None
        else ""
    )
    text = (
        f"{head}: the loaders deliver {p.img_per_s_machine_cold:.0f} img/s cold against {warm} warm "
        f"(workers {p.workers}, cache {p.cache or loader.cache}{unverified})"
    )
    if prediction is not None and prediction.epoch_s is not None and prediction.cold_img_per_s is not None:
        bound = prediction.cold_img_per_s < (best.img_per_s or math.inf)
        text += (
            f", and an epoch of {best.trial_id} takes {duration(prediction.epoch_s)} at the cold rate "
            f"({duration(prediction.epoch_s_warm)} warm)"
            if bound
            else f", above the {best.img_per_s:.0f} img/s {best.trial_id} trains at: the reads do not slow it"
        )
    return text + "."


def _effective(r: TrialResult, loader: Optional[LoaderCeiling]) -> Optional[tuple]:
    """(img/s, low, high, cold-bound) of a trial on a dataset that does not fit: its rate capped by the loaders'
    cold rate at its settings; None where that cold rate is n/a."""
    if r.status != "ok" or not r.img_per_s:
        return None
    if r.knobs.cache == "ram":
        return r.img_per_s, r.img_per_s_ci_low, r.img_per_s_ci_high, False
    p = cold_point(r, loader)
    if isinstance(p, str):
        return None
    low = (
        None
        if None in (r.img_per_s_ci_low, p.img_per_s_machine_cold_ci_low)
        else min(r.img_per_s_ci_low, p.img_per_s_machine_cold_ci_low)
    )
    high = (
        None
        if None in (r.img_per_s_ci_high, p.img_per_s_machine_cold_ci_high)
        else min(r.img_per_s_ci_high, p.img_per_s_machine_cold_ci_high)
    )
    return min(r.img_per_s, p.img_per_s_machine_cold), low, high, p.img_per_s_machine_cold < r.img_per_s


def cold_bound(r: TrialResult, loader: Optional[LoaderCeiling]) -> bool:
    """The loaders' cold rate at this trial's settings is below the rate it trained at: storage bounds its epochs."""
    e = _effective(r, loader)
    return bool(e and e[3])


def cold_beats(
    results: list[TrialResult], candidate: str, incumbent: str, loader: Optional[LoaderCeiling]
) -> Optional[bool]:
    """Whether the candidate's epochs read faster than the incumbent's where storage bounds either: its capped rate's
    95% interval lies wholly above the incumbent's. None where neither is cold-bound or a cold rate is n/a (the
    trials' own noise test decides)."""
    by_id = {r.trial_id: r for r in results}
    c, i = (_effective(by_id[t], loader) if t in by_id else None for t in (candidate, incumbent))
    if c is None or i is None or not (c[3] or i[3]):
        return None
    return c[1] is not None and i[2] is not None and c[1] > i[2]
