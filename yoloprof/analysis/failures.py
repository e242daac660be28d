"""Which failures end a trial and which end the scan. Pure.

A trial that fails before its first step with an error that does not depend on the knobs (a file
that is missing, code that does not import) would fail every trial: the scan stops at once with
that reason instead of failing n times. Out of memory at batch N makes every larger batch with
the same other settings pointless: those trials are skipped, not run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from yoloprof.records import Knobs, RankRecords, TrialResult, TrialSpec

FATAL_ERRORS = (
    "FileNotFoundError",
    "NotADirectoryError",
    "IsADirectoryError",
    "PermissionError",
    "ModuleNotFoundError",
    "ImportError",
    "SyntaxError",
    "NameError",
    "AttributeError",
)


def fatal_reason(result: TrialResult, ranks: list[RankRecords], previous: list[TrialResult]) -> Optional[str]:
    """The reason to stop the scan, or None to go on."""
    if result.status != "error" or any(r.steps for r in ranks):
        return None
    line = result.error or ""
    if line.split(":")[0].strip() in FATAL_ERRORS or "Dataset" in line:
        return line
    before_first_step = [p for p in previous if p.status == "error" and p.measured_steps == 0 and p.error == line]
    if before_first_step:  # the same error before any step, under different settings
        return line
    return None


def _others(k: Knobs) -> Knobs:
    return replace(k, batch=0)


class OomTracker:
    """Remembers the smallest batch that ran out of memory for each combination of the other knobs."""

    def __init__(self):
        self._at: dict[Knobs, int] = {}

    def record(self, result: TrialResult) -> None:
        if result.status == "oom":  # at the batch that ran: a dataset smaller than the batch asked caps it
            key = _others(result.knobs)
            self._at[key] = min(self._at.get(key, result.batch_ran), result.batch_ran)

    def skip_reason(self, spec: TrialSpec) -> Optional[str]:
        at = self._at.get(_others(spec.knobs))
        if at is not None and spec.knobs.batch >= at:
            return f"oom at batch {at}: the same other settings ran out of memory at a smaller batch"
        return None
