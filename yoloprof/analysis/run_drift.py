"""A watched run's records -> each epoch's figures, the drifts and the verdict against the scan's prediction.

Pure: reads RUN_DIR/yoloprof/rank<r>.jsonl (yoloprof.worker.run_watch writes them) and nothing else.
A drift is a change from the run's own steady state: the reference is the median of the epochs before
it (the first epoch left out: it starts the loaders, and its first steps wait for the slowest rank's
set-up), so a run slow from the start is not a drift. A change is called at the first epoch that shows it,
once it holds in the next epoch too (a one-epoch blip on a noisy machine is not a drift; a change in the
run's last epoch is called without the confirmation). An epoch that crosses the limit but sits nearer the
old level than the new one is a blip just before a step change (data wait, a straggler, every rank slower),
and the change is called where it lands; memory creeps, and is called where it first lasts. The limits are the scan's where it has one
(ranking.py: a rank's own work 20% above another's is a straggler), and below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from yoloprof.analysis import run_telemetry
from yoloprof.analysis.ranking import INPUT_FRAC, STRAGGLER_SKEW
from yoloprof.analysis.change import first_lasting, onset, reference
from yoloprof.analysis.stats import median
from yoloprof.records import RecordError, from_dict
from yoloprof.records.run import Drift, RunEpoch, RunEpochView, RunStart, RunSummary

DATA_WAIT_RISE = 0.10  # a rank's data wait grew by this share of its step over its steady epochs
MEMORY_CREEP = 0.10  # a rank's epoch peak grew by this much over its steady epochs
SLOWER = 0.20  # an epoch's steps took this much longer than the steady epochs' (no other cause found)
COMM_FRAC = 0.10  # exposed AllReduce above this share of the step: communication-bound (ranking.py's)


def read(run_dir: Path) -> tuple[dict[int, RunStart], dict[int, list[RunEpoch]]]:
    """Every rank's start line and epochs; a last line cut short by a killed run is left out."""
    folder = Path(run_dir) / "yoloprof"
    starts: dict[int, RunStart] = {}
    epochs: dict[int, list[RunEpoch]] = {}
    for f in sorted(folder.glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue  # torn by a kill mid-write
            if data.get("kind") == "start":
                s = from_dict(RunStart, data)
                starts[s.rank] = s
            elif data.get("kind") == "epoch":
                e = from_dict(RunEpoch, data)
                epochs.setdefault(e.rank, []).append(e)
    if not epochs and not starts:
        raise RecordError(f"{folder}: no run records (rank<r>.jsonl); was the run started by yoloprof train?")
    return starts, {r: sorted(rows, key=lambda e: e.epoch) for r, rows in epochs.items()}


def finished(epochs: dict[int, list[RunEpoch]]) -> dict[int, dict[int, RunEpoch]]:
    """epoch -> rank -> its line, for the epochs every rank finished (a killed run's last may lack some)."""
    by_epoch: dict[int, dict[int, RunEpoch]] = {}
    for rank, rows in epochs.items():
        for e in rows:
            by_epoch.setdefault(e.epoch, {})[rank] = e
    return {k: v for k, v in sorted(by_epoch.items()) if len(v) == len(epochs)}


def predicted_for(start: Optional[RunStart], epoch: int) -> Optional[float]:
    """The scan's figure for this epoch: the no-mosaic one for the last close_mosaic epochs where it has one."""
    if start is None or start.predicted_epoch_s is None or epoch == 0:
        return None
    if epoch >= start.epochs - start.close_mosaic and start.predicted_no_mosaic_epoch_s is not None:
        return start.predicted_no_mosaic_epoch_s
    return start.predicted_epoch_s


def views(epochs: dict[int, list[RunEpoch]], start: Optional[RunStart] = None) -> list[RunEpochView]:
    """One line per finished epoch: the epoch's time as rank 0 (Ultralytics) times it, the slowest rank's steps."""
    out = []
    for epoch, ranks in finished(epochs).items():
        slow = max(ranks.values(), key=lambda e: e.train_s)
        first = ranks.get(0, slow)
        step = slow.step_ms_mean or 0.0
        wait = (slow.data_wait_ms_mean or 0.0) / step if step else 0.0
        comm = (slow.comm_wait_ms_mean or 0.0) / step if step else 0.0
        excess = [x for x in (_excess(ranks, r) for r in ranks) if x is not None]
        skew = max(excess) if excess else None  # the straggler measure the drifts use
        bound = "compute"
        if skew is not None and skew > STRAGGLER_SKEW:
            bound = "straggler"
        elif wait >= INPUT_FRAC:
            bound = "input"
        elif comm >= COMM_FRAC:
            bound = "communication"
        out.append(
            RunEpochView(
                epoch=epoch,
                epoch_s=first.epoch_s,
                predicted_s=predicted_for(start, epoch),
                train_s=slow.train_s,
                end_s=first.end_s,
                img_per_s=sum(e.images for e in ranks.values()) / slow.train_s if slow.train_s > 0 else 0.0,
                data_wait_frac=wait,
                bound=bound,
                rank_train_s=[ranks[r].train_s for r in sorted(ranks)],
            )
        )
    return out


def _excess(ranks: dict[int, RunEpoch], rank: int) -> Optional[float]:
    """How much more `rank` works than the other ranks' median (own work: step minus waits)."""
    others = median(e.busy_ms_p50 for r, e in ranks.items() if r != rank)
    mine = ranks[rank].busy_ms_p50
    return mine / others - 1 if mine and others else None


def drifts(
    epochs: dict[int, list[RunEpoch]],
    start: Optional[RunStart] = None,
    nodes: Optional[list[run_telemetry.NodeTelemetry]] = None,
) -> list[Drift]:
    """Each kind of change, per rank where it is a rank's, at the first epoch that shows it for good; nodes: the
    run's telemetry (GPU clocks falling)."""
    done = finished(epochs)
    keys = [k for k in done if k > 0]
    found: list[Drift] = run_telemetry.clock_drifts(keys, epochs, nodes or [])
    for rank in sorted(epochs):
        rows = {k: done[k][rank] for k in done}
        wait = {k: (e.data_wait_ms_mean or 0.0) / e.step_ms_mean if e.step_ms_mean else None for k, e in rows.items()}

        def rose(k: int, since: int) -> bool:
            ref = reference(wait, since)
            return ref is not None and wait[k] is not None and wait[k] - ref >= DATA_WAIT_RISE

        k = onset(keys, rose, wait)
        if k is not None:
            e = rows[k]
            found.append(
                Drift(
                    "data_wait",
                    k,
                    rank,
                    f"rank {rank}'s data wait rose from {100 * reference(wait, k):.0f}% to {100 * wait[k]:.0f}% of its "
                    f"step ({e.data_wait_ms_mean:.0f} ms a step) from epoch {k + 1}: the input pipeline fell behind "
                    "(a cold page cache, a slow disk, busy CPUs)",
                )
            )
        mem = {k: e.peak_mem_mib for k, e in rows.items()}

        def crept(k: int, since: int) -> bool:
            ref = reference(mem, since)
            return bool(ref) and mem[k] is not None and mem[k] > ref * (1 + MEMORY_CREEP)

        k = first_lasting(keys, crept)  # memory creeps: called where it first lasts, not where it lands
        if k is not None:
            ref = reference(mem, k)
            found.append(
                Drift(
                    "memory",
                    k,
                    rank,
                    f"rank {rank}'s peak memory grew from {ref:.0f} to {mem[k]:.0f} MiB "
                    f"(+{100 * (mem[k] / ref - 1):.0f}%) from epoch {k + 1}",
                )
            )
    # a straggler appearing: one rank's own work above the other ranks' (their median) beyond the scan's limit,
    # where over the steady epochs before it was not (their median: one noisy epoch does not decide)
    for rank in sorted(epochs):
        excess = {k: _excess(done[k], rank) for k in done}

        def straggles(k: int, since: int, excess=excess) -> bool:
            ref = reference(excess, since)
            return excess[k] is not None and excess[k] > STRAGGLER_SKEW and ref is not None and ref <= STRAGGLER_SKEW

        k = onset(keys, straggles, excess)
        if k is not None:
            me = done[k][rank]
            others = median(e.busy_ms_p50 for r, e in done[k].items() if r != rank)
            found.append(
                Drift(
                    "straggler",
                    k,
                    rank,
                    f"rank {rank} became a straggler in epoch {k + 1}: its own work {me.busy_ms_p50:.0f} ms a step "
                    f"against the other ranks' {others:.0f} ms (+{100 * excess[k]:.0f}%, limit "
                    f"{100 * STRAGGLER_SKEW:.0f}%); they wait for it in AllReduce",
                )
            )
    found += _slower_and_band(views(epochs, start), keys, found, start)
    return sorted(found, key=lambda d: (d.epoch, d.kind, d.rank if d.rank is not None else -1))


def _slower_and_band(vs: list[RunEpochView], keys: list[int], found: list[Drift], start) -> list[Drift]:
    out = []
    train = {v.epoch: v.train_s for v in vs}
    by = {v.epoch: v for v in vs}

    def slower(k: int, since: int) -> bool:
        ref = reference(train, since)
        return bool(ref) and train[k] > ref * (1 + SLOWER)

    k = onset(keys, slower, train)
    if k is not None and not any(d.epoch <= k for d in found):  # no cause above: every rank slowed
        ref = reference(train, k)
        out.append(
            Drift(
                "slower",
                k,
                None,
                f"epoch {k + 1}'s steps took {train[k]:.1f} s against {ref:.1f} s before (+{100 * (train[k] / ref - 1):.0f}%), "
                "with no rise in data wait and no straggler: every rank slowed (clocks, a neighbour on the machine)",
            )
        )
    if start is not None and start.predicted_low_s is not None and start.predicted_high_s is not None:
        lo, hi = start.predicted_low_s, start.predicted_high_s

        def outside(k: int, since: int) -> bool:
            v = by[k]
            mosaic = v.predicted_s == start.predicted_epoch_s  # the band is the mosaic epochs'
            return mosaic and v.epoch_s is not None and not lo <= v.epoch_s <= hi

        k = first_lasting(keys, outside)
        if k is not None:
            out.append(
                Drift(
                    "outside_band",
                    k,
                    None,
                    f"epoch {k + 1} took {by[k].epoch_s:.1f} s, outside the scan's predicted {lo:.1f}-{hi:.1f} s",
                )
            )
    return out


def summarize(run_dir: Path) -> RunSummary:
    starts, epochs = read(run_dir)
    start = starts.get(0) or next(iter(starts.values()), None)
    nodes = run_telemetry.read(run_dir)
    vs = views(epochs, start)
    run_telemetry.fill(vs, epochs, nodes)
    steady = [v.epoch_s for v in vs if v.epoch > 0 and v.epoch_s is not None]
    out = RunSummary(
        run_dir=str(run_dir),
        world_size=start.world_size if start else len(epochs),
        epochs=vs,
        drifts=drifts(epochs, start, nodes),
        predicted_epoch_s=start.predicted_epoch_s if start else None,
        predicted_low_s=start.predicted_low_s if start else None,
        predicted_high_s=start.predicted_high_s if start else None,
        prediction_from=start.prediction_from if start else None,
        prediction_missing=list(start.prediction_missing) if start else [],
        measured_epoch_s=median(steady),
        telemetry=run_telemetry.notes(nodes),
    )
    out.verdict = verdict(out)
    return out


def verdict(s: RunSummary) -> str:
    """The prediction held, or by how much it missed and the drift that explains it."""
    steady = [v for v in s.epochs if v.epoch > 0 and v.epoch_s is not None]
    if s.measured_epoch_s is None:
        return "no steady epoch measured yet (the first epoch is left out: it starts the loaders)"
    measured = f"a steady epoch took {s.measured_epoch_s:.1f} s (median of {len(steady)})"
    pairs = [(v.epoch_s, v.predicted_s) for v in steady if v.predicted_s]
    if not pairs:
        return f"{measured}; no prediction to hold it against (the config did not come from a scan)"
    predicted = median(p for _, p in pairs)
    missing = f" (the prediction leaves out: {'; '.join(s.prediction_missing)})" if s.prediction_missing else ""
    band = s.predicted_low_s is not None and s.predicted_high_s is not None
    if band and s.predicted_low_s <= s.measured_epoch_s <= s.predicted_high_s:
        return (
            f"the prediction held: {measured}, predicted {predicted:.1f} s "
            f"({s.predicted_low_s:.1f}-{s.predicted_high_s:.1f}){missing}"
        )
    miss = median(m / p for m, p in pairs) - 1
    causes = [d for d in s.drifts if d.kind != "outside_band"]  # an epoch outside the band restates the miss
    why = f", because {causes[0].evidence}" if causes else ", with no drift in the run to explain it"
    if not band:  # no interval: nothing to say it held or missed beyond the figures
        return (
            f"{measured}, predicted {predicted:.1f} s ({100 * miss:+.0f}%), with no band to hold it against "
            f"(the scan measured no interval for it){missing}" + (why if causes else "")
        )
    return f"the prediction missed by {100 * miss:+.0f}%: {measured}, predicted {predicted:.1f} s{missing}{why}"
