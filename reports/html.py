"""report.html: one self-contained page (data, CSS, JS and figures inline, no network request)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import jinja2

from yoloprof.reports import charts, epoch_view
from yoloprof.analysis.epoch import amount as epoch_amount
from yoloprof.reports.config_files import BestConfig, render_env, render_yaml
from yoloprof.reports.csv_table import ordered
from yoloprof.reports.csv_table import rows as table_rows
from yoloprof.analysis import advice, headroom, memory_fit, noise, scaling, tradeoffs
from yoloprof.analysis import optimizer as optim
from yoloprof.search import baselines, plan
from yoloprof.analysis import ranking as ranking_mod
from yoloprof.records import ScanMeta, precision_name

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every user string (paths, class names, model names) is escaped
    undefined=jinja2.StrictUndefined,
)


def _num(spec: str):
    return lambda v: "n/a" if v is None else format(v, spec)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _interval(v: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    """'112.4 (108.9-115.8)'; the figure alone where it has no interval."""
    if v is None:
        return "n/a"
    return f"{v:.1f}" if low is None or high is None else f"{v:.1f} ({low:.1f}-{high:.1f})"


NUM_COLS = [
    ("img_per_s", _num(".1f")),
    ("img_per_s_p10", _num(".1f")),
    ("img_per_s_p90", _num(".1f")),
    ("step_ms_p50", _num(".0f")),
    ("step_ms_p90", _num(".0f")),
    ("data_wait_frac", _pct),
    ("comm_ms_p50", _num(".1f")),
    ("comm_frac", _pct),
    ("peak_mem_mib", _num(".0f")),
    ("gpu_util_pct", _num(".0f")),
    ("energy_j_per_img", _num(".2f")),
]


def optimizer_text(meta: ScanMeta, results: list) -> str:
    """What the scan asked and why each trial got its optimizer, then what the trials' ranks built."""
    batches = sorted({r.knobs.batch for r in results}) or sorted({s.knobs.batch for s in meta.specs})
    said = optim.describe(meta.optimizer_plan or meta.optimizer, batches)
    ran = sorted({r.optimizer for r in results if r.optimizer})
    return said + (f"; the trials ran {', '.join(ran)}" if ran else "")


def env_rows(meta: ScanMeta, results: Optional[list] = None) -> list[tuple[str, str]]:
    e, d = meta.environment, meta.dataset
    gpus = "; ".join(f"{g.index}: {g.name} ({g.mem_total_mib:.0f} MiB)" for g in e.gpus) or "none"
    return [
        ("command", " ".join(meta.command)),
        (
            "ranks",
            f"{meta.world_size} ({'NCCL on GPUs ' + ','.join(map(str, meta.gpus)) if meta.device == 'cuda' else 'gloo on CPU'})"
            + (
                f" across {meta.nnodes} nodes, {meta.world_size // meta.nnodes} ranks a node; c10d rendezvous at "
                f"{meta.rdzv_endpoint}; environment below: node 0's"
                if meta.nnodes > 1
                else ""
            ),
        ),
        ("task", meta.task),
        ("model", meta.model),
        ("imgsz", str(meta.imgsz)),
        ("optimizer", optimizer_text(meta, results or [])),
        ("steps", f"{meta.warmup_steps} warm-up + {meta.measured_steps} measured per trial"),
        (
            "dataset",
            f"{d.data}: {d.train_images} train / {d.val_images} val images, {len(d.classes)} classes "
            f"({', '.join(d.classes[:20])}{', ...' if len(d.classes) > 20 else ''})"
            + (" - synthetic, for measuring speed only" if d.synthetic else ""),
        ),
        ("GPUs", gpus),
        ("driver / CUDA / NCCL", f"{e.driver or 'n/a'} / {e.cuda or 'n/a'} / {e.nccl or 'n/a'}"),
        ("torch / ultralytics / python", f"{e.torch} / {e.ultralytics} / {e.python}"),
        ("CPU / RAM", f"{e.cpu_count} cores / " + (f"{e.ram_total_mib / 1024:.1f} GiB" if e.ram_total_mib else "n/a")),
        ("host", f"{e.hostname} ({e.platform})"),
        ("environment variables", ", ".join(f"{k}={v}" for k, v in e.env_vars.items()) or "none set"),
    ]


def _ceiling_context(out) -> dict:
    c = out.ceilings
    views = [headroom.against(r, c) for r in ordered(out.results, out.ranking)] if c.any else []
    best_bw = headroom.achieved_bucket_busbw(out.best) if out.best else []
    probe_bw = {
        size: bw
        for a in c.allreduce
        if a.nccl == (out.best.knobs.nccl if out.best else "default")
        and (out.best is None or a.world_size == out.best.world_size)
        for size, bw in headroom.bucket_busbw(a).items()
    }
    link = [
        dict(size=s, achieved=bw, probe=probe_bw.get(s), frac=bw / probe_bw[s] if probe_bw.get(s) else None)
        for s, bw in best_bw
    ]
    figures = []
    svg = charts.against_ceilings(views)
    if svg:
        figures.append(
            dict(
                title="Trials against the ceilings",
                svg=svg,
                caption=(
                    "Bars: images/s achieved in training. Green: the compute ceiling at the trial's batch and AMP (the "
                    "training step on one device with the batch already there, times the ranks). Red: the input ceiling "
                    "at the trial's workers and pin_memory (the dataloaders alone, all ranks at once). A bar far below "
                    "green with red near it is input-bound."
                ),
            )
        )
    if c.compute is not None:
        svg = charts.compute_memory(c.compute.points, c.compute.device_mem_total_mib)
        if svg:
            figures.append(
                dict(
                    title="Compute and memory against batch",
                    svg=svg,
                    caption=("One device, no data loading. " + _fit_text(c.compute, out.results)),
                )
            )
    svg = charts.busbw(c.allreduce, best_bw)
    if svg:
        figures.append(
            dict(
                title="AllReduce bus bandwidth",
                svg=svg,
                caption=(
                    "Probe: an nccl-tests style sweep on the scan's ranks and backend, busbw = algbw x 2(n-1)/n. "
                    "Crosses: the best trial's DDP buckets as timed in training (launch to completion)."
                ),
            )
        )
    return dict(
        views=views,
        link=link,
        ceilings=c,
        ceiling_figures=figures,
        link_losses=[x.text for x in scaling.link_losses(c.allreduce)],
    )


def _fit_text(compute, results) -> str:
    if not compute.max_batch_fit:
        return compute.note or ""
    one = ", ".join(f"{k} {v}" for k, v in compute.max_batch_fit.items())
    ddp, overhead = memory_fit.ddp_fits(compute, results)
    if overhead is None:
        return (
            f"Largest batch per rank within 90% of device memory, measured on one device: {one}. Under DDP a "
            "rank also holds its CUDA context, NCCL buffers and gradient buckets, not measured here (no NVML "
            "reading from a DDP trial), so DDP fits less."
        )
    return (
        f"Largest batch per rank within 90% of device memory under DDP: "
        f"{', '.join(f'{k} {v}' for k, v in ddp.items()) or 'none'} (one device alone: {one}; a DDP rank holds "
        f"{overhead:.0f} MiB more, measured by NVML in the DDP trials: CUDA context, NCCL buffers, buckets)."
    )


def _advice_context(out) -> dict:
    meta, results, best = out.meta, out.results, out.best
    verdicts = {v.trial_id: v for v in out.ranking.verdicts}
    ctx = dict(
        effects=advice.effects(results),
        path=[],
        reference=None,
        untested=[],
        gains=[],
        gives_up={},
        payoffs=[p.text for p in tradeoffs.compile_payoffs(results, meta.dataset.train_images)],
    )
    ctx["gains"] = ranking_mod.gains(results, out.ranking, meta.baselines)
    if best is None:
        return ctx
    ctx["gives_up"] = tradeoffs.config_notes(results, best, meta.dataset.train_images, payoff=False)
    by_id = {r.trial_id: r for r in results}
    for role in (baselines.YOURS, baselines.DEFAULTS):
        ref = by_id.get(meta.baselines.get(role, ""))
        if ref is not None and ref.status == "ok" and ref.trial_id != best.trial_id:
            ctx["reference"], ctx["path"] = f"{role} ({ref.trial_id})", advice.path_to_best(best, ref, results)
            break
    env = meta.environment
    hw = plan.Hardware(meta.device, meta.world_size, meta.gpus, env.cpu_count, len(env.gpus))
    fit = None
    if out.ceilings.compute is not None:
        ddp, overhead = memory_fit.ddp_fits(out.ceilings.compute, results)
        fit = (ddp if overhead is not None else out.ceilings.compute.max_batch_fit).get(best.knobs.precision)
    v = verdicts[best.trial_id]
    seen: set = set()
    for bound in v.bottlenecks or [v.bottleneck]:  # "input + communication": what would test either
        for u in advice.untested(best, bound, results, meta.device, plan.workers_cap(hw), fit):
            if u.flags not in seen:
                seen.add(u.flags)
                ctx["untested"].append(dict(text=u.text, command=advice.next_scan(meta.command, u.flags)))
    return ctx


# The auto search's stages in the order it takes them, with the heading each gets in the report.
SEARCH_STAGES = [
    ("space", "Space: values the hardware rules out"),
    ("ceilings", "Ceilings: values the probes rule out (or keep)"),
    ("start", "Start: the reference run"),
    ("descent", "Descent: one knob at a time from the incumbent"),
    ("confirm", "Confirm: repeats of the contenders"),
    ("budget", "Budget: what the budget left out"),
]
_STRUCK = ("pruned", "skipped-budget")  # decisions that ran nothing: shown apart from tried / adopted


def _minutes(seconds: Optional[float]) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def steps_text(meta: ScanMeta) -> Optional[str]:
    """'each trial measured 20 to 60 steps, until its images/s was within +-3% (95% interval)'; None for fixed steps."""
    if not meta.precision or not meta.max_steps or meta.max_steps <= meta.measured_steps:
        return None
    return (
        f"each trial measured {meta.measured_steps} to {meta.max_steps} steps, until its images/s was within "
        f"±{100 * meta.precision:.3g}% (95% interval)"
    )


def budget_used_s(meta: ScanMeta) -> Optional[float]:
    """The scan wall time spent by the last decision the search took (the largest recorded)."""
    used = [d.budget_used_s for d in meta.decisions if d.budget_used_s is not None]
    return max(used) if used else None


def _search_context(meta: ScanMeta, anchors: dict[str, str]) -> dict:
    """'How the scan searched' (auto scans with decisions), and the step-range note for grid scans."""
    steps = steps_text(meta)
    if meta.strategy != "auto" or not meta.decisions:
        return dict(search=None, steps_note=steps)
    known = [s for s, _ in SEARCH_STAGES]
    titles = dict(SEARCH_STAGES) | {d.stage: d.stage for d in meta.decisions if d.stage not in known}
    groups = []
    for stage in dict.fromkeys(known + [d.stage for d in meta.decisions]):
        rows = [
            dict(
                kind=d.kind,
                setting="" if d.knob is None else f"{d.knob}={d.value}" if d.value is not None else d.knob,
                trial_id=d.trial_id,
                anchor=anchors.get(d.trial_id or ""),
                reason=d.reason,
                minutes=_minutes(d.budget_used_s),
                css="struck" if d.kind in _STRUCK else f"kind-{d.kind}",
            )
            for d in meta.decisions
            if d.stage == stage
        ]
        if rows:
            groups.append(dict(stage=stage, title=titles[stage], rows=rows))
    used = budget_used_s(meta)
    budget = (
        f"{_minutes(used) or 'n/a'} of {_minutes(meta.budget_s)} min used"
        if meta.budget_s
        else f"{_minutes(used) or 'n/a'} min used (no budget recorded)"
    )
    precision = steps or f"each trial measured {meta.measured_steps} steps (fixed, no precision target)"
    return dict(
        search=dict(
            strategy=meta.strategy, budget=budget, precision=precision, groups=groups, trials=len(meta.trial_ids)
        ),
        steps_note=None,
    )


def _trial_rows(out) -> list[dict]:
    """The trials table: one row per trial, in ranking order, with its verdict, role and epoch cells."""
    results, ranking = out.results, out.ranking
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    rows = table_rows(results, ranking)
    roles = {tid: role for role, tid in out.meta.baselines.items()}
    by_id = {r.trial_id: r for r in results}
    for row in rows:
        v = verdicts[row["trial_id"]]
        row["evidence"], row["label"], row["role"] = v.evidence, v.label or v.bottleneck, roles.get(row["trial_id"])
        row["recommended"] = row["trial_id"] == ranking.recommended_trial_id
        row["tied"] = bool(v.tied_with_best) and not row["recommended"]
        row["uncertainty"] = v.uncertainty or ""
        tel = by_id[row["trial_id"]].telemetry
        row["energy_j_per_img"] = tel.energy_j_per_img if tel else None
        row.update(epoch_view.table_cells(out.predictions.get(row["trial_id"])))
        k = by_id[row["trial_id"]].knobs
        row["precision"], row["more"] = k.precision, ", ".join(k.extras())
    return rows


def _figures(out, timelines: Optional[list]) -> list[dict]:
    """The report's charts of the trials: throughput with its intervals, the step's phases, and over time."""
    results, ranking = out.results, out.ranking
    figures = []
    ranked = ordered(results, ranking)
    svg = charts.throughput(ranked, {r.trial_id: noise.trial_interval(r, noise.run_to_run(results)) for r in ranked})
    if svg:
        figures.append(
            dict(
                title="Throughput",
                caption=(
                    "images/s per trial. Black whiskers: the 95% interval (batch means over the trial's steps, widened to "
                    "the run-to-run spread where repeats measured it); grey ticks: the per-step p10 and p90."
                ),
                svg=svg,
            )
        )
    svg = charts.breakdown(ranked)
    if svg:
        figures.append(
            dict(
                title="Where a step's time goes",
                svg=svg,
                caption=(
                    "Mean milliseconds per step by phase. Data wait: blocked on the next batch. Exposed AllReduce: "
                    "after the last gradient, waiting for gradient synchronisation. Device phases are timed with CUDA "
                    "events on GPUs, with the host clock on CPU."
                ),
            )
        )
    svg = charts.over_time(timelines or [])
    if svg:
        figures.append(
            dict(
                title="Over time: the best and the slowest trial",
                svg=svg,
                caption=(
                    "Bars: data wait of each measured step on rank 0 (width: the step). Line: GPU utilisation from NVML "
                    "where a GPU was sampled, else the CPU's (all cores). Time 0 is the start of the first measured step."
                ),
            )
        )
    return figures


def render(out, best_cfg: Optional[BestConfig], title: str, timelines: Optional[list] = None) -> str:
    meta, results, ranking, best = out.meta, out.results, out.ranking, out.best
    rows = _trial_rows(out)
    more = any(row["more"] for row in rows)  # a column for the knobs beyond the five where a trial set one
    opt_col = len({row["optimizer"] for row in rows}) > 1  # auto picked differently per batch: say which ran where
    figures = _figures(out, timelines) + _knob_figures(out)
    scale_groups = scaling.groups(results)
    command = "source best.env && yolo train cfg=best.yaml"
    return _ENV.get_template("report.html.j2").render(
        meta=meta,
        title=title,
        created=dt.datetime.fromtimestamp(meta.created_s).strftime("%Y-%m-%d %H:%M"),
        headline=out.headline,
        memory_line=out.memory_line,
        ranking=ranking,
        run_to_run=noise.run_to_run(results).text(),
        interval=_interval,
        best=best,
        command=command,
        best_yaml=render_yaml(meta, best, best_cfg) if best and best_cfg else "",
        best_env=render_env(best, best_cfg) if best and best_cfg else "",
        rows=rows,
        more_col=more,
        opt_col=opt_col,
        optimizer_of={r.trial_id: r.optimizer for r in results},
        num_cols=NUM_COLS,
        verdicts=ranking.verdicts,
        figures=figures,
        findings=best_cfg.findings if best_cfg else [],
        env_rows=env_rows(meta, results),
        fmt=_num,
        pct=_pct,
        ranks_of={r.trial_id: r.ranks for r in results},
        notes_of={r.trial_id: r.notes for r in results},
        scale_groups=scale_groups,
        scale_epoch={
            pt.trial_id: epoch_view.table_cells(out.predictions.get(pt.trial_id))
            for g in scale_groups
            for pt in g.points
        },
        training=epoch_view.context(
            out.predictions.get(ranking.best_trial_id or ""),
            meta.run_plan,
            out.epoch_costs,
            meta.device,
            best.world_size if best else meta.world_size,
        ),
        run_plan=meta.run_plan,
        amount=epoch_amount,
        precision_name=precision_name,
        scale_svg=charts.scaling(scale_groups),
        gpu_status=next((r.telemetry.gpu_status for r in results if r.telemetry), "not measured: no telemetry file"),
        **_ceiling_context(out),
        **_advice_context(out),
        **_search_context(meta, {t: f"trial-{t}" for t in meta.trial_ids}),  # links to the trials table's rows
    )


def _knob_figures(out) -> list[dict]:
    c, n, figs = out.ceilings, max(out.meta.world_size, 1), []
    loader: dict[str, dict] = {}  # a dashed line per pin_memory value the probe measured (one when it measured one)
    pts = [p for p in c.loader.points if p.img_per_s_machine] if c.loader else []
    pins = {p.pin_memory for p in pts}
    for p in pts:
        pin = f", pin_memory {'on' if p.pin_memory else 'off'}" if len(pins) > 1 else ""
        loader.setdefault(f"input ceiling (loaders alone{pin})", {})[p.workers] = p.img_per_s_machine
    svg = charts.against_knob(out.results, "workers", "batch", loader)
    if svg:
        figs.append(
            dict(
                title="Images/s against workers",
                svg=svg,
                caption=(
                    "Each line: the trials at one batch size (the best of their other settings). Dashed: what the "
                    "dataloaders deliver alone at each workers value, all ranks at once."
                ),
            )
        )
    lines = {}
    if c.compute:
        for amp in sorted({p.amp for p in c.compute.points}, key=precision_name):
            pts = {
                p.batch_ran * n: p.img_per_s * n
                for p in sorted(c.compute.points, key=lambda p: p.capped, reverse=True)
                if p.amp == amp and p.img_per_s
            }  # at the batch that ran; a point that ran as asked wins
            if pts:
                lines[f"compute ceiling, {precision_name(amp)}"] = pts
    svg = charts.against_knob(out.results, "batch", "workers", lines)
    if svg:
        figs.append(
            dict(
                title="Images/s against batch",
                svg=svg,
                caption=(
                    "Each line: the trials at one workers value. Dashed: the training step alone on one device with the "
                    "batch already there, times the ranks."
                ),
            )
        )
    return figs


def render_compare(comparison, a_title: str, b_title: str) -> str:
    def sign(v):
        return "n/a" if v is None else f"{v:+.1f}"

    def pm(v):
        return "" if v is None else f"±{v:.1f}"

    return _ENV.get_template("compare.html.j2").render(
        c=comparison, a_title=a_title, b_title=b_title, fmt=_num, pct=_pct, sign=sign, pm=pm
    )


def render_run(summary) -> str:
    """A watched run's page (`yoloprof train`, `yoloprof report RUN_DIR`), self-contained like the scan's."""
    from yoloprof.reports import charts

    tele = any(v.telemetry_samples for v in summary.epochs)
    return _ENV.get_template("run.html.j2").render(
        s=summary, chart=charts.run_epochs(summary), fmt=_num, pct=_pct, tele=tele
    )
