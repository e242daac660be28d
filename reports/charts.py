"""Figures as inline SVG strings (matplotlib, Agg, system fonts only: nothing is fetched)."""

from __future__ import annotations

import io
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from yoloprof.records import TrialResult  # noqa: E402

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
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the page inlines it


def throughput(results: list[TrialResult]) -> Optional[str]:
    """Trials in the order given (best first), drawn top to bottom."""
    ok = [r for r in results if r.status == "ok" and r.img_per_s]
    if not ok:
        return None
    ok = ok[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.0))
    y = range(len(ok))
    vals = [r.img_per_s for r in ok]
    lo = [max(r.img_per_s - (r.img_per_s_p10 or r.img_per_s), 0) for r in ok]
    hi = [max((r.img_per_s_p90 or r.img_per_s) - r.img_per_s, 0) for r in ok]
    ax.barh(list(y), vals, xerr=[lo, hi], color="#1f77b4", ecolor="#444", capsize=2)
    ax.set_yticks(list(y), [r.trial_id for r in ok])
    ax.set_xlabel("images/s, all ranks (whiskers: per-step p10-p90)")
    return _svg(fig)


def breakdown(results: list[TrialResult]) -> Optional[str]:
    ok = [r for r in results if r.status == "ok" and r.breakdown is not None][::-1]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.3))
    left = [0.0] * len(ok)
    for phase, (label, color) in PHASE_COLORS.items():
        vals = [max(getattr(r.breakdown, phase) or 0.0, 0.0) for r in ok]
        if not any(vals):
            continue
        ax.barh(range(len(ok)), vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(ok)), [r.trial_id for r in ok])
    ax.set_xlabel("mean ms per step (median rank)")
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _svg(fig)
