"""The ranked table and the verdict in the terminal (rich)."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from reports.csv_table import ordered
from yoloprof.records import AllReduceCeiling, ComputeCeiling, LoaderCeiling, Ranking, TrialResult


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
                  fmt(r.peak_mem_mib, ".0f"), v.label or v.bottleneck or "")  # fmt: skip
    return t


def print_summary(console: Console, results: list[TrialResult], ranking: Ranking, headline: str) -> None:
    console.print(ranked_table(results, ranking))
    console.print(headline)


def loader_table(c: LoaderCeiling) -> Table:
    t = Table(title=f"Input ceiling: the dataloader alone (imgsz {c.imgsz}, cache {c.cache})", header_style="bold")
    for col in ("workers/rank", "ran", "ranks", "batch/rank", "img/s per rank", "img/s machine", "CPU %", "status"):
        t.add_column(col, justify="right")
    for p in c.points:
        t.add_row(str(p.workers), str(p.workers_effective), str(p.ranks), str(p.batch_per_rank), fmt(p.img_per_s_rank),
                  fmt(p.img_per_s_machine), fmt(p.cpu_pct, ".0f"), p.status if p.status == "ok" else f"[red]{p.error}[/]")  # fmt: skip
    return t


def compute_table(c: ComputeCeiling) -> Table:
    t = Table(title=f"Compute ceiling: one {c.device_name}, batch already on the device", header_style="bold")
    for col in ("batch/rank", "amp", "img/s", "step ms", "peak MiB", "status"):
        t.add_column(col, justify="right")
    for p in c.points:
        t.add_row(str(p.batch), "on" if p.amp else "off", fmt(p.img_per_s), fmt(p.step_ms_p50, ".0f"),
                  fmt(p.peak_mem_mib, ".0f"), p.status if p.status == "ok" else f"[red]{p.status}: {p.error}[/]")  # fmt: skip
    if c.max_batch_fit:
        t.caption = "largest batch per rank within 90% of device memory: " + ", ".join(
            f"{k} {v}" for k, v in c.max_batch_fit.items())
    elif c.note:
        t.caption = c.note
    return t


def allreduce_table(c: AllReduceCeiling) -> Table:
    t = Table(title=f"Link ceiling: AllReduce on {c.world_size} ranks, {c.backend}, nccl preset {c.nccl}",
              header_style="bold")  # fmt: skip
    for col in ("size", "time us", "algbw GB/s", "busbw GB/s", "iters", ""):
        t.add_column(col, justify="right")
    for p in c.points:
        size = f"{p.size_bytes / 2**20:.2f} MiB" if p.size_bytes >= 2**20 else f"{p.size_bytes / 1024:.0f} KiB"
        t.add_row(size, fmt(p.time_us, ".0f"), fmt(p.algbw_gbs, ".3f"), fmt(p.busbw_gbs, ".3f"), str(p.iters),
                  "model bucket" if p.is_bucket else "")  # fmt: skip
    if c.status != "ok":
        t.caption = f"[red]{c.error}[/]"
    return t
