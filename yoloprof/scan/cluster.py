"""A scan across nodes: node 0 leads, the other nodes follow its plan, all through torch's TCPStore.

Node 0's scan process hosts a TCPStore at --rdzv-endpoint. For each launch that spans nodes it
publishes a job (a trial's spec, or a probe's command) with a rendezvous of its own (a fresh port
on node 0 and a fresh id): every node starts its torchrun against it, and when the launch ends each
follower sends its files back through the store, so that node 0 writes every output once, from
the records of every rank. Heartbeats (store.add) tell a node that went away from a slow one; a
lost node ends the running launch on every node.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from yoloprof.probes.node_store import Heart, Pulse, connect, get_json, has, store_key
from yoloprof import __version__, nodes as nodes_mod
from yoloprof.errors import ScanFailed

LOST_S = float(os.environ.get("YOLOPROF_NODE_LOST_S", "20"))  # a node whose heartbeat has not moved this long is gone
GATHER_S = 90.0  # after node 0's launch ended, how long the others may take to send their records
ENDED_GRACE_S = 20.0  # a follower's launch still running this long after node 0's ended is ended
MAX_LOG_BYTES = 512 * 1024  # the tail of a log a follower sends (its records are sent whole)
WAIT_SLICE_S = 2.0


@dataclass
class Job:
    """One launch that spans every node, as node 0 sees it."""

    leader: "Leader"
    n: int
    rdzv_endpoint: str
    rdzv_id: str
    started: float = field(default_factory=time.monotonic)

    def failure(self) -> Optional[str]:
        """Why the launch cannot go on (a node is gone, or could not launch), or None."""
        lead = self.leader
        for k in lead.followers:
            refused = store_key("job", self.n, "node", k, "refused")
            if has(lead.store, refused):
                return f"node {k} could not launch: {lead.store.get(refused).decode()}"
            silent = lead.pulses[k].silent_s()
            if silent > LOST_S:
                return (
                    f"node {k} stopped answering ({silent:.0f} s without a heartbeat): its scan process was "
                    "killed, or the network to it is down"
                )
        return None

    def finish(self, folder: Path) -> Optional[str]:
        """Tell every node the launch ended on node 0, take their files into `folder`; the first node
        failure, or None."""
        lead = self.leader
        lead.store.set(store_key("job", self.n, "ended"), "1")
        failure = None
        for k in lead.followers:
            key = store_key("job", self.n, "node", k, "files")
            deadline = time.monotonic() + GATHER_S
            while not has(lead.store, key):
                silent = lead.pulses[k].silent_s()
                if silent > LOST_S or time.monotonic() > deadline:
                    failure = failure or (
                        f"node {k} sent no records: "
                        + (
                            f"{silent:.0f} s without a heartbeat (its scan process was killed, or the network is down)"
                            if silent > LOST_S
                            else f"none within {GATHER_S:.0f} s of the launch's end on node 0"
                        )
                    )
                    break
                time.sleep(0.2)
            else:
                write_files(Path(folder), get_json(lead.store, key), k)
                lead.store.delete_key(key)
        return failure


def write_files(folder: Path, files: dict[str, str], node: int) -> None:
    """A follower's files into node 0's folder: rank records beside node 0's, the rest under nodes/."""
    for rel, text in files.items():
        name = Path(rel).name
        top = name.startswith("rank") or (name == "result.json" and not (folder / name).exists())
        dest = folder / name if top else folder / "nodes" / f"node{node}" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)


def read_files(folder: Path) -> dict[str, str]:
    """What a follower sends of a launch's folder: every record whole, the tail of each log."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or path.suffix not in (".jsonl", ".json", ".log", ".txt"):
            continue
        data = path.read_bytes()
        if path.suffix in (".log", ".txt") and len(data) > MAX_LOG_BYTES:
            data = b"[... earlier output cut ...]\n" + data[-MAX_LOG_BYTES:]
        out[str(path.relative_to(folder))] = data.decode(errors="replace")
    return out


class Leader:
    """Node 0's side: hosts the store, admits the followers, publishes each launch."""

    def __init__(self, nodes: nodes_mod.Nodes, scan_id: str, hello: dict):
        self.nodes, self.scan_id, self.hello = nodes, scan_id, hello
        try:
            self.store = connect(nodes.host, nodes.port, leader=True, timeout_s=nodes_mod.JOIN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a taken port, an address of another machine
            raise ScanFailed(
                f"node 0 cannot host the scan's store at {nodes.endpoint}: {_first_line(exc)}; give "
                "--rdzv-endpoint this machine's address and a free port"
            ) from None
        self.followers = list(range(1, nodes.nnodes))
        self.pulses = {k: Pulse(self.store, k) for k in self.followers}
        self.heart = Heart(nodes.host, nodes.port, 0)
        self.n = 0
        self.peers: dict[int, dict] = {}

    def admit(self, check: Callable[[dict, dict], Optional[str]], timeout_s: Optional[float] = None) -> None:
        """Wait for every follower's hello; refuse all of them (and stop) when one does not match."""
        timeout_s = nodes_mod.JOIN_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        for k in self.followers:
            key = store_key("hello", k)
            while not has(self.store, key):
                if time.monotonic() > deadline:
                    self.close(f"node {k} did not join")
                    raise ScanFailed(
                        f"node {k} did not join at {self.nodes.endpoint} within {timeout_s:.0f} s: run "
                        f"the same command there with --node-rank {k}"
                    )
                time.sleep(0.2)
            self.peers[k] = get_json(self.store, key)
        for k, peer in self.peers.items():
            why = check(self.hello, peer)
            if why is not None:
                self.close(f"node {k}: {why}")
                raise ScanFailed(f"node {k} does not match node 0: {why}")
        self.store.set("welcome", json.dumps({"scan_id": self.scan_id}))

    def job(self, kind: str, payload: dict) -> Job:
        """Publish a launch; node 0 starts its own torchrun right after."""
        self.n += 1
        port = nodes_mod.free_port()
        job = Job(self, self.n, f"{self.nodes.host}:{port}", f"{self.scan_id}-{self.n}")
        self.store.set(
            store_key("job", self.n),
            json.dumps({"kind": kind, "rdzv_endpoint": job.rdzv_endpoint, "rdzv_id": job.rdzv_id, **payload}),
        )
        return job

    def close(self, reason: str = "the scan ended") -> None:
        """Tell the followers the scan is over; give them a moment to read it before the store goes."""
        self.n += 1
        try:
            self.store.set(store_key("job", self.n), json.dumps({"kind": "end", "reason": reason}))
            joined = [k for k in self.followers if has(self.store, store_key("hello", k))]  # the others cannot hear it
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not all(
                has(self.store, store_key("bye", k)) or self.pulses[k].silent_s() > LOST_S for k in joined
            ):
                time.sleep(0.1)
        finally:
            self.heart.stop()


def hello(hw, dataset, model: str, imgsz: int) -> dict:
    """What node 0 compares with its own: a follower runs the same trials only where these match."""
    return {
        "version": __version__,
        "host": socket.gethostname(),
        "device": hw.device,
        "nproc": hw.world_size // max(hw.nnodes, 1),
        "gpus": list(hw.gpus),
        "model": model,
        "imgsz": imgsz,
        "train_images": dataset.train_images,
        "classes": len(dataset.classes),
        "data": dataset.data,
    }


def mismatch(mine: dict, theirs: dict) -> Optional[str]:
    """Why a follower cannot run node 0's trials, or None (node 0's side of the check)."""
    for key, what in (
        ("version", "yoloprof version"),
        ("device", "device"),
        ("nproc", "ranks per node"),
        ("imgsz", "image size"),
        ("train_images", "training images"),
        ("classes", "classes"),
    ):
        if mine.get(key) != theirs.get(key):
            return (
                f"{what} {theirs.get(key)} there, {mine.get(key)} on node 0: run the same command, with the same "
                "data and as many ranks, on every node"
            )
    if Path(str(mine.get("model"))).name != Path(str(theirs.get("model"))).name:
        return f"model {theirs.get('model')} there, {mine.get('model')} on node 0"
    return None


def lead(nodes: nodes_mod.Nodes, scan_id: str, me: dict, console) -> Leader:
    """Node 0: host the store and wait until every other node has joined with matching inputs."""
    console.print(
        f"  nodes: {nodes.nnodes}, this is node 0; waiting for nodes 1-{nodes.nnodes - 1} at {nodes.endpoint} "
        f"(at most {nodes_mod.JOIN_TIMEOUT_S:.0f} s)..."
    )
    leader = Leader(nodes, scan_id, me)
    try:
        leader.admit(mismatch)
    except BaseException:
        leader.heart.stop()
        raise
    hosts = ", ".join(f"node {k}: {p.get('host')}" for k, p in sorted(leader.peers.items()))
    console.print(f"  nodes: every node joined ({hosts})")
    return leader


def lost() -> Optional[str]:
    """Why the multi-node scan cannot go on (a node is gone), or None; None on one node."""
    if _ACTIVE is None:
        return None
    for k in _ACTIVE.followers:
        silent = _ACTIVE.pulses[k].silent_s()
        if silent > LOST_S:
            return f"node {k} is gone ({silent:.0f} s without a heartbeat)"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# The scan process's leader, while a multi-node scan runs: launch.run_trial and the link probe hand
# every launch that spans nodes to it.
_ACTIVE: Optional[Leader] = None


def active() -> Leader:
    if _ACTIVE is None:
        raise RuntimeError("a launch spans several nodes, but this scan process leads none")
    return _ACTIVE


class leading:
    """`with leading(leader):` every multi-node launch in the block goes through it; closes it after."""

    def __init__(self, leader: Optional[Leader]):
        self.leader = leader

    def __enter__(self):
        global _ACTIVE
        _ACTIVE = self.leader
        return self.leader

    def __exit__(self, exc_type, exc, tb):
        global _ACTIVE
        _ACTIVE = None
        if self.leader is not None:
            self.leader.close("the scan ended" if exc_type is None else f"node 0 stopped: {_first_line(exc)}")
