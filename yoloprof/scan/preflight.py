"""The doctor's checks in order, for `yoloprof doctor` and for the start of every scan and probe.

Readings come from probes/ (system_check: milliseconds, no subprocess; yoloprof.scan.collective: a
torchrun of seconds), judgement from yoloprof.analysis.doctor. A CPU scan adds no subprocess; a scan on 2+
GPUs runs the collective check first, because a hang there would hang every trial for 15 minutes.
"""

from __future__ import annotations

import dataclasses
import os

from rich.console import Console

from yoloprof import paths
from yoloprof.analysis import doctor
from yoloprof.scan import launch
from yoloprof.search import plan
from yoloprof.errors import UsageError
from yoloprof.records import DoctorReport, Environment, Finding

COLLECTIVE_TIMEOUT_S = 60.0  # torchrun, CUDA and NCCL start-up on 8 GPUs take 10-20 s; Ultralytics waits 3 h


def readings(env: Environment, device_asked) -> DoctorReport:
    """The cheap readings (NVML, /dev/shm, open files); the plan's ranks and workers come later."""
    from yoloprof.probes import system_check

    return system_check.collect(env, device_asked=device_asked)


def planned(report: DoctorReport, hw: plan.Hardware, workers: int) -> DoctorReport:
    return dataclasses.replace(report, device=hw.device, ranks=hw.world_size, workers_per_rank=workers)


def first_collective(report: DoctorReport, hw: plan.Hardware, timeout_s: float, console: Console) -> DoctorReport:
    from yoloprof.scan import collective  # the parent side: torchrun, timeout, retry

    backend = "nccl" if hw.device == "cuda" else "gloo"
    console.print(f"Checking a {backend} AllReduce across {hw.world_size} ranks (at most {timeout_s:.0f} s a try)...")
    visible = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    gpus = [visible[g] if visible else str(g) for g in hw.gpus] if hw.device == "cuda" else None
    checks = collective.run(hw.world_size, backend=backend, timeout_s=timeout_s, gpus=gpus)
    return dataclasses.replace(report, collectives=checks)


def before_scan(
    report: DoctorReport, hw: plan.Hardware, workers: int, console: Console, timeout_s: float = COLLECTIVE_TIMEOUT_S
) -> DoctorReport:
    """Warnings printed, an error raised as a UsageError: all before the first trial."""
    report = planned(report, hw, workers)
    if hw.device == "cuda" and hw.world_size >= 2:
        report = first_collective(report, hw, timeout_s, console)
    found = doctor.findings(report)
    for f in found:
        if f.severity == "warn":
            console.print(f"  [yellow]warning[/]: {doctor.one_line(f)}")
    doctor.stop_on_errors(found)
    return report


def examine(req, timeout_s: float, console: Console) -> tuple[DoctorReport, list[Finding], str]:
    """`yoloprof doctor`: every reading and the collective check on the ranks a scan would use."""
    from yoloprof.probes import environment
    from yoloprof.scan.request import resolve_hardware

    os.environ.update(launch.offline_env(paths.cache_dir()))  # before anything imports ultralytics
    os.environ["YOLO_VERBOSE"] = "False"
    env = environment.collect()
    report = readings(env, req.device)
    try:
        hw, why = resolve_hardware(req, env)
    except UsageError:
        doctor.gate(report)  # a torch blind to the GPUs explains "no GPU visible" better
        raise
    devices = hw.world_size if hw.device == "cpu" else len(env.gpus)
    report = planned(report, hw, doctor.ultralytics_workers(env.cpu_count, devices))
    if hw.world_size >= 2:
        report = first_collective(report, hw, timeout_s, console)
    return report, doctor.findings(report), why
