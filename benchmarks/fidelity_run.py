"""The run level of benchmarks/fidelity.py: a whole `yolo train cfg=best.yaml epochs=N` against `run_h`.

Plain training here keeps Ultralytics' defaults for everything best.yaml does not set (warm-up epochs
with their accumulate ramp, the last close_mosaic epochs without mosaic, validation and saving each
epoch, plots, the final validation of best.pt), so it is the run a user starts. Its wall time, from
the launch of the process to its exit, is compared with the scan's run prediction for N epochs, and
split into the parts the prediction adds up, so a miss says where it is:

    start-up  launch -> on_pretrain_routine_start (interpreter, torch and Ultralytics imports)
    set-up    -> the first epoch's start (dataset scan, model, optimizer, label plots)
    epochs    each on_train_epoch_start -> the next one (steps, validation, saving, epoch end),
              as warm-up epochs, mosaic epochs and close_mosaic epochs
    final     the last epoch's end -> exit (final validation of best.pt, plots)

Pure helpers over the callback's log (tests/test_benchmarks_parse.py); fidelity.py runs the processes.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

RUN_PREDICTED = (
    "run_h",
    "run_h_low",
    "run_h_high",
    "epoch_s",
    "no_mosaic_epoch_s",
    "once_s",
    "setup_s",
    "val_s",
    "startup_s",
    "final_s",
)


@dataclass
class RunParts:
    """Seconds of one plain run, by part."""

    wall_s: float
    startup_s: Optional[float] = None
    setup_s: Optional[float] = None
    epoch_s: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> start to the next start
    final_s: Optional[float] = None

    def mean(self, epochs: Sequence[int]) -> Optional[float]:
        xs = [self.epoch_s[e] for e in epochs if e in self.epoch_s]
        return statistics.mean(xs) if xs else None


def run_parts(log: Sequence[dict], launched: float, exited: float) -> RunParts:
    """Parts of a run from the callback's log: epoch lines carry "batches", event lines "event"
    ("pretrain", "fit_end", "train_end"); times are the monotonic clock of `launched` and `exited`."""
    starts = {e["epoch"]: e["t"] for e in log if "batches" in e}
    events: dict[str, list[dict]] = {}
    for e in log:
        if "event" in e:
            events.setdefault(e["event"], []).append(e)
    out = RunParts(wall_s=exited - launched)
    pre = events.get("pretrain", [])
    if pre:
        out.startup_s = pre[0]["t"] - launched
        if starts:
            out.setup_s = starts[min(starts)] - pre[0]["t"]
    ends: dict[int, float] = {}
    for e in events.get("fit_end", []):  # the first per epoch: final_eval runs the callback once more
        ends.setdefault(e["epoch"], e["t"])
    order = sorted(starts)
    for a, b in zip(order, order[1:]):
        out.epoch_s[a] = starts[b] - starts[a]
    if order and order[-1] in ends:  # the last epoch ends at its own fit_end
        out.epoch_s[order[-1]] = ends[order[-1]] - starts[order[-1]]
        out.final_s = exited - ends[order[-1]]
    return out


def phases(epochs: int, nb: int, warmup_epochs: float, close_mosaic: int) -> dict[str, list[int]]:
    """Ultralytics' epochs by kind: warm-up (its first round(min(warmup_epochs, epochs - 1) * nb)
    iterations touch them), mosaic, and the last close_mosaic without mosaic (engine/trainer.py)."""
    nw = round(min(warmup_epochs, max(epochs - 1, 0)) * nb) if warmup_epochs > 0 else 0
    warm = set(range(math.ceil((nw + 1) / nb))) if nw else set()  # ni <= nw is in the ramp
    closed = set(range(max(epochs - close_mosaic, 0), epochs)) if close_mosaic > 0 else set()
    return {
        "warm-up": sorted(warm - closed),
        "mosaic": sorted(set(range(epochs)) - warm - closed),
        "close_mosaic": sorted(closed),
    }


def table(parts: RunParts, pred: dict, kinds: dict[str, list[int]]) -> list[str]:
    """Lines: each part, plain against predicted ('n/a' where the prediction has no such part)."""
    f = lambda v: "n/a" if v is None else f"{v:.1f} s"  # noqa: E731
    lines = [
        f"    start-up (launch to trainer): plain {f(parts.startup_s)}, predicted {f(pred.get('startup_s'))}",
        f"    set-up (trainer to first step): plain {f(parts.setup_s)}, predicted {f(pred.get('setup_s'))}",
    ]
    for kind, eps in kinds.items():
        if not eps:
            continue
        p, how = pred.get("epoch_s"), ""
        if kind == "close_mosaic":  # no no-mosaic figure: those epochs are priced at the mosaic rate
            p, how = (pred["no_mosaic_epoch_s"], "") if pred.get("no_mosaic_epoch_s") else (p, " (the mosaic rate)")
        shown = ", ".join(f"{parts.epoch_s[e]:.1f}" for e in eps if e in parts.epoch_s)
        lines.append(
            f"    {kind} epochs {eps[0] + 1}-{eps[-1] + 1}: plain {shown} s (mean {f(parts.mean(eps))}), "
            f"predicted {f(p)} each{how}"
            + (" + the warm-up's extra optimizer steps (in once)" if kind == "warm-up" else "")
        )
    if pred.get("final_s") is not None:  # the epoch job timed the run's end (final_eval, plots)
        lines.append(
            f"    final (last epoch end to exit): plain {f(parts.final_s)}, predicted {f(pred.get('final_s'))}"
        )
    else:  # older scans: one validation pass stood in for it
        lines.append(
            f"    final (last epoch end to exit): plain {f(parts.final_s)}, predicted validation {f(pred.get('val_s'))}"
        )
    return lines
