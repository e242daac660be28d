"""The doctor's judgement: a DoctorReport in, findings out (error / warn / ok, each with its fix).

Pure: no torch, NVML or Ultralytics here, so every threshold is tested on records. An error is
what would break a scan (and the training after it); a warning what would make it slow or its
figures misleading. A reading that is n/a gives no finding rather than a guessed one.
"""

from __future__ import annotations

from typing import Optional

from yoloprof.errors import UsageError
from yoloprof.records import CollectiveCheck, DoctorReport, Finding

# PyTorch's CUDA wheel flavours (download.pytorch.org/whl/<tag>), oldest first. A build runs on a
# driver whose CUDA version is at least the one it was built for.
TORCH_WHEELS = [
    ("cu118", (11, 8)),
    ("cu121", (12, 1)),
    ("cu124", (12, 4)),
    ("cu126", (12, 6)),
    ("cu128", (12, 8)),
    ("cu129", (12, 9)),
    ("cu130", (13, 0)),
]
# TORCH given on make's command line replaces the torch in the venv (see the Makefile).
INSTALL = 'make install TORCH="torch torchvision --index-url https://download.pytorch.org/whl/{tag}"'

ULTRALYTICS_MAX_WORKERS = 8  # Ultralytics' default workers=8, capped at cores // GPUs per rank
# One worker queues prefetch_factor 4 batches in /dev/shm: 16 images of 640x640x3 uint8 are 19 MB,
# so 4 batches are ~75 MiB; 128 MiB leaves room for labels and larger batches.
SHM_MIB_PER_WORKER = 128
SHM_MIN_MIB = 1024  # below 1 GiB a warning whatever the plan: one rank with 8 workers wants ~600 MiB
SHM_ERROR_MIB = 128  # Docker's default 64 MiB (and anything near it) cannot hold even one worker's batches
SHM_FIX = "docker run --shm-size={size} (or --ipc=host); on Kubernetes an emptyDir with medium: Memory at /dev/shm"
# RLIMIT_NOFILE is per process: a rank holds torch/CUDA/NCCL's own descriptors, and each of its workers
# hands batches over as file descriptors (torch's file_descriptor sharing), plus pipes and sockets.
NOFILE_BASE = 1024
NOFILE_PER_WORKER = 64
NOFILE_FIX = 65536
MIN_CORES_PER_GPU = 4  # fewer: each rank gets at most 3 workers and the rank itself shares a core with them
RAM_MIB_PER_RANK = 3072  # a rank with torch, CUDA and Ultralytics holds 2-3 GiB before its workers


def _v(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".")[:2])


def torch_wheel(driver_cuda: Optional[str]) -> Optional[str]:
    """The newest PyTorch CUDA wheel flavour a driver running CUDA `driver_cuda` can run, or None."""
    if not driver_cuda:
        return None
    fits = [tag for tag, cuda in TORCH_WHEELS if cuda <= _v(driver_cuda)]
    return fits[-1] if fits else None


def ultralytics_workers(cpu_count: int, devices: int) -> int:
    """DataLoader workers per rank as Ultralytics picks them by default: min(cores // devices, 8)."""
    return min(cpu_count // max(devices, 1), ULTRALYTICS_MAX_WORKERS)


def one_line(f: Finding) -> str:
    return f"{f.what}; fix: {f.fix}" if f.fix else f.what


def torch_blind(r: DoctorReport) -> Optional[Finding]:
    """Item 7: NVML sees GPUs and torch sees none, so a scan would fall back to CPU ranks quietly."""
    if r.torch_gpus or not r.nvml_gpus or r.device_asked == "cpu":
        return None
    n, cpu = len(r.nvml_gpus), "; --device cpu runs on CPU meanwhile"
    if r.cuda_visible_devices is not None and r.cuda_visible_count == 0:
        return Finding(
            "error",
            "torch",
            f"CUDA_VISIBLE_DEVICES={r.cuda_visible_devices!r} hides all {n} GPUs NVML "
            f"sees ({r.mapping_note or 'no entry matches'}), so torch sees none",
            f"unset CUDA_VISIBLE_DEVICES, or list GPUs by index (0-{n - 1}) or UUID{cpu}",
        )
    built = f"built for CUDA {r.torch_cuda}" if r.torch_cuda else "a CPU-only build"
    what = (
        f"NVML sees {n} GPU{'s' * (n > 1)} but torch {r.torch} ({built}) sees none: NVIDIA driver "
        f"{r.driver or 'n/a'} runs CUDA up to {r.driver_cuda or 'n/a'}"
    )
    tag = torch_wheel(r.driver_cuda)
    if r.torch_cuda and r.driver_cuda and _v(r.torch_cuda) <= _v(r.driver_cuda):
        return Finding(
            "error",
            "torch",
            f"{what}; torch says: {r.torch_cuda_error or 'n/a'}",
            f"give the process the GPUs (docker run --gpus all; /dev/nvidia* readable){cpu}",
        )
    if r.torch_cuda and r.driver_cuda:
        what += f", older than torch's CUDA {r.torch_cuda}"
    if tag:
        fix = f"install a torch built for CUDA <= {r.driver_cuda}: {INSTALL.format(tag=tag)} (or update the driver)"
    elif r.driver_cuda:
        fix = f"update the NVIDIA driver: CUDA {r.driver_cuda} is older than the oldest PyTorch CUDA wheel (11.8)"
    else:
        fix = f"{INSTALL.format(tag='cuXYZ')} with the newest cuXYZ not above the CUDA version nvidia-smi shows"
    return Finding("error", "torch", what, fix + cpu)


def _gpus(r: DoctorReport) -> list[Finding]:
    blind = torch_blind(r)
    if blind:
        return [blind]
    out = []
    if r.torch_gpus:
        names = ", ".join(sorted({g.name for g in r.torch_gpus}))
        out.append(
            Finding(
                "ok",
                "gpus",
                f"torch sees {len(r.torch_gpus)} GPU(s) ({names}); built for CUDA "
                f"{r.torch_cuda}, driver {r.driver or 'n/a'} runs CUDA up to {r.driver_cuda or 'n/a'}",
            )
        )
        mapped = sum(g.cuda_index is not None for g in r.nvml_gpus)
        if r.nvml_status != "ok":
            out.append(
                Finding(
                    "warn",
                    "gpus",
                    f"NVML {r.nvml_status}: GPU utilisation, power and links will be n/a",
                    "install nvidia-ml-py; make the driver's libnvidia-ml.so.1 visible (docker --gpus all)",
                )
            )
        elif mapped != len(r.torch_gpus):
            out.append(
                Finding(
                    "warn",
                    "gpus",
                    f"GPU readings cannot be matched to torch's {len(r.torch_gpus)} GPUs "
                    f"({r.mapping_note or f'NVML maps {mapped}'}): telemetry will be n/a",
                    "set CUDA_DEVICE_ORDER=PCI_BUS_ID or name GPUs by UUID in CUDA_VISIBLE_DEVICES; "
                    "nvidia-smi shows a GPU in an error state",
                )
            )
    if r.device == "cuda" and not r.nccl:
        tag = torch_wheel(r.driver_cuda)
        fix = INSTALL.format(tag=tag) if tag else "install a Linux CUDA torch wheel from pytorch.org"
        out.append(Finding("error", "nccl", f"torch {r.torch} has no NCCL: DDP on GPUs cannot start", fix))
    elif r.device == "cuda":
        out.append(Finding("ok", "nccl", f"NCCL {r.nccl}"))
    return out


def _failed(c: CollectiveCheck) -> str:
    if c.status == "hang":
        met = (
            "the ranks never met"
            if any(p in ("start", "init", "not started") for p in c.phases)
            else "the ranks met, the first AllReduce never finished"
        )
        return f"hangs ({c.error}; {met}: {', '.join(c.phases)})"
    return f"fails ({c.error})"


def _collective(r: DoctorReport) -> list[Finding]:
    if not r.collectives:
        return []
    first, last = r.collectives[0], r.collectives[-1]
    label = f"{first.backend} AllReduce across {first.world_size} {'GPUs' if first.backend == 'nccl' else 'CPU ranks'}"
    if first.status == "ok":
        return [Finding("ok", "collective", f"{label}: ok in {first.wall_s:.1f} s, start-up included")]
    if last.status == "ok":
        worked = " ".join(f"{k}={v}" for k, v in last.env.items())
        return [
            Finding(
                "error",
                "collective",
                f"{label} {_failed(first)} as set, and works with {worked}: peer-to-peer between these GPUs is broken",
                f"export {worked} before yoloprof scan and before training (the trials inherit it); "
                "for full speed fix P2P: ACS/IOMMU off, a driver that allows P2P on these GPUs",
            )
        ]
    also = f" (also with {' '.join(f'{k}={v}' for k, v in last.env.items())})" if len(r.collectives) > 1 else ""
    if first.backend == "nccl":
        fix = (
            "rerun with NCCL_DEBUG=INFO to see where NCCL stops; check NCCL_SOCKET_IFNAME, that ACS/IOMMU is "
            "off (nvidia-smi topo -m), and give a container --ipc=host"
        )
    else:
        fix = "check that 127.0.0.1 accepts local connections; try GLOO_SOCKET_IFNAME=lo"
    return [Finding("error", "collective", f"{label} {_failed(last)}{also}", fix)]


def _memory(r: DoctorReport) -> list[Finding]:
    out, ranks, workers = [], max(r.ranks, 1), r.workers_per_rank
    if r.shm_free_mib is not None and workers:
        need = max(SHM_MIN_MIB, ranks * workers * SHM_MIB_PER_WORKER)
        size = f"{max(8, -(-need // 1024))}g"
        have = f"/dev/shm has {r.shm_free_mib:.0f} MiB free of {r.shm_total_mib:.0f} MiB"
        if r.shm_free_mib < SHM_ERROR_MIB:
            out.append(
                Finding(
                    "error",
                    "shm",
                    f"{have}: DataLoader workers pass every batch through it and die with "
                    "'bus error' or 'No space left on device' (Docker's default is 64 MiB)",
                    SHM_FIX.format(size=size),
                )
            )
        elif r.shm_free_mib < need:
            out.append(
                Finding(
                    "warn",
                    "shm",
                    f"{have}, less than the {need} MiB {ranks} rank(s) x {workers} workers "
                    f"can queue ({SHM_MIB_PER_WORKER} MiB each)",
                    SHM_FIX.format(size=size),
                )
            )
        else:
            out.append(Finding("ok", "shm", f"/dev/shm: {r.shm_free_mib / 1024:.1f} GiB free"))
    if r.nofile_soft is not None and workers is not None:
        need = NOFILE_BASE + NOFILE_PER_WORKER * workers
        if r.nofile_soft < need:
            hard = r.nofile_hard is None or r.nofile_hard >= NOFILE_FIX
            fix = (
                f"ulimit -n {NOFILE_FIX} in the shell that runs the scan and training"
                if hard
                else (
                    f"raise the hard limit ({r.nofile_hard}): docker run --ulimit nofile={NOFILE_FIX}:{NOFILE_FIX} or "
                    f"nofile in /etc/security/limits.conf, then ulimit -n {NOFILE_FIX}"
                )
            )
            out.append(
                Finding(
                    "warn",
                    "nofile",
                    f"open files limit {r.nofile_soft} is below the {need} a rank with "
                    f"{workers} workers can hold: 'Too many open files' in the DataLoader",
                    fix,
                )
            )
        else:
            out.append(Finding("ok", "nofile", f"open files limit {r.nofile_soft}"))
    if r.ram_available_mib is not None and r.ranks and r.ram_available_mib < r.ranks * RAM_MIB_PER_RANK:
        out.append(
            Finding(
                "warn",
                "ram",
                f"{r.ram_available_mib / 1024:.1f} GiB RAM available for {r.ranks} ranks, "
                f"under {RAM_MIB_PER_RANK / 1024:.0f} GiB each",
                "fewer ranks or workers; cache=disk, not ram",
            )
        )
    return out


def _cores(r: DoctorReport) -> list[Finding]:
    if r.device == "cuda" and r.ranks and r.cpu_count / r.ranks < MIN_CORES_PER_GPU:
        return [
            Finding(
                "warn",
                "cores",
                f"{r.cpu_count} CPU cores for {r.ranks} GPUs ({r.cpu_count / r.ranks:.1f} "
                f"per GPU): each rank gets at most {ultralytics_workers(r.cpu_count, r.ranks)} DataLoader "
                "workers and input is likely the bound",
                "the scan's input ceiling and data-wait column show whether it is; cache=ram or a smaller imgsz "
                "lighten the workers",
            )
        ]
    if r.device == "cpu" and r.ranks > r.cpu_count:
        return [
            Finding(
                "warn",
                "cores",
                f"{r.ranks} CPU ranks on {r.cpu_count} cores: the ranks time-share cores",
                f"--nproc {r.cpu_count}",
            )
        ]
    return []


def _topology(r: DoctorReport) -> list[Finding]:
    if not r.links:
        return []
    path = {(x.gpu_a, x.gpu_b): "NVLink" if x.nvlink else (x.pcie or "n/a") for x in r.links}
    out = [Finding("ok", "topology", "GPU links: " + ", ".join(f"{a}-{b} {p}" for (a, b), p in path.items()))]
    far = [f"{a}-{b}" for (a, b), p in path.items() if p == "SYS"]
    if far:
        out.append(
            Finding(
                "warn",
                "topology",
                f"GPUs {', '.join(far)} talk across CPU sockets (SYS): AllReduce "
                "crosses the CPU interconnect, the slowest path between GPUs",
                "compare with GPUs under one socket (yoloprof scan --gpus ...; nvidia-smi topo -m shows CPU affinity)",
            )
        )
    return out


def findings(r: DoctorReport) -> list[Finding]:
    """Every finding, errors first."""
    out = _gpus(r) + _collective(r) + _memory(r) + _cores(r) + _topology(r)
    order = {"error": 0, "warn": 1, "ok": 2}
    return sorted(out, key=lambda f: order[f.severity])


def gate(r: DoctorReport) -> None:
    """Stop before the hardware is planned where torch is blind to the GPUs (unless --device cpu)."""
    f = torch_blind(r)
    if f is not None:
        raise UsageError(one_line(f))


def stop_on_errors(found: list[Finding]) -> None:
    errors = [one_line(f) for f in found if f.severity == "error"]
    if errors:
        raise UsageError(" | ".join(errors))
