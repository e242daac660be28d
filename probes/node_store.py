"""The scan processes' own store across nodes: torch's TCPStore, hosted by node 0's scan process,
and heartbeats on it. Kept here with the other instruments that import torch.distributed; the
protocol on top of it is yoloprof.scan.cluster's."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

BEAT_S = 1.0  # each scan process adds to its heartbeat this often


def store_key(*parts) -> str:
    """A store key: its parts joined by '/'."""
    return "/".join(str(p) for p in parts)


def connect(host: str, port: int, *, leader: bool, timeout_s: float):
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=leader, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))


def get_json(store, key: str):
    return json.loads(store.get(key).decode())


def has(store, key: str) -> bool:
    return store.check([key])


class Heart:
    """Adds 1 to this node's beat counter every BEAT_S, on a store connection of its own."""

    def __init__(self, host: str, port: int, node: int):
        self._store = connect(host, port, leader=False, timeout_s=30)
        self._key, self._stop = store_key("beat", node), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"yoloprof-beat-{node}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._store.add(self._key, 1)
            except Exception:  # noqa: BLE001 - the store went away: the peers will see this node as lost
                return
            self._stop.wait(BEAT_S)

    def stop(self) -> None:
        self._stop.set()


class Pulse:
    """Another node's heartbeat as seen from here: silent for how long, on our own clock."""

    def __init__(self, store, node: int):
        self.store, self.key = store, store_key("beat", node)
        self.value, self.moved = -1, time.monotonic()
        self.unreachable = False  # the store itself is gone (node 0's scan process): silent for good

    def silent_s(self) -> float:
        if self.unreachable:
            return float("inf")
        try:
            now = self.store.add(self.key, 0)
        except Exception:  # noqa: BLE001 - asking again would only repeat torch's warning
            self.unreachable = True
            return float("inf")
        if now != self.value:
            self.value, self.moved = now, time.monotonic()
        return time.monotonic() - self.moved
