"""What the scan ran on: GPUs, driver, CUDA, NCCL, torch, ultralytics, CPU, RAM.

Environment variables are recorded from an allow-list of prefixes only, and never a variable
whose name suggests a credential, whatever its prefix.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import socket
import sys
from importlib import metadata
from typing import Optional

import psutil

from yoloprof.records import Environment, GpuInfo

ENV_PREFIXES = ("NCCL_", "CUDA_", "OMP_", "MKL_", "TORCH_", "PYTORCH_", "YOLO_", "NVIDIA_", "GLOO_", "KMP_")
SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def safe_env(environ: Optional[dict] = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items()) if k.startswith(ENV_PREFIXES) and not SECRET.search(k)}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def nvml_driver() -> Optional[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (no GPU, no driver, a container without it)
        return None


def ultralytics_cfg_keys() -> list[str]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return sorted(DEFAULT_CFG_DICT)


def gpus() -> list[GpuInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            GpuInfo(
                index=i,
                name=props.name,
                mem_total_mib=props.total_memory / 2**20,
                capability=[props.major, props.minor],
            )
        )
    return out


def available_ram_mib() -> float:
    return psutil.virtual_memory().available / 2**20


def collect(env_vars: Optional[dict[str, str]] = None) -> Environment:
    """The machine's facts, less the C++ compiler: finding it imports torch._inductor (4-6 s on a small CPU),
    so a CPU scan that asks for compile adds it (`with_compiler`)."""
    import torch

    nccl = None
    try:
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001 - a build without NCCL
        pass
    found = gpus()
    return Environment(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        cpu_count=os.cpu_count() or 1,
        ram_total_mib=psutil.virtual_memory().total / 2**20,
        torch=torch.__version__,
        ultralytics=_version("ultralytics"),
        cuda=torch.version.cuda,
        nccl=nccl,
        driver=nvml_driver() if found else None,
        gpus=found,
        ultralytics_cfg_keys=ultralytics_cfg_keys(),
        env_vars=safe_env() if env_vars is None else env_vars,
        triton=None if _version("triton") == "not installed" else _version("triton"),
    )


def with_compiler(env: Environment) -> Environment:
    return dataclasses.replace(env, cxx_compiler=cxx_compiler())


def cxx_compiler() -> Optional[str]:
    """The C++ compiler inductor would use for CPU kernels (the check Ultralytics' attempt_compile makes)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return str(get_cpp_compiler())
    except Exception:  # noqa: BLE001 - none found, or a torch without inductor
        return None
