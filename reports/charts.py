"""Figures as inline SVG strings (matplotlib, Agg, system fonts only: nothing is fetched)."""

from __future__ import annotations

import io
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from yoloprof.records import TrialResult, precision_name  # noqa: E402

PHASE_COLORS = {
    "data_wait_ms": ("data wait", "#d62728"),
    "h2d_ms": ("host-to-device", "#ff7f0e"),
    "forward_ms": ("forward + loss", "#1f77b4"),
    "backward_ms": ("backward", "#17becf"),
    "comm_wait_ms": ("exposed AllReduce", "#9467bd"),
    "optimizer_ms": ("optimizer", "#2ca02c"),
    "other_ms": ("other", "#7f7f7f"),
}

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the page inlines it


def throughput(results: list[TrialResult], intervals: Optional[dict] = None) -> Optional[str]:
    """Trials in the order given (best first), drawn top to bottom. intervals: trial id -> (low, high), the
    95% interval drawn as black whiskers; the per-step p10 and p90 are grey ticks."""
    ok = [r for r in results if r.status == "ok" and r.img_per_s]
    if not ok:
        return None
    ok = ok[::-1]
    intervals = intervals or {}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.0))
    y = list(range(len(ok)))
    vals = [r.img_per_s for r in ok]
    ax.barh(y, vals, color="#1f77b4")
    ci = [intervals.get(r.trial_id) or (None, None) for r in ok]
    lo = [r.img_per_s - low if low is not None else 0.0 for r, (low, _) in zip(ok, ci)]
    hi = [high - r.img_per_s if high is not None else 0.0 for r, (_, high) in zip(ok, ci)]
    if any(lo) or any(hi):
        ax.errorbar(vals, y, xerr=[lo, hi], fmt="none", ecolor="#111", capsize=3, lw=1.2)
    for i, r in zip(y, ok):
        marks = [x for x in (r.img_per_s_p10, r.img_per_s_p90) if x is not None]
        if marks:
            ax.scatter(marks, [i] * len(marks), marker="|", s=60, color="#888", zorder=3)
    ax.set_yticks(y, [r.trial_id for r in ok])
    ax.set_xlabel("images/s, all ranks (whiskers: 95% interval; grey ticks: per-step p10, p90)")
    return _svg(fig)


def breakdown(results: list[TrialResult]) -> Optional[str]:
    ok = [r for r in results if r.status == "ok" and r.breakdown is not None][::-1]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.3))
    left = [0.0] * len(ok)
    names = {r.optimizer for r in ok}
    for phase, (label, color) in PHASE_COLORS.items():
        if phase == "optimizer_ms" and len(names) == 1 and None not in names:
            label = f"{label} ({names.pop()})"  # which step it is: MuSGD's costs more than SGD's
        vals = [max(getattr(r.breakdown, phase) or 0.0, 0.0) for r in ok]
        if not any(vals):
            continue
        ax.barh(range(len(ok)), vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(ok)), [r.trial_id for r in ok])
    ax.set_xlabel("mean ms per step (median rank)")
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _svg(fig)


def against_ceilings(views: list) -> Optional[str]:
    """img/s per trial with its compute ceiling and input ceiling marked (views: TrialVsCeilings, best first)."""
    rows = [v for v in views if v.img_per_s and (v.compute_img_s or v.input_img_s)][::-1]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    y = list(range(len(rows)))
    ax.barh(y, [v.img_per_s for v in rows], color="#1f77b4", label="achieved in training")
    cy = [i for i, v in zip(y, rows) if v.compute_img_s]
    ax.scatter(
        [v.compute_img_s for v in rows if v.compute_img_s],
        cy,
        marker="|",
        s=300,
        color="#2ca02c",
        linewidths=3,
        label="compute ceiling (no input, no AllReduce)",
        zorder=3,
    )
    iy = [i for i, v in zip(y, rows) if v.input_img_s]
    ax.scatter(
        [v.input_img_s for v in rows if v.input_img_s],
        iy,
        marker="|",
        s=300,
        color="#d62728",
        linewidths=3,
        label="input ceiling (loaders alone)",
        zorder=3,
    )
    ax.set_yticks(y, [v.trial_id for v in rows])
    ax.set_xlabel("images/s, all ranks")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _svg(fig)


def busbw(ceilings: list, achieved: list[tuple[int, float]]) -> Optional[str]:
    """AllReduce bus bandwidth against message size: the probe per preset, and buckets timed in training."""
    curves = [c for c in ceilings if c.points]
    if not curves and not achieved:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for c in curves:
        pts = sorted((p.size_bytes, p.busbw_gbs) for p in c.points)
        ax.plot(
            [s / 2**20 for s, _ in pts],
            [b for _, b in pts],
            marker="o",
            ms=3,
            label=f"probe, {c.backend} {c.nccl}"
            + (
                ""
                if not any(o.nnodes > 1 for o in curves)
                else f", {c.world_size} ranks on {c.nnodes} node{'s' * (c.nnodes > 1)}"
            ),
        )
    if achieved:
        ax.scatter(
            [s / 2**20 for s, _ in achieved],
            [b for _, b in achieved],
            color="#d62728",
            marker="x",
            zorder=3,
            label="model buckets during training",
        )
    ax.set_xscale("log")
    ax.set_xlabel("message size (MiB)")
    ax.set_ylabel("busbw (GB/s)")
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def compute_memory(points: list, total_mib: Optional[float]) -> Optional[str]:
    """Peak memory and compute img/s against batch per rank, with the device limit."""
    ok = [p for p in points if p.status == "ok" and p.img_per_s]
    if len({p.batch_ran for p in ok}) < 1:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for amp in sorted({p.amp for p in ok}, key=precision_name):
        # at the batch that ran: a capped point repeats a smaller batch, never one that did not run
        ran = {
            p.batch_ran: (p.img_per_s, p.peak_mem_mib)
            for p in sorted(ok, key=lambda p: p.capped, reverse=True)
            if p.amp == amp
        }
        pts = sorted((b, r, m) for b, (r, m) in ran.items())
        label = precision_name(amp)
        a1.plot([b for b, _, _ in pts], [r for _, r, _ in pts], marker="o", label=label)
        a2.plot([b for b, _, _ in pts], [m or 0 for _, _, m in pts], marker="o", label=label)
    if total_mib:
        a2.axhline(total_mib, color="#d62728", ls="--", lw=1, label="device memory")
    a1.set_xlabel("batch per rank")
    a1.set_ylabel("img/s on one device")
    a2.set_xlabel("batch per rank")
    a2.set_ylabel("peak MiB")
    a1.legend(fontsize=8, frameon=False)
    a2.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _svg(fig)


def over_time(timelines: list) -> Optional[str]:
    """Data wait per step and utilisation over the measured steps, one panel per trial (pipeline.Timeline)."""
    tls = [t for t in timelines if t is not None and t.step_t_s]
    if not tls:
        return None
    fig, axes = plt.subplots(len(tls), 1, figsize=(7, 2.4 * len(tls)), squeeze=False)
    for ax, tl in zip(axes[:, 0], tls):
        starts = [t - ms / 1e3 for t, ms in zip(tl.step_t_s, tl.step_ms)]
        ax.bar(
            starts,
            tl.data_wait_ms,
            width=[0.95 * ms / 1e3 for ms in tl.step_ms],
            align="edge",
            color="#d62728",
            alpha=0.6,
            label="data wait (ms, per step)",
        )
        ax.set_ylabel("data wait ms")
        ax.set_title(tl.trial_id, fontsize=9, loc="left")
        if tl.util_t_s:
            ax2 = ax.twinx()
            ax2.plot(tl.util_t_s, tl.util_pct, color="#1f77b4", lw=1.2, label=f"{tl.util_source} utilisation %")
            ax2.set_ylim(0, 105)
            ax2.set_ylabel(f"{tl.util_source} util %")
            ax2.spines["right"].set_visible(True)
        ax.set_xlabel("seconds into the measured steps")
    fig.tight_layout()
    return _svg(fig)


def against_knob(results: list, knob: str, series_knob: str, ceilings: dict) -> Optional[str]:
    """img/s against one knob (workers or batch), a line per value of another, with ceiling lines.

    ceilings: label -> {x: img/s} drawn dashed (e.g. the input ceiling by workers, compute by batch).
    """
    ok = [r for r in results if r.status == "ok" and r.img_per_s]
    xs = sorted({getattr(r.knobs, knob) for r in ok})
    if len(xs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for sv in sorted({getattr(r.knobs, series_knob) for r in ok}, key=str):
        pts = {}
        for r in ok:
            if getattr(r.knobs, series_knob) == sv:
                pts[getattr(r.knobs, knob)] = max(pts.get(getattr(r.knobs, knob), 0), r.img_per_s)
        if pts:
            ax.plot(sorted(pts), [pts[x] for x in sorted(pts)], marker="o", label=f"trials, {series_knob} {sv} (best)")
    for label, pts in ceilings.items():
        color = "#d62728" if label.startswith("input") else ("#2ca02c" if "fp32" not in label else "#8c564b")
        if len(pts) >= 1:
            ax.plot(sorted(pts), [pts[x] for x in sorted(pts)], ls="--", marker="_", color=color, label=label)
    ax.set_xticks(xs)
    ax.set_xlabel(f"{knob}{' per rank' if knob == 'workers' else ' (global)'}")
    ax.set_ylabel("images/s, all ranks")
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def scaling(groups: list) -> Optional[str]:
    """images/s against ranks per settings group (yoloprof.analysis.scaling), with the linear ideal dashed."""
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for g in groups:
        xs = [p.world_size for p in g.points]
        line = ax.plot(xs, [p.img_per_s for p in g.points], marker="o", label=g.settings)[0]
        base = g.points[0]
        ax.plot(xs, [base.img_per_s * x / base.world_size for x in xs], ls="--", color=line.get_color(), alpha=0.5)
    ax.set_xticks(sorted({p.world_size for g in groups for p in g.points}))
    ax.set_xlabel("ranks")
    ax.set_ylabel("images/s, all ranks")
    ax.legend(fontsize=7, frameon=False, title="dashed: linear scaling", title_fontsize=7)
    return _svg(fig)


def run_epochs(summary) -> Optional[str]:
    """A watched run's epoch times, with the scan's predicted band where there is one."""
    pts = [(v.epoch + 1, v.epoch_s) for v in summary.epochs if v.epoch_s is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.6))
    if summary.predicted_low_s is not None and summary.predicted_high_s is not None:
        ax.axhspan(
            summary.predicted_low_s, summary.predicted_high_s, color="#1f77b4", alpha=0.15, label="predicted (95%)"
        )
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="#111", label="measured")
    pred = [(v.epoch + 1, v.predicted_s) for v in summary.epochs if v.predicted_s is not None]
    if pred:  # the scan's figure per epoch (the no-mosaic one for the last close_mosaic epochs)
        ax.plot([p[0] for p in pred], [p[1] for p in pred], color="#1f77b4", lw=1.5, label="predicted")
    ax.xaxis.get_major_locator().set_params(integer=True)
    for d in summary.drifts:
        ax.axvline(d.epoch + 1, color="#d62728", lw=1, ls="--")
    ax.set_xlabel("epoch (dashed: a drift begins)")
    ax.set_ylabel("s")
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)
