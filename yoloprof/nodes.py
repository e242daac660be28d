"""The nodes of a run: the `--nnodes/--node-rank/--rdzv-endpoint` flags and the torchrun arguments
they become. Shared by `yoloprof scan` (one launch per trial and node) and `yoloprof train`.

Several nodes join through torchrun's c10d rendezvous: every node runs the same command with its
own --node-rank, and torchrun hands out global ranks, WORLD_SIZE and the process group's address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import Optional

from yoloprof.errors import UsageError

# The scan node a rank runs on, set by a follower (yoloprof.scan.follow) for its launches: records say
# which ranks are node 0's, whose GPUs node 0's telemetry sampled.
SCAN_NODE_ENV = "YOLOPROF_SCAN_NODE"

DEFAULT_PORT = 29400  # torchrun's own default for --rdzv-endpoint
# A node that has not joined by then fails the scan's start (or a launch's rendezvous).
JOIN_TIMEOUT_S = float(os.environ.get("YOLOPROF_JOIN_TIMEOUT_S", "120"))


@dataclass(frozen=True)
class Nodes:
    nnodes: int = 1
    node_rank: int = 0
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    @property
    def leader(self) -> bool:
        """Node 0 plans, decides and writes every output; the others follow."""
        return self.node_rank == 0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def flags(self) -> list[str]:
        """The flags that name this node, as a user types them (empty on one node)."""
        if not self.multi:
            return []
        return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--rdzv-endpoint={self.endpoint}"]


SINGLE = Nodes()


def parse(nnodes: Optional[int], node_rank: Optional[int], endpoint: Optional[str]) -> Nodes:
    """The three flags, checked together: one line naming what is wrong, never a traceback."""
    if nnodes is None and node_rank is None and endpoint is None:
        return SINGLE
    n = 1 if nnodes is None else nnodes
    if n < 1:
        raise UsageError(f"--nnodes {nnodes}: give the number of nodes, 1 or more")
    if n == 1:
        if node_rank not in (None, 0):
            raise UsageError(f"--node-rank {node_rank}: a single node is node 0; add --nnodes N for several")
        return SINGLE
    if node_rank is None or endpoint is None:
        missing = "--node-rank" if node_rank is None else "--rdzv-endpoint"
        raise UsageError(
            f"--nnodes {n} needs {missing} too: run the same command on every node with its own "
            "--node-rank 0..N-1 and the same --rdzv-endpoint HOST:PORT (node 0's address)"
        )
    if not 0 <= node_rank < n:
        raise UsageError(f"--node-rank {node_rank}: give 0 to {n - 1} for --nnodes {n}")
    host, port = split_endpoint(endpoint)
    return Nodes(n, node_rank, host, port)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.strip().rpartition(":")
    if not sep:
        host, port = endpoint.strip(), str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--rdzv-endpoint {endpoint}: give HOST:PORT, node 0's address and a free port, e.g. node0.cluster:29400"
        )
    return host, int(port)


def is_local(host: str) -> bool:
    """Whether HOST names this machine (node 0 hosts the scan's store there)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    names = {socket.gethostname(), socket.getfqdn(), "localhost"}
    if host in names:
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        return bool(mine & {a[4][0] for a in socket.getaddrinfo(host, None)})
    except OSError:
        return False


def torchrun(
    nproc: int,
    nodes: Nodes = SINGLE,
    *,
    master_port: Optional[int] = None,
    rdzv_endpoint: Optional[str] = None,
    rdzv_id: str = "yoloprof",
    join_timeout_s: float = JOIN_TIMEOUT_S,
) -> list[str]:
    """`python -m torch.distributed.run ...` up to the program: on one node a fixed local master, on
    several the c10d rendezvous at `rdzv_endpoint` (default: the nodes' endpoint), node 0 its host."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if not nodes.multi:
        return cmd + ["--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={master_port or DEFAULT_PORT}"]
    is_host = "true" if nodes.leader else "false"
    return cmd + [
        f"--nnodes={nodes.nnodes}",  # no --node-rank: c10d ignores it (with a warning) and numbers nodes itself
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_endpoint or nodes.endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-conf=is_host={is_host},join_timeout={int(join_timeout_s)}",
        "--max-restarts=0",
    ]


def free_port() -> int:
    """A TCP port free on this host now (the kernel's pick), for a torchrun master or a rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
