"""The GPU check's verdicts: pure functions of records (no GPU, no child process), so that the tests can
judge hand-made and recorded CPU records exactly as the device run judges its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from yoloprof.records import Breakdown, ComputePoint, Knobs, RankRecords, StepSample, TrialResult

PHASES = ("data_wait_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")
PHASE_REL_TOL, PHASE_ABS_TOL_MS = 0.10, 1.0  # the bar: within 10% or 1 ms
MAX_POWER_W = 1500.0  # above any single GPU's board limit: a reading past it is a unit error


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None: could not be checked (said why)
    detail: str
    figures: dict = field(default_factory=dict)


def compare_phases(events: Breakdown, synced: Breakdown) -> Check:
    """Each phase of the event-timed run against the synchronized reference."""
    rows, bad = {}, []
    for p in PHASES:
        a, b = getattr(events, p), getattr(synced, p)
        if a is None or b is None:
            rows[p] = None
            continue
        diff = abs(a - b)
        rows[p] = dict(events_ms=round(a, 3), synced_ms=round(b, 3), diff_ms=round(diff, 3))
        if diff > max(PHASE_REL_TOL * b, PHASE_ABS_TOL_MS):
            bad.append(p)
    measured = [p for p in PHASES if rows[p] is not None]
    if not measured:
        return Check("phase times vs synchronized", None, "no phase was measured in both runs", rows)
    text = ", ".join(f"{p[:-3]} {rows[p]['events_ms']:.1f}/{rows[p]['synced_ms']:.1f} ms" for p in measured)
    return Check(
        "phase times vs synchronized",
        not bad,
        f"events/synced: {text}" + (f"; off by more than 10% and 1 ms: {', '.join(bad)}" if bad else ""),
        rows,
    )


def telemetry_plausible(results: list[TrialResult]) -> Check:
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return Check("NVML telemetry", None, "no trial finished")
    problems, figures = [], {}
    for r in ok:
        t = r.telemetry
        if t is None or t.gpu_status != "ok":
            problems.append(f"{r.trial_id}: {t.gpu_status if t else 'no telemetry'}")
            continue
        figures[r.trial_id] = dict(
            util_pct=t.gpu_util_mean_pct,
            power_w=t.power_w_mean,
            mem_used_peak_mib=t.gpu_mem_used_peak_mib,
            energy_j_per_img=t.energy_j_per_img,
        )
        if t.gpu_util_mean_pct is None or not 0 < t.gpu_util_mean_pct <= 100:
            problems.append(f"{r.trial_id}: utilisation {t.gpu_util_mean_pct}")
        if t.power_w_mean is not None and not 0 < t.power_w_mean < MAX_POWER_W:
            problems.append(f"{r.trial_id}: power {t.power_w_mean} W")
        total = r.device_mem_total_mib
        if (
            t.gpu_mem_used_peak_mib is None
            or t.gpu_mem_used_peak_mib <= 0
            or (total and t.gpu_mem_used_peak_mib > total * 1.01)
        ):
            problems.append(f"{r.trial_id}: memory used {t.gpu_mem_used_peak_mib} MiB of {total}")
        if r.peak_mem_mib and t.gpu_mem_used_peak_mib and t.gpu_mem_used_peak_mib < r.peak_mem_mib:
            problems.append(
                f"{r.trial_id}: NVML used {t.gpu_mem_used_peak_mib:.0f} < allocator {r.peak_mem_mib:.0f} MiB"
            )
    return Check("NVML telemetry", not problems, "; ".join(problems) or f"plausible in {len(figures)} trials", figures)


def fit_against_oom(fit: Optional[int], points: list[ComputePoint]) -> Check:
    """The predicted largest batch (90% of memory) must run, and must sit below the first real OOM."""
    oom = sorted(p.batch for p in points if p.status == "oom")
    ran = sorted(p.batch for p in points if p.status == "ok")
    if fit is None:
        return Check("memory fit vs real OOM", None, "no fit (fewer than two compute points)")
    if not oom:
        return Check(
            "memory fit vs real OOM",
            None,
            f"fit {fit}; no batch tried ran out of memory (largest run {ran[-1] if ran else 'none'})",
        )
    first = oom[0]
    ok = fit < first and (fit in ran or any(b >= fit for b in ran))
    return Check(
        "memory fit vs real OOM",
        ok,
        f"fit {fit} per rank (90% of memory); first OOM at {first}; fit / OOM = {fit / first:.2f}",
        dict(fit=fit, first_oom=first, ran=ran),
    )


# -- verdicts on rank records (pure: tested on the recorded CPU scans) --------------------------------

ADD_UP_REL, ADD_UP_ABS_MS = 0.01, 0.01  # the parts of a step add up to it within 1% (0.01 ms for tiny steps)
STEP_PARTS = (
    "data_wait_ms",
    "h2d_ms",
    "forward_ms",
    "backward_ms",
    "comm_wait_ms",
    "optimizer_ms",
    "epoch_end_ms",
    "other_ms",
)
REQUIRED_PARTS = ("data_wait_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms", "other_ms")


def step_problem(s: StepSample) -> Optional[str]:
    """Why a step's phases do not add up to it on one timeline, or None. `other_ms` is the remainder, so
    the sum holds by construction once every part is there: what can go wrong is a part missing or a
    part below zero (a negative remainder: the measured parts are longer than the step itself)."""
    tol = max(ADD_UP_REL * abs(s.step_ms), ADD_UP_ABS_MS)
    missing = [p[:-3] for p in REQUIRED_PARTS if getattr(s, p) is None]
    if missing:
        return f"no {', '.join(missing)}"
    negative = [f"{p[:-3]} {getattr(s, p):.3f}" for p in STEP_PARTS if (getattr(s, p) or 0.0) < -tol]
    if negative:
        return f"below zero: {', '.join(negative)} ms of a {s.step_ms:.3f} ms step"
    total = sum(getattr(s, p) or 0.0 for p in STEP_PARTS)
    if s.step_ms <= 0 or abs(total - s.step_ms) > tol:
        return f"parts {total:.3f} ms vs step {s.step_ms:.3f} ms"
    return None


def steps_check(trials: dict[str, list[RankRecords]], timing: str, label: str = "") -> list[Check]:
    """Every step line of every rank: timed as `timing` ("cuda_event" for a scan on a GPU), and its
    phases adding up to its step_ms within 1%."""
    steps = [(tid, s) for tid, ranks in trials.items() for r in ranks for s in r.steps]
    name_t, name_a = f"step timing{label}", f"phases add up{label}"
    if not steps:
        return [Check(name_t, False, "no step recorded"), Check(name_a, False, "no step recorded")]
    bad_t = [f"{tid} rank {s.rank} step {s.step}: {s.timing}" for tid, s in steps if s.timing != timing]
    empty = [tid for tid, ranks in trials.items() if not any(r.steps for r in ranks)]
    bad_t += [f"{tid}: no step" for tid in empty]
    bad_a = [f"{tid} rank {s.rank} step {s.step}: {why}" for tid, s in steps if (why := step_problem(s))]
    counts = dict(steps=len(steps), trials=len(trials))

    def check(name, bad, ok_text):
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        return Check(name, not bad, "; ".join(bad[:5]) + more if bad else ok_text, {**counts, "bad": len(bad)})

    return [
        check(name_t, bad_t, f"all {len(steps)} steps of {len(trials)} trials timed {timing}"),
        check(name_a, bad_a, f"all {len(steps)} steps add up within 1%"),
    ]


def expected_settings(knobs: Knobs, device: str) -> dict:
    """What each rank's info line must say ran, for the knobs asked (None: not checked)."""
    cuda = device == "cuda"
    return dict(
        amp_effective=cuda and knobs.amp in (True, "bf16"),  # check_amp and bf16 both leave amp on
        pin_memory_effective=cuda and knobs.pin_memory,  # Ultralytics: `nd > 0 and pin_memory`
        compiled=knobs.compile != "off",
        deterministic_effective=knobs.deterministic,
        channels_last_effective=cuda and knobs.channels_last,
    )  # NCHW on CPU either way


def settings_check(trials: dict[str, tuple[Knobs, str, list[RankRecords]]], keys: tuple[str, ...]) -> Check:
    """The effective settings in every rank's info line against the knobs the trial asked for."""
    bad, seen = [], 0
    for tid, (knobs, device, ranks) in trials.items():
        want = expected_settings(knobs, device)
        for r in ranks:
            if r.info is None:
                bad.append(f"{tid} rank {r.rank}: no info line")
                continue
            seen += 1
            for k in keys:
                got = getattr(r.info, k)
                if got is not None and bool(got) != want[k]:
                    bad.append(f"{tid} rank {r.rank}: {k} {got}, asked {want[k]}")
    if not trials or not seen:
        return Check("effective settings", False, "no rank info line")
    return Check(
        "effective settings", not bad, "; ".join(bad) or f"{', '.join(keys)} as asked on {seen} ranks", dict(ranks=seen)
    )


def trials_check(results: list[TrialResult], planned: list[str], expect: Optional[int] = None) -> Check:
    """Every planned trial finished ok (and as many as the stage planned)."""
    by_id = {r.trial_id: r for r in results}
    bad = [f"{t}: no result" for t in planned if t not in by_id]
    bad += [f"{r.trial_id}: {r.status} {r.error or ''}".strip() for r in results if r.status != "ok"]
    if expect is not None and len(planned) != expect:
        bad.append(f"{len(planned)} trials planned, {expect} expected")
    figures = {r.trial_id: dict(status=r.status, img_per_s=r.img_per_s, step_ms_p50=r.step_ms_p50) for r in results}
    return Check("trials", not bad, "; ".join(bad) or f"all {len(planned)} trials ok", figures)


def verdict_of(checks: list[Check]) -> str:
    if any(c.ok is False for c in checks):
        return "fail"
    if checks and all(c.ok is True for c in checks):
        return "pass"
    return "n/a"


def watch_check(run_dir, epochs: int, timing: str, gpus: list[int]) -> list[Check]:
    """`yoloprof train`'s watch of a real run (issue 23): a line per epoch on rank 0, timed as asked (CUDA
    events on a GPU) with the allocator's peak, and the node's telemetry with readings of the GPUs it trained on."""
    import json
    from pathlib import Path

    folder = Path(run_dir) / "yoloprof"
    try:
        lines = [json.loads(x) for x in (folder / "rank0.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as exc:
        return [Check("watch records", False, f"rank0.jsonl unreadable: {exc}")]
    rows = [x for x in lines if x.get("kind") == "epoch"]
    bad = [f"{len(rows)} epoch lines, {epochs} expected"] if len(rows) != epochs else []
    for e in rows:
        if e.get("timing") != timing:
            bad.append(f"epoch {e.get('epoch')} timed {e.get('timing')!r}, not {timing!r}")
        if not (e.get("steps") or 0) > 0 or not (e.get("train_s") or 0) > 0 or not (e.get("peak_mem_mib") or 0) > 0:
            bad.append(f"epoch {e.get('epoch')}: steps, train_s or peak_mem_mib missing or zero")
    figures = {"epochs": [{k: e.get(k) for k in ("epoch", "steps", "train_s", "peak_mem_mib")} for e in rows]}
    checks = [Check("watch records", not bad, "; ".join(bad) or f"{len(rows)} epochs, {timing}", figures)]
    try:
        tele = [json.loads(x) for x in (folder / "telemetry-node0.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as exc:
        return checks + [Check("run telemetry", False, f"telemetry-node0.jsonl unreadable: {exc}")]
    header = next((x for x in tele if x.get("kind") == "header"), {})
    gpu = [x for x in tele if x.get("kind") == "gpu"]
    cpu = [x for x in tele if x.get("kind") == "cpu" and x.get("cpu_pct_per_core")]
    if not gpus:  # a CPU run: said so, never zeros
        ok = str(header.get("gpu_status", "")).startswith("not measured") and bool(cpu) and not gpu
        return checks + [Check("run telemetry", ok, f"{len(cpu)} CPU readings; GPU: {header.get('gpu_status')}")]
    clocks = [x.get("sm_clock_mhz") for x in gpu if x.get("sm_clock_mhz")]
    ok = header.get("gpus") == gpus and bool(clocks) and bool(cpu)
    detail = f"{len(gpu)} GPU samples of {header.get('gpus')} (SM clock {min(clocks, default=0)}-{max(clocks, default=0)} MHz), {len(cpu)} CPU"
    return checks + [Check("run telemetry", ok, detail, {"gpu_samples": len(gpu), "cpu_samples": len(cpu)})]
