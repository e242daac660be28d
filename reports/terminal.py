"""The ranked table and the verdict in the terminal (rich)."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from reports.csv_table import ordered
from yoloprof.records import Ranking, TrialResult


def fmt(v: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def ranked_table(results: list[TrialResult], ranking: Ranking, title: str = "yoloprof: trials, best first") -> Table:
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    t = Table(title=title, header_style="bold")
    for col, just in (("#", "right"), ("trial", "left"), ("img/s", "right"),
                      ("p10-p90", "right"), ("step ms", "right"), ("data wait", "right"),
                      ("AllReduce exposed", "right"), ("peak MiB", "right"), ("bound by", "left")):  # fmt: skip
        t.add_column(col, justify=just, no_wrap=col in ("#", "img/s"))
    for r in ordered(results, ranking):
        v = verdicts[r.trial_id]
        if r.status != "ok":
            t.add_row("-", r.trial_id, f"[red]{r.status}[/]", "", "", "", "", fmt(r.peak_mem_mib, ".0f"),
                      v.evidence[:80])  # fmt: skip
            continue
        spread = f"{fmt(r.img_per_s_p10)}-{fmt(r.img_per_s_p90)}"
        comm = "n/a" if r.comm_frac is None else f"{fmt(r.comm_wait_ms_p50, '.0f')} ms ({pct(r.comm_frac)})"
        style = "bold green" if v.position == 1 else ""
        t.add_row(str(v.position), r.trial_id, f"[{style}]{fmt(r.img_per_s)}[/]" if style else fmt(r.img_per_s),
                  spread, f"{fmt(r.step_ms_p50, '.0f')} / p90 {fmt(r.step_ms_p90, '.0f')}", pct(r.data_wait_frac), comm,
                  fmt(r.peak_mem_mib, ".0f"), v.bottleneck or "")  # fmt: skip
    return t


def print_summary(console: Console, results: list[TrialResult], ranking: Ranking, headline: str) -> None:
    console.print(ranked_table(results, ranking))
    console.print(headline)
