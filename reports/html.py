"""report.html: one self-contained page (data, CSS, JS and figures inline, no network request)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import jinja2

from reports import charts
from reports.config_files import BestConfig, render_env, render_yaml
from reports.csv_table import ordered
from reports.csv_table import rows as table_rows
from yoloprof import against
from yoloprof.records import ScanMeta

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every user string (paths, class names, model names) is escaped
    undefined=jinja2.StrictUndefined,
)


def _num(spec: str):
    return lambda v: "n/a" if v is None else format(v, spec)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


NUM_COLS = [
    ("img_per_s", _num(".1f")), ("img_per_s_p10", _num(".1f")), ("img_per_s_p90", _num(".1f")),
    ("step_ms_p50", _num(".0f")), ("step_ms_p90", _num(".0f")), ("data_wait_frac", _pct),
    ("comm_ms_p50", _num(".1f")), ("comm_frac", _pct), ("peak_mem_mib", _num(".0f")), ("gpu_util_pct", _num(".0f")),
]  # fmt: skip


def env_rows(meta: ScanMeta) -> list[tuple[str, str]]:
    e, d = meta.environment, meta.dataset
    gpus = "; ".join(f"{g.index}: {g.name} ({g.mem_total_mib:.0f} MiB)" for g in e.gpus) or "none"
    return [
        ("command", " ".join(meta.command)),
        ("ranks", f"{meta.world_size} ({'NCCL on GPUs ' + ','.join(map(str, meta.gpus)) if meta.device == 'cuda' else 'gloo on CPU'})"),
        ("model", meta.model),
        ("imgsz / optimizer", f"{meta.imgsz} / {meta.optimizer}"),
        ("steps", f"{meta.warmup_steps} warm-up + {meta.measured_steps} measured per trial"),
        ("dataset", f"{d.data}: {d.train_images} train / {d.val_images} val images, {len(d.classes)} classes "
                    f"({', '.join(d.classes[:20])}{', ...' if len(d.classes) > 20 else ''})"
                    + (" - synthetic, for measuring speed only" if d.synthetic else "")),
        ("GPUs", gpus),
        ("driver / CUDA / NCCL", f"{e.driver or 'n/a'} / {e.cuda or 'n/a'} / {e.nccl or 'n/a'}"),
        ("torch / ultralytics / python", f"{e.torch} / {e.ultralytics} / {e.python}"),
        ("CPU / RAM", f"{e.cpu_count} cores / " + (f"{e.ram_total_mib / 1024:.1f} GiB" if e.ram_total_mib else "n/a")),
        ("host", f"{e.hostname} ({e.platform})"),
        ("environment variables", ", ".join(f"{k}={v}" for k, v in e.env_vars.items()) or "none set"),
    ]  # fmt: skip


def _ceiling_context(out) -> dict:
    c = out.ceilings
    views = [against.against(r, c) for r in ordered(out.results, out.ranking)] if c.any else []
    best_bw = against.achieved_bucket_busbw(out.best) if out.best else []
    probe_bw = {size: bw for a in c.allreduce if a.nccl == (out.best.knobs.nccl if out.best else "default")
                for size, bw in against.bucket_busbw(a).items()}  # fmt: skip
    link = [dict(size=s, achieved=bw, probe=probe_bw.get(s), frac=bw / probe_bw[s] if probe_bw.get(s) else None)
            for s, bw in best_bw]  # fmt: skip
    figures = []
    svg = charts.against_ceilings(views)
    if svg:
        figures.append(dict(title="Trials against the ceilings", svg=svg, caption=(
            "Bars: images/s achieved in training. Green: the compute ceiling at the trial's batch and AMP (the "
            "training step on one device with the batch already there, times the ranks). Red: the input ceiling "
            "at the trial's workers (the dataloaders alone, all ranks at once). A bar far below green with red "
            "near it is input-bound.")))  # fmt: skip
    if c.compute is not None:
        svg = charts.compute_memory(c.compute.points, c.compute.device_mem_total_mib)
        if svg:
            figures.append(dict(title="Compute and memory against batch", svg=svg, caption=(
                "One device, no data loading. " + (
                    "Largest batch per rank within 90% of device memory: "
                    + ", ".join(f"{k} {v}" for k, v in c.compute.max_batch_fit.items()) + "."
                    if c.compute.max_batch_fit else (c.compute.note or "")))))  # fmt: skip
    svg = charts.busbw(c.allreduce, best_bw)
    if svg:
        figures.append(dict(title="AllReduce bus bandwidth", svg=svg, caption=(
            "Probe: an nccl-tests style sweep on the scan's ranks and backend, busbw = algbw x 2(n-1)/n. "
            "Crosses: the best trial's DDP buckets as timed in training (launch to completion).")))  # fmt: skip
    return dict(views=views, link=link, ceilings=c, ceiling_figures=figures)


def render(out, best_cfg: Optional[BestConfig], title: str) -> str:
    meta, results, ranking, best = out.meta, out.results, out.ranking, out.best
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    rows = table_rows(results, ranking)
    for row in rows:
        row["evidence"] = verdicts[row["trial_id"]].evidence
    figures = []
    ranked = ordered(results, ranking)
    svg = charts.throughput(ranked)
    if svg:
        figures.append(dict(title="Throughput", caption="images/s per trial; whiskers show the per-step p10-p90.", svg=svg))
    svg = charts.breakdown(ranked)
    if svg:
        figures.append(dict(title="Where a step's time goes", svg=svg, caption=(
            "Mean milliseconds per step by phase. Data wait: blocked on the next batch. Exposed AllReduce: "
            "after the last gradient, waiting for gradient synchronisation. Device phases are timed with CUDA "
            "events on GPUs, with the host clock on CPU.")))  # fmt: skip
    command = "source best.env && yolo train cfg=best.yaml"
    return _ENV.get_template("report.html.j2").render(
        meta=meta,
        title=title,
        created=dt.datetime.fromtimestamp(meta.created_s).strftime("%Y-%m-%d %H:%M"),
        headline=out.headline,
        best=best,
        command=command,
        best_yaml=render_yaml(meta, best, best_cfg) if best and best_cfg else "",
        best_env=render_env(best, best_cfg) if best and best_cfg else "",
        rows=rows,
        num_cols=NUM_COLS,
        verdicts=ranking.verdicts,
        figures=figures,
        findings=best_cfg.findings if best_cfg else [],
        env_rows=env_rows(meta),
        fmt=_num,
        pct=_pct,
        **_ceiling_context(out),
    )
