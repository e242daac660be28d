"""When a per-epoch series changed for good: the onset rules the watched run's drifts share (run_drift,
run_telemetry). Pure."""

from __future__ import annotations

from typing import Callable, Optional

from yoloprof.analysis.stats import median


def first_lasting(keys: list[int], holds: Callable[[int, int], bool]) -> Optional[int]:
    """The first epoch k where `holds(k, k)` and, at the next epoch, `holds(next, k)`: the change against the
    epochs before k, still there one epoch later (or k is the last)."""
    for i, k in enumerate(keys):
        if holds(k, k) and (i + 1 == len(keys) or holds(keys[i + 1], k)):
            return k
    return None


def onset(keys: list[int], holds: Callable[[int, int], bool], values: dict[int, Optional[float]]) -> Optional[int]:
    """first_lasting, moved past an epoch that sits nearer the level before it than the level after it (seen in CI: a
    straggler called one 4-step epoch before its injected slow-down), while the next epoch is a
    change of its own. A gradual creep would be moved to where it is nearer its later level: memory does not use it."""
    k = first_lasting(keys, holds)
    while k is not None and values.get(k) is not None:
        i = keys.index(k)
        before = reference(values, k)
        after = median(values[j] for j in keys[i + 1 :] if values.get(j) is not None)
        if before is None or after is None or abs(values[k] - before) >= abs(values[k] - after):
            break
        nxt = keys[i + 1]
        if not holds(nxt, nxt) or (i + 2 < len(keys) and not holds(keys[i + 2], nxt)):
            break
        k = nxt
    return k


def reference(values: dict[int, Optional[float]], before: int) -> Optional[float]:
    """The steady reference: the median of the epochs after the first and before `before`."""
    return median(v for k, v in values.items() if 0 < k < before)
