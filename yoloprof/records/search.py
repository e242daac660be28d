"""What the auto search decided, and why: scan.json's `decisions`, shown in the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Decision:
    # "space" (values the hardware rules out), "ceilings" (pruning), "start" (the reference run),
    # "descent" (coordinate descent), "confirm" (repeats), "budget"
    stage: str
    kind: str  # "pruned" | "tried" | "adopted" | "kept" | "repeat" | "skipped-budget" | "done"
    reason: str  # one sentence a user can check against the figures it cites
    knob: Optional[str] = None
    value: Optional[str] = None  # the knob's value as shown ("8", "on", "ring")
    trial_id: Optional[str] = None  # the trial this decision ran or judged
    budget_used_s: Optional[float] = None  # scan wall time spent when the decision was taken
