"""Run the three ceilings on the scan's own model, data and hardware.

input:   the training dataloader alone, one loader per rank at once, each loading as that rank of a
         trial does: its own shard, device and pin_memory (probes/loader_bench.py); warm (files in the
         page cache, as a trial reads them) and cold (evicted first, as an epoch over a dataset larger
         than the memory the machine can spare reads them)
compute: the training loop on one device with one batch already there (a world-size-1 trial in
         "compute" mode, so loss, backward, optimizer and accumulation are Ultralytics' own)
link:    an nccl-tests style AllReduce sweep on the scan's ranks and backend (probes/allreduce_bench.py)

Each writes JSON into a folder (a scan's `ceilings/`, or a `yoloprof probe` folder) and a failure
is recorded in the point, never raised: a ceiling is evidence, not a precondition.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from yoloprof.analysis import aggregate, intervals
from yoloprof.analysis.optimizer import for_batch
from yoloprof.scan import launch
from yoloprof.search import plan
from yoloprof.analysis.memory_fit import max_batch_fit
from yoloprof.records import (
    PRECISIONS,
    AllReduceCeiling,
    ComputeCeiling,
    ComputePoint,
    Knobs,
    LoaderCeiling,
    LoaderPoint,
    OptimizerPlan,
    RecordError,
    TrialResult,
    TrialSpec,
    precision_name,
    read_json,
    write_json,
)
from yoloprof.analysis.stats import median

PROBE_TIMEOUT_S = 900.0


def _env(cache_dir: Path, extra: Optional[dict] = None) -> dict:
    return {**os.environ, **launch.offline_env(cache_dir), **(extra or {})}


def _wait_all(
    procs: list[subprocess.Popen],
    timeout_s: float,
    peers_grace_s: Optional[float] = None,
    abort: Optional[Callable[[], Optional[str]]] = None,
) -> bool:
    """True when every process ended in time. peers_grace_s: once one fails, the others get this long
    (a rank that died before joining their process group would leave them waiting for its timeout).
    abort: a reason to stop now (another node of the launch is gone)."""
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or (abort is not None and abort() is not None):
                return False
            if peers_grace_s is not None and any(p.poll() not in (None, 0) for p in procs):
                deadline = min(deadline, time.monotonic() + peers_grace_s)
            time.sleep(0.05)
        return True
    finally:
        for p in procs:
            launch.kill_group(p, grace_s=2.0)


def rank_devices(device: str, gpus: Optional[list[int]], ranks: int) -> list[str]:
    """The device each rank's loader feeds: the one that rank of a trial uses, never cuda:0 for all.

    A trial's rank r runs on CUDA index gpus[r] (Ultralytics' `device="2,3"` picks devices[LOCAL_RANK])
    with the scan's CUDA_VISIBLE_DEVICES inherited unchanged. The probes inherit it too, so the same
    index names the same GPU (`physical` says which one) and Ultralytics counts the same devices
    when it divides the cores among workers. No gpus: the first `ranks` indices, as a trial's default.
    """
    if device != "cuda":
        return ["cpu"] * ranks
    gpus = list(gpus) if gpus else list(range(ranks))
    if len(gpus) < ranks:
        raise ValueError(f"{ranks} loader ranks need {ranks} GPUs, got {gpus}")
    return [f"cuda:{g}" for g in gpus[:ranks]]


def loader_commands(
    raw: Path,
    *,
    data: str,
    model: str,
    imgsz: int,
    batch_per_rank: int,
    workers: int,
    pin_memory: bool,
    ranks: int,
    devices: list[str],
    cache: str,
    batches: int,
    warmup: int,
    cold: bool = True,
) -> list[list[str]]:
    """One probe command per rank; they meet at raw/rendezvous (a gloo FileStore, see probes/loader_bench)."""
    return [
        [
            sys.executable,
            "-m",
            "yoloprof.probes.loader_bench",
            "--data",
            data,
            "--model",
            model,
            "--imgsz",
            str(imgsz),
            "--batch",
            str(batch_per_rank),
            "--workers",
            str(workers),
            "--pin-memory",
            "on" if pin_memory else "off",
            "--cache",
            cache,
            "--device",
            devices[r],
            "--rank",
            str(r),
            "--ranks",
            str(ranks),
            "--rendezvous",
            str(raw / "rendezvous"),
            "--batches",
            str(batches),
            "--warmup",
            str(warmup),
            "--cold",
            "on" if cold else "off",
            "--out",
            str(raw / f"rank{r}.json"),
        ]
        for r in range(ranks)
    ]


def loader(
    out: Path,
    *,
    data: str,
    model: str,
    imgsz: int,
    batch_per_rank: int,
    workers: list[int],
    ranks: int,
    device: str,
    cache: str,
    cache_dir: Path,
    pin_memory: Sequence[bool] = (True,),
    gpus: Optional[list[int]] = None,
    batches: int = 20,
    warmup: int = 3,
    cold: Union[bool, str] = True,
    caches: Sequence[str] = (),
) -> LoaderCeiling:
    """One point per workers x pin_memory value, each loading as the trials' ranks do (probes/loader_bench).

    pin_memory: the scan's planned values (Ultralytics' own default, on, when not given); gpus: the
    scan's CUDA indices, one per rank; cold: also time each point after evicting the files from the page
    cache (a text: why not, recorded in each point); caches: further Ultralytics cache values to probe
    (cache=disk where the dataset does not fit).
    """
    devices = rank_devices(device, gpus, ranks)
    points = []
    for c, w, pin in [(c, w, pin) for c in dict.fromkeys([cache, *caches]) for w in workers for pin in pin_memory]:
        tag = "" if c == cache else f"-cache{c}"
        raw = Path(out) / "raw" / f"loader-w{w}-pin{'on' if pin else 'off'}{tag}"
        raw.mkdir(parents=True, exist_ok=True)
        for stale in [raw / "rendezvous", *(raw / f"rank{r}.json" for r in range(ranks))]:
            stale.unlink(missing_ok=True)  # a FileStore must start empty; an old result must not pass as new
        cmds = loader_commands(
            raw,
            data=data,
            model=model,
            imgsz=imgsz,
            batch_per_rank=batch_per_rank,
            workers=w,
            pin_memory=pin,
            ranks=ranks,
            devices=devices,
            cache=c,
            batches=batches,
            warmup=warmup,
            cold=cold is True,
        )
        point = _loader_point(raw, cmds, cache_dir, w, pin, ranks, batch_per_rank, batches)
        point.cache = c
        if isinstance(cold, str) and point.status == "ok":
            point.cold_error = cold
        points.append(point)
    ceiling = LoaderCeiling(data=data, imgsz=imgsz, cache=cache, points=points)
    write_json(Path(out) / "loader.json", ceiling)
    return ceiling


def _loader_point(
    raw: Path, cmds: list[list[str]], cache_dir: Path, w: int, pin: bool, ranks: int, batch_per_rank: int, batches: int
) -> LoaderPoint:
    env = _env(cache_dir, {"OMP_NUM_THREADS": str(plan.omp_threads(os.cpu_count() or 1, ranks))})  # as the trials'
    procs = []
    for r, cmd in enumerate(cmds):
        log = open(raw / f"rank{r}.log", "wb")
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        )
        log.close()
    finished = _wait_all(procs, PROBE_TIMEOUT_S, peers_grace_s=30.0)
    results = []
    for r in range(ranks):
        try:
            results.append(read_json(raw / f"rank{r}.json"))
        except (OSError, RecordError):
            results.append(
                {
                    "status": "error",
                    "error": "no result (timed out or killed)"
                    if not finished
                    else " ".join(aggregate.log_tail(raw / f"rank{r}.log", 1)) or "no result",
                }
            )
    # The cause, not its echo: a rank's failure reaches its peers as gloo's "Connection closed by peer".
    bads = sorted(
        (x for x in results if x.get("status") != "ok"), key=lambda x: "closed by peer" in str(x.get("error"))
    )
    bad = bads[0] if bads else None
    ok = [x for x in results if x.get("status") == "ok"]
    first = ok[0] if ok else {}
    point = LoaderPoint(
        workers=w,
        workers_effective=first.get("workers_effective", w),
        ranks=ranks,
        batch_per_rank=batch_per_rank,
        batches=batches,
        img_per_s_rank=median(x["img_per_s"] for x in ok) if not bad else None,
        img_per_s_machine=sum(x["img_per_s"] for x in ok) if not bad else None,
        cpu_pct=sum(x["cpu_pct"] for x in ok) if not bad else None,
        status="ok" if not bad else "error",
        error=bad.get("error") if bad else None,
        pin_memory=pin,
        pin_memory_effective=first.get("pin_memory_effective"),
        batches_per_epoch=first.get("batches_per_epoch"),
        devices=[x.get("device") for x in ok] if not bad else [],
    )
    if not bad:
        _rates(point, ok)
    return point


def _bounds(iv) -> tuple[Optional[float], Optional[float]]:
    return (iv.low, iv.high) if iv is not None and math.isfinite(iv.high) else (None, None)


def _rates(p: LoaderPoint, ranks: list[dict]) -> None:
    """The warm interval, and the cold rate with its interval, from the ranks' per-batch times."""
    warm = [(x["batch_images"], x["batch_ms"]) for x in ranks if x.get("batch_ms")]
    if len(warm) == len(ranks):
        p.img_per_s_machine_ci_low, p.img_per_s_machine_ci_high = _bounds(intervals.summed_throughput(warm))
    lead = next((x for x in ranks if x.get("rank") == 0), ranks[0])
    p.resident_frac_warm = lead.get("resident_frac_warm")
    p.evicted_files, p.evicted_bytes = lead.get("evicted_files"), lead.get("evicted_bytes")
    p.resident_frac_evicted = lead.get("resident_frac_evicted")
    if "cold_img_per_s" not in lead and "cold_error" not in lead:
        return  # cold not asked (or a probe from before it)
    p.cold_error = next((x["cold_error"] for x in ranks if x.get("cold_error")), None)
    cold = [(x["cold_batch_images"], x["cold_batch_ms"]) for x in ranks if x.get("cold_batch_ms")]
    if p.cold_error or len(cold) != len(ranks):
        p.cold_error = p.cold_error or "a rank timed no cold batch"
        return
    p.img_per_s_machine_cold = sum(x["cold_img_per_s"] for x in ranks)
    p.img_per_s_rank_cold = median(x["cold_img_per_s"] for x in ranks)
    p.cold_batches = min(len(ms) for _, ms in cold)
    p.img_per_s_machine_cold_ci_low, p.img_per_s_machine_cold_ci_high = _bounds(intervals.summed_throughput(cold))


def compute_specs(
    hw: plan.Hardware,
    batches: list[int],
    amps: list[bool],
    *,
    model: str,
    data: str,
    imgsz: int,
    optimizer: Union[str, OptimizerPlan],
    warmup: int,
    steps: int,
) -> list[TrialSpec]:
    """One world-size-1 trial per per-rank batch and AMP setting, each mirroring a DDP trial of global batch
    b x ranks: nbs keeps that trial's accumulation, and the optimizer is that trial's (auto picks per global batch)."""
    specs = []
    n = max(hw.world_size, 1)
    for b in sorted({max(B // n, 1) for B in batches}):
        accumulate = max(round(64 / (b * n)), 1)  # what a DDP trial with global batch b*n accumulates
        name, iterations = for_batch(optimizer, b * n)
        for amp in amps:
            knobs = Knobs(batch=b, workers=0, amp=amp, pin_memory=False, cache="off", nccl="default")
            specs.append(
                TrialSpec(
                    trial_id=f"compute-b{b}-{precision_name(amp)}",
                    knobs=knobs,
                    world_size=1,
                    device=hw.device,
                    gpus=hw.gpus[:1],
                    model=model,
                    data=data,
                    imgsz=imgsz,
                    optimizer=name,
                    warmup_steps=warmup,
                    measured_steps=steps,
                    env={"OMP_NUM_THREADS": str(plan.omp_threads(hw.cpu_count, n))},
                    mode="compute",
                    overrides={"nbs": accumulate * b},
                    optimizer_iterations=iterations,
                )
            )
    return specs


def compute_point(
    spec: TrialSpec, tdir: Path, *, cache_dir: Path, should_stop: Optional[Callable[[], bool]] = None
) -> tuple[ComputePoint, TrialResult]:
    """One compute-probe trial run and read back: its point (at the batch that ran) and its result."""
    outcome = launch.run_trial(spec, tdir, cache_dir=cache_dir, should_stop=should_stop)
    write_json(tdir / "launch.json", outcome)
    r = aggregate.aggregate(spec, aggregate.read_ranks(tdir), outcome)
    p = ComputePoint(
        batch=spec.knobs.batch,
        amp=spec.knobs.amp,
        status=r.status,
        img_per_s=r.img_per_s,
        step_ms_p50=r.step_ms_p50,
        peak_mem_mib=r.peak_mem_mib,
        mem_source="cuda_reserved" if spec.device == "cuda" else "rss",
        trial_id=spec.trial_id,
        error=r.error,
        batch_effective=r.batch_per_rank_effective,
    )
    return p, r


def compute(
    out: Path,
    specs: list[TrialSpec],
    *,
    cache_dir: Path,
    device_name: str,
    device_mem_total_mib: Optional[float],
    on_point: Optional[Callable] = None,
) -> ComputeCeiling:
    points = []
    for spec in specs:
        p, _ = compute_point(spec, Path(out) / "compute" / spec.trial_id, cache_dir=cache_dir)
        points.append(p)
        if on_point is not None:
            on_point(p)
    ceiling = ComputeCeiling(
        device=specs[0].device if specs else "cpu",
        device_name=device_name,
        device_mem_total_mib=device_mem_total_mib,
        points=points,
    )
    if ceiling.device == "cuda" and device_mem_total_mib:
        for key, amp in PRECISIONS.items():
            fit = max_batch_fit([p for p in points if p.amp == amp], device_mem_total_mib, ceiling.mem_margin_frac)
            if fit is not None:
                ceiling.max_batch_fit[key] = fit
    else:
        ceiling.note = "no device memory limit on CPU: the largest batch that fits is not estimated"
    write_json(Path(out) / "compute.json", ceiling)
    return ceiling


def allreduce(
    out: Path,
    *,
    hw: plan.Hardware,
    preset: str,
    bucket_sizes: list[int],
    cache_dir: Path,
    sizes_max: int = 256 * 2**20,
    target_s: float = 0.2,
    one_node: bool = False,
) -> AllReduceCeiling:
    """The sweep on every rank of the scan; on several nodes, `one_node` runs it on node 0's ranks alone
    (the intra-node figure that the inter-node one is compared with: where scaling is lost)."""
    name = preset if preset in plan.NCCL_PRESETS else "custom-" + str(abs(hash(preset)) % 10**6)
    spans = hw.nnodes > 1 and not one_node
    ranks = hw.world_size // hw.nnodes if one_node else hw.world_size
    tag = f"allreduce-{name}" + ("-node" if one_node else "")
    raw = Path(out) / "raw" / tag
    raw.mkdir(parents=True, exist_ok=True)
    result = raw / "result.json"
    args = [
        "--out",
        str(result),
        "--sizes-max",
        str(sizes_max),
        "--nccl-preset",
        preset,
        "--target-s",
        str(target_s),
        "--backend",
        "nccl" if hw.device == "cuda" else "gloo",
    ] + (["--extra-sizes", ",".join(map(str, bucket_sizes))] if bucket_sizes else [])
    extra = {
        **plan.nccl_env(preset),
        "OMP_NUM_THREADS": str(plan.omp_threads(hw.cpu_count, hw.world_size // hw.nnodes)),
    }
    env = _env(cache_dir, extra)
    if hw.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in physical(hw.gpus))
    job, rendezvous, per_node = None, None, ranks // hw.nnodes if spans else ranks
    if spans:  # the other nodes run the same sweep with their ranks; rank 0 (on any node) writes the result
        from yoloprof.scan import cluster

        lead = cluster.active()
        job = lead.job(
            "command",
            {
                "module": "yoloprof.probes.allreduce_bench",
                "nproc": per_node,
                "env": extra,
                "args": [a if a != str(result) else "{dir}/result.json" for a in args],
            },
        )
        rendezvous = launch.Rendezvous(lead.nodes, job.rdzv_endpoint, job.rdzv_id)
    cmd = launch.torchrun_prefix(per_node, launch.free_port(), rendezvous) + [
        "-m",
        "yoloprof.probes.allreduce_bench",
        *args,
    ]
    with open(raw / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        finished = _wait_all([proc], PROBE_TIMEOUT_S, abort=job.failure if job else None)
    lost = job.finish(raw) if job else None
    try:
        ceiling = read_json(result, AllReduceCeiling)
    except (OSError, RecordError):
        why = lost or (
            "timed out" if not finished else " ".join(aggregate.log_tail(raw / "launcher.log", 1)) or "no result"
        )
        ceiling = AllReduceCeiling(
            backend="nccl" if hw.device == "cuda" else "gloo",
            world_size=ranks,
            nccl=preset,
            device=hw.device,
            dtype="float32",
            timing="n/a",
            points=[],
            status="error",
            error=why,
        )
    ceiling.nnodes = hw.nnodes if spans else 1
    write_json(Path(out) / f"{tag}.json", ceiling)
    return ceiling


def physical(gpus: list[int]) -> list[str]:
    """CUDA indices as this process sees them -> what CUDA_VISIBLE_DEVICES must say for a child."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return [str(g) for g in gpus]
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return [entries[g] for g in gpus]
