"""A machine with GPUs as NVML shows it, for tests: the pynvml functions the doctor calls, patched with autospec."""

from __future__ import annotations

import types
from contextlib import contextmanager
from unittest import mock

import pynvml

FUNCS = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetP2PStatus",
    "nvmlDeviceGetTopologyCommonAncestor",
)
UUIDS = ["GPU-aaaa0000", "GPU-bbbb1111", "GPU-cccc2222", "GPU-dddd3333"]


@contextmanager
def patched(count=4, driver="535.104.05", cuda=12020, nvlink=(), levels=None, refuse=()):
    """nvlink: pairs joined by NVLink; levels: pair -> NVML_TOPOLOGY_* (default SYSTEM); refuse: pairs whose
    topology and P2P queries answer NotSupported. Pairs are physical (NVML) indices, smaller first."""
    levels = levels or {}

    def pair(a, b):
        key = (min(a.index, b.index), max(a.index, b.index))
        if key in refuse:
            raise pynvml.NVMLError_NotSupported()
        return key

    with mock.patch.multiple(pynvml, autospec=True, **{name: mock.DEFAULT for name in FUNCS}) as m:
        m["nvmlSystemGetDriverVersion"].return_value = driver
        m["nvmlSystemGetCudaDriverVersion"].return_value = cuda
        m["nvmlDeviceGetCount"].return_value = count
        m["nvmlDeviceGetHandleByIndex"].side_effect = lambda i: types.SimpleNamespace(index=i)
        m["nvmlDeviceGetName"].side_effect = lambda h: b"NVIDIA A100-SXM4-80GB"  # older pynvml answers bytes
        m["nvmlDeviceGetMemoryInfo"].side_effect = lambda h: types.SimpleNamespace(total=80 * 2**30, used=0)
        m["nvmlDeviceGetUUID"].side_effect = lambda h: UUIDS[h.index]
        m["nvmlDeviceGetP2PStatus"].side_effect = lambda a, b, cap: (
            pynvml.NVML_P2P_STATUS_OK
            if pair(a, b) in nvlink and cap == pynvml.NVML_P2P_CAPS_INDEX_NVLINK
            else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
        )
        m["nvmlDeviceGetTopologyCommonAncestor"].side_effect = lambda a, b: levels.get(
            pair(a, b), pynvml.NVML_TOPOLOGY_SYSTEM
        )
        yield m
