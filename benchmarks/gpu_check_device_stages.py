"""The GPU check's stages on the device and its runtime: a rank's CUDA start-up, the doctor by index and by
UUID, one NCCL rank. Every CUDA call is in a child process: the driver itself reads NVML only."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Optional

from gpu_check_run import ROOT, Ctx
from gpu_check_verdicts import Check

START_CODE = r"""
import dataclasses, json, time
out = {}
try:
    t0 = time.perf_counter()
    import torch
    from yoloprof.probes import memory
    out["torch"] = torch.__version__
    dev = torch.device("cuda", 0)
    start = getattr(memory, "start", None)
    if start is None:
        out["start"] = "missing"
    else:
        start(dev)
        out["start"] = "ok"
        out["start_s"] = round(time.perf_counter() - t0, 2)
        out["initialized"] = torch.cuda.is_initialized()
        out["current_device"] = torch.cuda.current_device()
        out["peak_after_start"] = dataclasses.asdict(memory.peak(dev))
        x = torch.ones(64 * 2**20 // 4, device=dev)
        torch.cuda.synchronize()
        out["peak_after_64mib"] = dataclasses.asdict(memory.peak(dev))
        del x
        memory.reset(dev)  # what a pool's next trial does
        out["peak_after_reset"] = dataclasses.asdict(memory.peak(dev))
except Exception as exc:
    import traceback
    traceback.print_exc()
    out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
print("RESULT " + json.dumps(out), flush=True)
"""

OLD_ORDER_CODE = r"""
import json
out = {}
import torch
try:
    torch.cuda.reset_peak_memory_stats(torch.device("cuda", 0))  # the first CUDA call, as the worker once did
    out["raised"] = False
except Exception as exc:
    out["raised"] = True
    out["error"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(out), flush=True)
"""


def stage_cuda_start(ctx: Ctx) -> list[Check]:
    only = {"CUDA_VISIBLE_DEVICES": str(ctx.gpu)}  # the codes say cuda:0: make that the GPU asked for
    ran, got = ctx.python(START_CODE, "start", only, timeout_s=90)
    old_ran, old = ctx.python(OLD_ORDER_CODE, "old-order", only, timeout_s=90)
    checks = []
    if got.get("start") == "missing":
        checks.append(
            Check("yoloprof.probes.memory.start", False, "missing: probes.memory has no start(device) yet", got)
        )
    elif got.get("start") != "ok":
        checks.append(Check("yoloprof.probes.memory.start", False, got.get("error") or ran.line("the start-up"), got))
    else:
        problems = []
        if got.get("current_device") != 0 or not got.get("initialized"):
            problems.append(f"device {got.get('current_device')}, initialised {got.get('initialized')}")
        big = (got.get("peak_after_64mib") or {}).get("allocated_mib")
        after = (got.get("peak_after_reset") or {}).get("allocated_mib")
        total = (got.get("peak_after_start") or {}).get("total_mib")
        if big is None or big < 64:
            problems.append(f"allocated peak {big} MiB after a 64 MiB tensor")
        if after is None or (big is not None and after >= big):
            problems.append(f"allocated peak {after} MiB after reset (was {big})")
        if not total:
            problems.append(f"device total {total} MiB")
        if ran.returncode != 0:
            problems.append(ran.line("the start-up"))
        checks.append(
            Check(
                "yoloprof.probes.memory.start",
                not problems,
                "; ".join(problems)
                or f"set_device + init + reset in {got.get('start_s')} s; peaks {big:.0f} MiB with a 64 MiB "
                f"tensor, {after:.0f} MiB after reset; device {total:.0f} MiB",
                got,
            )
        )
    if "raised" not in old:
        checks.append(Check("old order (reset_peak_memory_stats first)", None, old_ran.line("the old order"), old))
    else:
        checks.append(
            Check(
                "old order (reset_peak_memory_stats first)",
                None,
                f"raises: {old['error']}" if old["raised"] else "does not raise with this torch",
                old,
            )
        )
    return checks


def gpu_uuid_and_name(gpu: int) -> tuple[Optional[str], Optional[str]]:
    """The GPU's UUID and name from NVML (physical index: the driver has CUDA_VISIBLE_DEVICES unset)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        u, n = pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetName(h)
        return (u.decode() if isinstance(u, bytes) else u), (n.decode() if isinstance(n, bytes) else n)
    finally:
        pynvml.nvmlShutdown()


def doctor_seen(report: dict) -> dict:
    """The GPU a doctor JSON says CUDA index 0 is: torch's name and memory, NVML's UUID for it."""
    torch_gpus = report.get("torch_gpus") or []
    nvml0 = [g for g in report.get("nvml_gpus") or [] if g.get("cuda_index") == 0]
    return dict(
        torch_gpus=len(torch_gpus),
        name=torch_gpus[0]["name"] if torch_gpus else None,
        mem_total_mib=torch_gpus[0].get("mem_total_mib") if torch_gpus else None,
        nvml_uuid=nvml0[0].get("uuid") if nvml0 else None,
        mapping_note=report.get("mapping_note"),
    )


def stage_doctor(ctx: Ctx) -> list[Check]:
    uuid, name = ctx.gpu_info.get("uuid"), ctx.gpu_info.get("name")
    if uuid is None:
        uuid, name = gpu_uuid_and_name(ctx.gpu)
    runs = {}
    for tag, visible in (("index", str(ctx.gpu)), ("uuid", uuid)):
        js = ctx.stage_dir / f"doctor-{tag}.json"
        ran = ctx.run(
            [sys.executable, "-m", "yoloprof", "doctor", "--json", str(js)],
            f"doctor-{tag}",
            {"CUDA_VISIBLE_DEVICES": visible},
            timeout_s=90,
        )
        doc = json.loads(js.read_text()) if js.is_file() else {}
        seen = doctor_seen(doc.get("report") or {})
        errors = [f["what"] for f in doc.get("findings") or [] if f.get("severity") == "error"]
        runs[tag] = dict(visible=visible, returncode=ran.returncode, seen=seen, errors=errors, line=ran.line("doctor"))
    a, b = runs["index"], runs["uuid"]
    problems = [
        f"CUDA_VISIBLE_DEVICES={r['visible']}: {r['line']}; {'; '.join(r['errors'])}"
        for r in (a, b)
        if r["returncode"] != 0
    ]
    for tag, r in runs.items():
        s = r["seen"]
        if s["torch_gpus"] != 1 or s["nvml_uuid"] != uuid:
            problems.append(
                f"{tag}: torch sees {s['torch_gpus']} GPU(s), NVML maps CUDA 0 to {s['nvml_uuid']} "
                f"(expected {uuid}; {s['mapping_note'] or 'no note'})"
            )
    if (a["seen"]["name"], a["seen"]["mem_total_mib"]) != (b["seen"]["name"], b["seen"]["mem_total_mib"]):
        problems.append(f"index and UUID runs report different GPUs: {a['seen']} vs {b['seen']}")
    return [
        Check(
            "doctor by index and by UUID",
            not problems,
            "; ".join(problems) or f"exit 0 both times, the same GPU: {a['seen']['name']} {uuid}",
            dict(uuid=uuid, nvml_name=name, runs=runs),
        )
    ]


def torchrun(nproc: int = 1) -> list[str]:
    from yoloprof import nodes
    from yoloprof.scan.launch import free_port

    return nodes.torchrun(nproc, master_port=free_port())


def stage_nccl(ctx: Ctx) -> list[Check]:
    from yoloprof.records import AllReduceCeiling, read_json
    from yoloprof.scan import collective

    cpu = [] if ctx.cuda else ["--cpu"]
    ddp_json = ctx.stage_dir / "ddp.json"
    ran = ctx.run(
        torchrun(1) + [str(ROOT / "benchmarks" / "gpu_nccl_check.py"), "--out", str(ddp_json), *cpu],
        "ddp",
        timeout_s=120,
    )
    got = json.loads(ddp_json.read_text()) if ddp_json.is_file() else {}
    problems = list(got.get("problems") or [])
    if not got:
        problems.append("no result")
    if ran.returncode != 0 or ran.timed_out:
        problems.append(ran.line("torchrun"))
    checks = [
        Check(
            f"{'NCCL' if ctx.cuda else 'gloo'} DDP with the comm hook, one rank",
            not problems,
            "; ".join(problems)
            or f"{got.get('steps')} steps, {got.get('buckets_per_step')} buckets a step "
            f"({got.get('bucket_bytes')} B = the gradients), every AllReduce timed; barrier, "
            "destroy_process_group and a clean exit",
            got,
        )
    ]

    ar_json = ctx.stage_dir / "allreduce.json"
    ran = ctx.run(
        torchrun(1)
        + [
            "-m",
            "yoloprof.probes.allreduce_bench",
            "--out",
            str(ar_json),
            "--sizes-max",
            str(16 * 2**20),
            "--target-s",
            "0.05",
            "--backend",
            "nccl" if ctx.cuda else "gloo",
        ],
        "allreduce",
        timeout_s=120,
    )
    ceiling = read_json(ar_json, AllReduceCeiling) if ar_json.is_file() else None
    want = "cuda_event" if ctx.cuda else "host"
    if ceiling is None:
        checks.append(Check("AllReduce sweep, one rank", False, ran.line("yoloprof.probes.allreduce_bench")))
    else:
        bad = [f"{p.size_bytes} B: {p.time_us} us" for p in ceiling.points if not p.time_us or p.time_us <= 0]
        ok = ceiling.status == "ok" and ceiling.timing == want and ceiling.points and not bad and ran.returncode == 0
        checks.append(
            Check(
                "AllReduce sweep, one rank",
                bool(ok),
                f"{ceiling.status}{' ' + ceiling.error if ceiling.error else ''}; timing {ceiling.timing}; {len(ceiling.points)} sizes, "
                f"{ceiling.points[-1].time_us:.1f} us at {ceiling.points[-1].size_bytes} B"
                if ceiling.points
                else f"{ceiling.status}: {ceiling.error}",
                dict(points=[(p.size_bytes, round(p.time_us, 2)) for p in ceiling.points]),
            )
        )

    t0 = time.monotonic()
    tries = collective.run(
        1,
        backend="nccl" if ctx.cuda else "gloo",
        timeout_s=min(60.0, max(ctx.left_s(), 5.0)),
        gpus=[str(ctx.gpu)] if ctx.cuda else None,
        work_dir=ctx.stage_dir / "collective",
    )
    first = tries[0]
    checks.append(
        Check(
            "doctor's collective check, one rank",
            first.status == "ok",
            f"{first.backend} {first.status} in {time.monotonic() - t0:.1f} s {first.error or ''}".strip(),
            dict(tries=[dataclasses.asdict(t) for t in tries]),
        )
    )
    return checks


def nvml_info(gpu: int) -> dict:
    """The GPU as NVML sees it (no CUDA context in this process: the trials get the whole device)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(gpu)

            def s(v):
                return v.decode() if isinstance(v, bytes) else v

            return dict(
                index=gpu,
                name=s(pynvml.nvmlDeviceGetName(h)),
                uuid=s(pynvml.nvmlDeviceGetUUID(h)),
                mem_total_mib=round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20),
                driver=s(pynvml.nvmlSystemGetDriverVersion()),
                count=pynvml.nvmlDeviceGetCount(),
            )
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - no NVML: the stages say what they can
        return dict(index=gpu, error=f"{type(exc).__name__}: {exc}")
