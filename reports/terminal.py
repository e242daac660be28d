"""The ranked table, the verdict and the doctor's view in the terminal (rich)."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from yoloprof.reports.csv_table import ordered
from yoloprof.analysis import noise
from yoloprof.analysis.epoch import amount, duration_band
from yoloprof.records import (
    AllReduceCeiling,
    ComputeCeiling,
    DoctorReport,
    EpochPrediction,
    Finding,
    LoaderCeiling,
    Ranking,
    RunPlan,
    ScanMeta,
    TrialResult,
    precision_name,
)


def fmt(v: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def interval_text(v: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    """'112.4 (108.9-115.8)': a figure with its 95% interval, the figure alone where it has none."""
    if v is None:
        return "n/a"
    if low is None or high is None:
        return f"{v:.1f}"
    return f"{v:.1f} ({low:.1f}-{high:.1f})"


def epoch_cells(p: Optional[EpochPrediction], rp: RunPlan) -> list[str]:
    """'11.8 min (11.2-12.5)', '19.7 h' and, with a price, '$49.25': what a team plans in, with its band."""
    if p is None or p.epoch_s is None:
        return ["n/a", "n/a"] + (["n/a"] if rp.gpu_hour_price is not None else [])
    cells = [
        duration_band(p.epoch_s, p.epoch_s_low, p.epoch_s_high),
        duration_band(*(None if x is None else 3600 * x for x in (p.run_h, p.run_h_low, p.run_h_high))),
    ]
    if rp.gpu_hour_price is not None:
        cells.append(amount(p.cost_run))  # the column names the currency
    return cells


def epoch_caption(p: Optional[EpochPrediction], rp: RunPlan) -> str:
    text = (
        f"epoch = its steps at the trial's rate + epoch start + validation + saving, as measured; "
        f"run = {rp.epochs} epochs ({rp.source}), close_mosaic {rp.close_mosaic}, start-up, set-up and final "
        "validation"
    )
    if rp.gpu_hour_price is not None:
        text += f"; cost at {rp.gpu_hour_price:g} {rp.currency} per GPU-hour (rank-hour on CPU)"
    if p is not None and p.parts_missing:
        text += "; not included: " + "; ".join(p.parts_missing)
    return text


def money(v: Optional[float], currency: str) -> str:
    return "n/a" if v is None else f"{amount(v)} {currency}"


def ranked_table(
    results: list[TrialResult],
    ranking: Ranking,
    title: str = "yoloprof: trials, best first",
    predictions: Optional[dict[str, EpochPrediction]] = None,
    run_plan: Optional[RunPlan] = None,
) -> Table:
    verdicts = {v.trial_id: v for v in ranking.verdicts}
    rtr = noise.run_to_run(results)
    predictions, rp = predictions or {}, run_plan or RunPlan()
    t = Table(title=title, header_style="bold")
    lead = [("epoch (95%)", "right"), (f"{rp.epochs} epochs", "right")] if predictions else []
    if predictions and rp.gpu_hour_price is not None:
        lead.append((f"cost {rp.currency}", "right"))
    # With the epoch columns the per-step spread, step times and peak memory give way, and exposed AllReduce
    # shows its share only (results.csv and the report keep them all): the trial ids must stay whole.
    detail = not lead
    cols = [("#", "right"), ("trial", "left"), *lead, ("img/s (95%)", "right")]
    cols += [("p10-p90", "right"), ("step ms", "right")] if detail else []
    cols += [("data wait", "right"), ("AllReduce exposed" if detail else "AllReduce", "right")]
    cols += [("peak MiB", "right")] if detail else []
    for col, just in cols + [("bound by", "left")]:
        width = max((len(r.trial_id) for r in results), default=0) if col == "trial" else None  # ids stay whole
        t.add_column(
            col,
            justify=just,
            no_wrap=col in ("#", "img/s (95%)", "epoch (95%)", f"{rp.epochs} epochs"),
            min_width=width,
        )
    for r in ordered(results, ranking):
        v = verdicts[r.trial_id]
        if r.status != "ok":
            blank = [""] * (len(cols) - 3 - len(lead))
            t.add_row("-", r.trial_id, *[""] * len(lead), f"[red]{r.status}[/]", *blank, v.evidence[:80])
            continue
        img = interval_text(r.img_per_s, *noise.trial_interval(r, rtr))
        name = r.trial_id
        if r.trial_id == ranking.recommended_trial_id:
            name += " [bold green]recommended[/]"
        elif v.tied_with_best and not v.repeat_of:
            name += " [yellow]tied[/]"
        if v.repeat_of:
            name += " [dim](repeat)[/]" if v.repeat_of in name else f" [dim](repeat of {v.repeat_of})[/]"
        style = "bold green" if r.trial_id == ranking.recommended_trial_id else ""
        cells = [
            str(v.position),
            name,
            *(epoch_cells(predictions.get(r.trial_id), rp) if lead else []),
            f"[{style}]{img}[/]" if style else img,
        ]
        if detail:
            cells += [
                f"{fmt(r.img_per_s_p10)}-{fmt(r.img_per_s_p90)}",
                f"{fmt(r.step_ms_p50, '.0f')} / p90 {fmt(r.step_ms_p90, '.0f')}",
            ]
        comm = "n/a" if r.comm_frac is None else pct(r.comm_frac)
        if detail and r.comm_frac is not None:
            comm = f"{fmt(r.comm_wait_ms_p50, '.0f')} ms ({comm})"
        cells += [pct(r.data_wait_frac), comm] + ([fmt(r.peak_mem_mib, ".0f")] if detail else [])
        t.add_row(*cells, v.label or v.bottleneck or "")
    notes = []
    if ranking.recommendation_reason:
        notes.append(ranking.recommendation_reason)
    notes.append(noise.run_to_run(results).text())
    if lead:
        notes.append(epoch_caption(predictions.get(ranking.best_trial_id or ""), rp))
    t.caption = "; ".join(notes)
    return t


def scaling_table(results: list[TrialResult], predictions: dict[str, EpochPrediction], rp: RunPlan) -> Optional[Table]:
    """The table teams draw when they add GPUs: ranks, an epoch, the run, its cost, efficiency."""
    from yoloprof.analysis import scaling

    groups = scaling.groups(results)
    if not groups:
        return None
    t = Table(title=f"Scaling: the same batch per rank, {rp.epochs} epochs", header_style="bold")
    cols = ["settings", "ranks", "an epoch", f"{rp.epochs} epochs"] + (
        [f"cost {rp.currency}"] if rp.gpu_hour_price is not None else []
    )
    for col in cols + ["img/s", "efficiency", "exposed AllReduce"]:
        t.add_column(col, justify="left" if col == "settings" else "right")
    for g in groups:
        for i, pt in enumerate(g.points):
            cells = epoch_cells(predictions.get(pt.trial_id), rp)
            t.add_row(
                g.settings if i == 0 else "",
                str(pt.world_size),
                *cells,
                fmt(pt.img_per_s),
                pct(pt.efficiency),
                pct(pt.comm_frac),
            )
    return t


def print_summary(console: Console, results: list[TrialResult], ranking: Ranking, headline: str) -> None:
    console.print(ranked_table(results, ranking))
    console.print(headline)


def _n(count: int, one: str, many: Optional[str] = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def search_summary(meta: ScanMeta) -> Optional[str]:
    """One line for the end of an auto scan: trials, budget used, what was pruned or skipped, what was repeated.

    'auto search: 14 trials in 4.6 of 5.0 min; 6 values pruned (2 by the hardware, 4 by the ceilings),
    3 skipped for the budget; 2 contenders repeated (3 runs).' None for grid scans and records without decisions."""
    if meta.strategy != "auto" or not meta.decisions:
        return None
    used = [d.budget_used_s for d in meta.decisions if d.budget_used_s is not None]
    spent = fmt(max(used) / 60 if used else None)
    budget = f"{spent} of {fmt(meta.budget_s / 60)} min" if meta.budget_s else f"{spent} min"
    head = f"auto search: {_n(len(meta.trial_ids), 'trial')} in {budget}"
    pruned = {
        stage: sum(d.kind == "pruned" and d.stage == stage for d in meta.decisions)
        for stage in dict.fromkeys(d.stage for d in meta.decisions)
    }
    names = {"space": "by the hardware", "ceilings": "by the ceilings", "descent": "as too large for memory"}
    parts = [f"{n} {names.get(stage, 'at ' + stage)}" for stage, n in pruned.items() if n]
    total = sum(pruned.values())
    skipped = sum(d.kind == "skipped-budget" for d in meta.decisions)
    runs = sum(d.kind == "repeat" for d in meta.decisions)
    contenders = {s.repeat_of for s in meta.specs if s.repeat_of}
    cut = _n(total, "value") + " pruned" + (f" ({', '.join(parts)})" if total else "")
    cut += f", {skipped} skipped for the budget"
    if contenders:
        again = f"{_n(len(contenders), 'contender')} repeated ({_n(runs, 'run')})"
    else:
        again = f"{_n(runs, 'confirmation run')}" if runs else "no contender repeated"
    return f"{head}; {cut}; {again}."


def loader_table(c: LoaderCeiling) -> Table:
    """Warm (the page cache holds the files, as in the trials) and cold (evicted first: an epoch over a dataset
    larger than memory), machine img/s with their 95% intervals; why cold is n/a in the caption."""
    caches = {p.cache or c.cache for p in c.points}
    t = Table(
        title=f"Input ceiling: the dataloader alone (imgsz {c.imgsz}, cache {'/'.join(sorted(caches))})",
        header_style="bold",
    )
    cols = ["workers/rank", "ran", "pin_memory", "ranks", "batch/rank"] + (["cache"] if len(caches) > 1 else [])
    for col in cols + ["img/s per rank", "img/s machine (95%)", "cold img/s machine (95%)", "CPU %", "status"]:
        t.add_column(col, justify="right")
    why = {}
    for p in c.points:
        pin = (
            "n/a"
            if p.pin_memory is None
            else ("on" if p.pin_memory else "off")
            + (" (off: no GPU)" if p.pin_memory and p.pin_memory_effective is False else "")
        )
        cold = interval_text(
            p.img_per_s_machine_cold, p.img_per_s_machine_cold_ci_low, p.img_per_s_machine_cold_ci_high
        )
        if p.cold_error:
            why.setdefault(p.cold_error, []).append(f"workers {p.workers}")
        t.add_row(
            str(p.workers),
            str(p.workers_effective),
            pin,
            str(p.ranks),
            str(p.batch_per_rank),
            *([p.cache or c.cache] if len(caches) > 1 else []),
            fmt(p.img_per_s_rank),
            interval_text(p.img_per_s_machine, p.img_per_s_machine_ci_low, p.img_per_s_machine_ci_high),
            cold,
            fmt(p.cpu_pct, ".0f"),
            p.status if p.status == "ok" else f"[red]{p.error}[/]",
        )
    notes = [f"cold n/a ({', '.join(w)}): {e}" for e, w in why.items()]
    evicted = [p for p in c.points if p.evicted_files]
    if evicted:
        fracs = [p.resident_frac_evicted for p in evicted if p.resident_frac_evicted is not None]
        left = f"at most {100 * max(fracs):.0f}%" if fracs else "unverified"
        notes.insert(
            0,
            f"cold: {evicted[0].evicted_files} files ({_size(evicted[0].evicted_bytes)}) evicted from the "
            f"page cache before each cold window; still cached after it: {left} (mincore)",
        )
    partly = [p for p in c.points if p.resident_frac_warm is not None and p.resident_frac_warm < WARM_RESIDENT]
    if partly:
        notes.append(
            f"warm ({', '.join(f'workers {p.workers}' for p in partly)}): only "
            f"{100 * min(p.resident_frac_warm for p in partly):.0f}% of the files were in the page cache when "
            "the window began, so its figure is partly cold"
        )
    t.caption = "; ".join(notes) or None
    return t


WARM_RESIDENT = 0.9  # a warm window that found less of the files cached is not quite warm: said under the table


def _size(nbytes: Optional[int]) -> str:
    from yoloprof.analysis.dataset_fit import size_text

    return size_text(nbytes)


def compute_table(c: ComputeCeiling) -> Table:
    t = Table(title=f"Compute ceiling: one {c.device_name}, batch already on the device", header_style="bold")
    for col in ("batch/rank", "precision", "img/s", "step ms", "peak MiB", "status"):
        t.add_column(col, justify="right")
    for p in c.points:
        batch = f"{p.batch_ran} (asked {p.batch})" if p.capped else str(p.batch)
        t.add_row(
            batch,
            precision_name(p.amp),
            fmt(p.img_per_s),
            fmt(p.step_ms_p50, ".0f"),
            fmt(p.peak_mem_mib, ".0f"),
            p.status if p.status == "ok" else f"[red]{p.status}: {p.error}[/]",
        )
    if c.max_batch_fit:
        t.caption = (
            "largest batch within 90% of device memory on one device alone: "
            + ", ".join(f"{k} {v}" for k, v in c.max_batch_fit.items())
            + " (a DDP rank fits less: the report subtracts its measured overhead)"
        )
    elif c.note:
        t.caption = c.note
    capped = sorted({(p.batch, p.batch_ran) for p in c.points if p.capped})
    if capped:  # the dataset holds fewer images than the batch: Ultralytics ran the smaller batch
        t.caption = (
            ((t.caption + "; ") if t.caption else "")
            + ", ".join(f"batch {a} ran as {b}" for a, b in capped)
            + ": Ultralytics caps the batch at the dataset's size"
        )
    return t


# An AllReduce whose host enqueue took this share of its measured time or more may have been timed by Python's
# enqueue rate, not the link (probes/allreduce_bench.py records enqueue_us on GPU).
ENQUEUE_BOUND_FRAC = 0.8


def allreduce_table(c: AllReduceCeiling) -> Table:
    nodes = f" across {c.nnodes} nodes" if c.nnodes > 1 else ""
    t = Table(
        title=f"Link ceiling: AllReduce on {c.world_size} ranks{nodes}, {c.backend}, nccl preset {c.nccl}",
        header_style="bold",
    )
    for col in ("size", "time us", "algbw GB/s", "busbw GB/s", "iters", ""):
        t.add_column(col, justify="right")
    for p in c.points:
        size = f"{p.size_bytes / 2**20:.2f} MiB" if p.size_bytes >= 2**20 else f"{p.size_bytes / 1024:.0f} KiB"
        host_bound = p.enqueue_us is not None and p.enqueue_us >= ENQUEUE_BOUND_FRAC * p.time_us
        note = ", ".join(x for x in ("model bucket" if p.is_bucket else "", "host-bound?" if host_bound else "") if x)
        t.add_row(size, fmt(p.time_us, ".0f"), fmt(p.algbw_gbs, ".3f"), fmt(p.busbw_gbs, ".3f"), str(p.iters), note)
    if c.status != "ok":
        t.caption = f"[red]{c.error}[/]"
    return t


def _gib(mib: Optional[float]) -> str:
    return fmt(None if mib is None else mib / 1024, ".1f", " GiB")


def doctor_view(r: DoctorReport, found: list[Finding], plan_why: str) -> list:
    """`yoloprof doctor`: the readings, the GPUs and their links, then the findings with their fixes."""
    facts = Table.grid(padding=(0, 2))
    checks = "; ".join(
        f"{' '.join(f'{k}={v}' for k, v in c.env.items()) or 'as set'}: {c.status}"
        + (f" in {c.wall_s:.1f} s" if c.status == "ok" else "")
        for c in r.collectives
    )
    for k, v in (
        ("plan", f"{plan_why}; up to {fmt(r.workers_per_rank, 'd')} DataLoader worker(s) per rank"),
        ("torch", f"{r.torch}, built for CUDA {r.torch_cuda or 'none (CPU-only build)'}; NCCL {r.nccl or 'n/a'}"),
        (
            "driver",
            f"{r.driver}, runs CUDA up to {r.driver_cuda or 'n/a'}" if r.driver else f"n/a (NVML {r.nvml_status})",
        ),
        (
            "GPUs",
            f"torch sees {len(r.torch_gpus)}, NVML {len(r.nvml_gpus) if r.nvml_status == 'ok' else 'n/a'}"
            + (f" ({r.torch_cuda_error})" if r.torch_cuda_error and not r.torch_gpus else "")
            + (f"; CUDA_VISIBLE_DEVICES={r.cuda_visible_devices}" if r.cuda_visible_devices is not None else ""),
        ),
        ("CPU", f"{r.cpu_count} cores" + (f", {r.cpu_count / r.ranks:.1f} per rank" if r.ranks else "")),
        ("RAM", f"{_gib(r.ram_total_mib)}, {_gib(r.ram_available_mib)} available"),
        ("/dev/shm", f"{_gib(r.shm_total_mib)}, {_gib(r.shm_free_mib)} free"),
        ("open files", f"{r.nofile_soft or 'unlimited'} (hard {r.nofile_hard or 'unlimited'})"),
        (
            "AllReduce",
            f"{r.collectives[0].backend}, {r.collectives[0].world_size} ranks: {checks}"
            if r.collectives
            else "not run (one rank)",
        ),
    ):
        facts.add_row(f"[bold]{k}[/]", v)
    out: list = [facts]
    if r.nvml_gpus or r.torch_gpus:
        t = Table(title="GPUs (NVML index = nvidia-smi's; CUDA index = torch's under CUDA_VISIBLE_DEVICES)")
        for col in ("NVML", "CUDA", "name", "memory", "UUID"):
            t.add_column(col)
        for g in r.nvml_gpus:
            t.add_row(
                str(g.nvml_index),
                "hidden" if g.cuda_index is None else str(g.cuda_index),
                g.name or "n/a",
                _gib(g.mem_total_mib),
                g.uuid or "n/a",
            )
        if not r.nvml_gpus:
            for g in r.torch_gpus:
                t.add_row("n/a", str(g.index), g.name, _gib(g.mem_total_mib), "n/a")
        out.append(t)
    if r.links:
        ids = sorted({x.gpu_a for x in r.links} | {x.gpu_b for x in r.links})
        cell = {(x.gpu_a, x.gpu_b): "NV" if x.nvlink else (x.pcie or "n/a") for x in r.links}
        t = Table(
            title="GPU links (CUDA indices)",
            caption="NV NVLink, PIX/PXB PCIe switch(es), PHB PCIe host bridge, "
            "NODE host bridges of one CPU, SYS across CPU sockets",
        )
        t.add_column("")
        for i in ids:
            t.add_column(f"GPU{i}", justify="center")
        for a in ids:
            t.add_row(f"GPU{a}", *("X" if a == b else cell.get((min(a, b), max(a, b)), "n/a") for b in ids))
        out.append(t)
    t = Table(title="Findings", header_style="bold", show_lines=True)
    for col in ("", "finding", "fix"):
        t.add_column(col)
    style = {"error": "[bold red]error[/]", "warn": "[yellow]warn[/]", "ok": "[green]ok[/]"}
    for f in found:
        t.add_row(style[f.severity], f.what, f.fix or "")
    out.append(t)
    return out
