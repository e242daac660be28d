"""Ultralytics' DDP under our own torchrun, on one node or several, on GPUs (NCCL) or CPUs (gloo).

Ultralytics 8.4 builds its DDP world from this node's device list and cannot run on CPU ranks
(/work/shared/ULTRALYTICS.md, "DDP"): `BaseTrainer.__init__` sets `world_size` to the number of
devices in `device=` (0 on CPU, which also multiplies the loss by 0), `_setup_ddp` initialises the
process group with that size, picks `devices[LOCAL_RANK]` and always takes the CUDA path, the
DDP wrap passes `device_ids=[None]` for a CPU module, and a DDP rank's stand-alone validator
(`final_eval`) puts the model on `cuda:current_device()`. Under torchrun the environment already
says what is right: WORLD_SIZE counts every rank of every node, RANK is global (rank 0 alone
writes), LOCAL_RANK picks this node's device.

The pieces are small and separate so every trainer of ours can use them: `World` (the ranks from
torchrun's environment), `device_for` and `init` (device per local rank, gloo on CPU, nccl on
CUDA), `cpu_capable_ddp` (the DDP wrap on CPU) and `DDPFixMixin`, which puts them on any
Ultralytics trainer class (`class T(DDPFixMixin, DetectionTrainer)`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

PG_TIMEOUT = timedelta(hours=3)  # Ultralytics' own process-group timeout


@dataclass(frozen=True)
class World:
    """This process's place in the torchrun world (one process alone: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        size = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            size=size,
            local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))),
        )

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Global rank 0: the one rank that writes checkpoints, metrics and plots."""
        return self.rank == 0


# Set by our launcher on each node: torchrun's c10d rendezvous ignores --node-rank and numbers the nodes
# by their descriptors (host name, then process id), so without these global rank 0, the rank that
# writes every output, may land on any node.
NODE_RANK_ENV = "YOLOPROF_NODE_RANK"
NNODES_ENV = "YOLOPROF_NNODES"


def follow_node_rank(env=os.environ) -> Optional[int]:
    """Renumber this rank as node_rank * ranks-per-node + LOCAL_RANK, so global rank 0 is local rank 0
    of node 0 (the node a user starts with --node-rank 0, the rendezvous host). Returns the new RANK, or
    None where nothing is renumbered (one node, or nodes with different numbers of ranks).

    Call it before importing ultralytics: it reads RANK once, at import."""
    try:
        node, nnodes = int(env[NODE_RANK_ENV]), int(env[NNODES_ENV])
        size, local, local_size = int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    if nnodes < 2 or size != nnodes * local_size:
        return None
    rank = node * local_size + local
    env["RANK"] = str(rank)
    env["GROUP_RANK"] = env["ROLE_RANK"] = str(node)
    return rank


def claim_rank(rank: int, env=os.environ, timeout: timedelta = timedelta(seconds=60)) -> None:
    """Stop with a clear error when two nodes were started with the same --node-rank: their renumbered
    ranks would collide, and the process group would wait for the missing one until its timeout."""
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    key = f"yoloprof/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/rank{rank}"
    if store.add(key, 1) > 1:
        raise RuntimeError(
            f"two nodes were started with --node-rank {env.get(NODE_RANK_ENV)} (global rank {rank} "
            "twice): give each node its own --node-rank 0..N-1"
        )


def device_for(device: str, local_rank: int) -> torch.device:
    """This rank's device from a canonical Ultralytics device string (`ultralytics...parse_device`):
    'cpu' -> cpu; '0,1' or 'cuda:0,1' -> that list's entry for this local rank; '' -> GPU local_rank;
    'npu:0,1' / 'xpu:0,1' likewise. Every node indexes its own list: the same `device=0,1` on each."""
    device = str(device or "").strip().lower()
    if device in ("cpu", "mps"):
        return torch.device(device)
    if device == "" and not torch.cuda.is_available():
        return torch.device("cpu")  # Ultralytics' own choice for device='' without a GPU
    kind, sep, ids = device.partition(":")
    if not sep:
        kind, ids = "cuda", device
    elif kind not in ("npu", "xpu"):
        kind = "cuda"
    indices = [i for i in ids.split(",") if i.strip() != ""]
    if not indices:
        return torch.device(kind, local_rank)
    if local_rank >= len(indices):
        raise ValueError(
            f"local rank {local_rank} has no device in device={device!r} ({len(indices)} listed): "
            "start as many ranks per node as the list names"
        )
    return torch.device(kind, int(indices[local_rank]))


def backend(device: torch.device) -> str:
    return {"cuda": "nccl", "npu": "hccl", "xpu": "xccl"}.get(device.type, "gloo")


def init(device: torch.device, world: Optional[World] = None, timeout: timedelta = PG_TIMEOUT) -> bool:
    """The default process group over every rank of every node (a no-op alone or when it exists).
    On a GPU the device is made current first, as NCCL and Ultralytics' barriers expect."""
    world = world or World.from_env()
    if device.type != "cpu":
        getattr(torch, device.type).set_device(device.index or 0)
    if device.type == "cuda":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # as Ultralytics sets it: the timeout holds
    if not world.distributed or dist.is_initialized():
        return False
    dist.init_process_group(backend(device), timeout=timeout, rank=world.rank, world_size=world.size)
    return True


@contextlib.contextmanager
def cpu_capable_ddp():
    """Ultralytics wraps with device_ids=[device.index], which DDP rejects for a CPU module ([None])."""

    class CpuCapableDDP(DistributedDataParallel):
        def __init__(self, module, device_ids=None, **kwargs):
            if device_ids is not None and all(i is None for i in device_ids):
                device_ids = None
            super().__init__(module, device_ids=device_ids, **kwargs)

    saved = torch.nn.parallel.DistributedDataParallel
    torch.nn.parallel.DistributedDataParallel = CpuCapableDDP
    try:
        yield
    finally:
        torch.nn.parallel.DistributedDataParallel = saved


class _CurrentCpu:
    """Stands in for `torch.cuda` where the stand-alone validator asks a DDP rank for its current GPU."""

    @staticmethod
    def current_device() -> int:
        return 0


@contextlib.contextmanager
def cpu_validator():
    """The stand-alone validator (final_eval) on a CPU DDP rank: Ultralytics builds its AutoBackend on
    `cuda:current_device()` whenever RANK != -1; on CPU ranks it goes on the CPU instead."""
    import ultralytics.engine.validator as validator_mod

    saved = validator_mod.get_torch_device_backend, validator_mod.AutoBackend
    real = saved[1]

    def on_cpu(*args, device=None, **kwargs):
        return real(*args, device=torch.device("cpu"), **kwargs)

    validator_mod.get_torch_device_backend = lambda kind: _CurrentCpu
    validator_mod.AutoBackend = on_cpu
    try:
        yield
    finally:
        validator_mod.get_torch_device_backend, validator_mod.AutoBackend = saved


def broadcast_object(obj, src: int = 0):
    """obj from rank `src` on every rank (as it is alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src)
    return box[0]


class DDPFixMixin:
    """What an Ultralytics trainer needs to train as one rank of a torchrun world, on one node or
    several, on GPUs or CPUs; everything else is the trainer's own. Put it first:
    `class T(DDPFixMixin, DetectionTrainer)`.

    - world_size from WORLD_SIZE (Ultralytics counts this node's devices, and 0 on CPU), so the batch
      is split over every rank of every node and the loss is scaled by the real world size;
    - no re-spawn (`ddp = False`): our torchrun already started every rank;
    - `_setup_ddp`: the device of this LOCAL_RANK, the process group over WORLD_SIZE ranks at the global
      RANK, gloo on CPU and nccl on CUDA;
    - the DDP wrap with device_ids=None on CPU; the stand-alone final validation on CPU ranks.
    Subclasses with their own process-group set-up (a rank pool) override `_init_process_group`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restore_world_size()

    def _restore_world_size(self) -> None:
        world = World.from_env()
        if world.distributed:
            self.world_size = world.size  # Ultralytics: this node's devices, or 0 on CPU (which zeroes the loss)
            self.ddp = False  # already one rank of our torchrun: no re-spawn

    def _rank_device(self) -> torch.device:
        return device_for(self.args.device, World.from_env().local_rank)

    def _init_process_group(self, device: torch.device) -> None:
        init(device)

    def _setup_ddp(self):
        device = self._rank_device()
        self._init_process_group(device)
        self.device = device
        if device.type not in ("cpu", "mps"):
            from ultralytics.utils.torch_utils import get_torch_device_backend

            self.accelerator = get_torch_device_backend(device)

    def _setup_train(self):
        if self.device.type == "cpu" and self.world_size > 1:
            with cpu_capable_ddp():
                return super()._setup_train()
        return super()._setup_train()

    def final_eval(self):
        if self.device.type == "cpu" and self.world_size > 1:
            with cpu_validator():
                return super().final_eval()
        return super().final_eval()
