"""A node other than 0 in a multi-node scan: join node 0's store, run each launch it publishes with
this node's ranks, send the records back. It plans nothing and writes no output of the scan.

The follower resolves its own hardware, data and model from the same command line as node 0, so
paths may differ between nodes (a local copy of the dataset); node 0 checks that they match.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from rich.console import Console

from yoloprof import paths
from yoloprof.errors import ScanFailed
from yoloprof.nodes import JOIN_TIMEOUT_S, SCAN_NODE_ENV, Nodes
from yoloprof.records import TrialSpec, from_dict
from yoloprof.scan import cluster, launch
from yoloprof.probes.node_store import Heart, Pulse, connect, get_json, has, store_key

NEVER = launch.HangPolicy(startup_s=float("inf"), min_stall_s=float("inf"))  # node 0 judges hangs


class Follower:
    def __init__(self, nodes: Nodes, out: Path, hw, dataset, model: str, console: Console):
        self.nodes, self.out, self.hw, self.dataset, self.model, self.console = nodes, out, hw, dataset, model, console
        k, host, port = nodes.node_rank, nodes.host, nodes.port
        try:
            self.store = connect(host, port, leader=False, timeout_s=JOIN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            raise ScanFailed(
                f"node {k} cannot reach node 0's scan at {nodes.endpoint} within {JOIN_TIMEOUT_S:.0f} s "
                f"({cluster._first_line(exc)}): start the scan on node 0 with the same --rdzv-endpoint"
            ) from None
        self.heart = Heart(host, port, k)
        self.leader = Pulse(self.store, 0)

    def run(self, stop, me: dict) -> str:
        """Follow until node 0 ends the scan; returns its last word."""
        k = self.nodes.node_rank
        self.store.set(store_key("hello", k), json.dumps(me))
        n = 1
        try:
            while True:
                key = store_key("job", n)
                while not has(self.store, key):
                    self._check_leader(stop)
                    time.sleep(0.2)
                job = get_json(self.store, key)
                if job["kind"] == "end":
                    return job.get("reason", "the scan ended")
                self.console.print(
                    f"node {k}: launch {n} ({job['kind']}{': ' + job['spec']['trial_id'] if job['kind'] == 'trial' else ''})"
                )
                folder = self.out / "launches" / f"{n:03d}"
                try:
                    self._launch(n, job, folder, stop)
                except Exception as exc:  # noqa: BLE001 - node 0 must hear it, whatever it is
                    self.store.set(store_key("job", n, "node", k, "refused"), cluster._first_line(exc))
                self.store.set(store_key("job", n, "node", k, "files"), json.dumps(cluster.read_files(folder)))
                shutil.rmtree(folder / paths.COMPILE_CACHE, ignore_errors=True)
                n += 1
        except (RuntimeError, OSError) as exc:  # the store is gone with node 0's scan process
            raise ScanFailed(
                f"node 0 stopped answering ({cluster._first_line(exc)}); its outputs hold what finished: "
                "resume there with --resume and start this command again"
            ) from None
        finally:
            self.heart.stop()
            try:
                self.store.set(store_key("bye", k), "1")
            except (RuntimeError, OSError):
                pass

    def _check_leader(self, stop) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        silent = self.leader.silent_s()
        if silent > cluster.LOST_S:
            how = "its store is gone" if silent == float("inf") else f"{silent:.0f} s without a heartbeat"
            raise ScanFailed(
                f"node 0 stopped answering ({how}); its outputs hold "
                "what finished: resume there with --resume and start this command again"
            )

    def _ended(self, n: int, stop):
        """should_stop for this node's launch: node 0's ended (and a grace passed), node 0 is gone, or a signal."""
        state = {"ended_at": None}

        def check() -> bool:
            if stop.signum is not None or self.leader.silent_s() > cluster.LOST_S:
                return True
            try:
                ended = has(self.store, store_key("job", n, "ended"))
            except (RuntimeError, OSError):  # node 0's store is gone: so is the launch
                return True
            if state["ended_at"] is None and ended:
                state["ended_at"] = time.monotonic()
            return state["ended_at"] is not None and time.monotonic() - state["ended_at"] > cluster.ENDED_GRACE_S

        return check

    def _launch(self, n: int, job: dict, folder: Path, stop) -> None:
        rdzv = launch.Rendezvous(self.nodes, job["rdzv_endpoint"], job["rdzv_id"])
        folder.mkdir(parents=True, exist_ok=True)
        if job["kind"] == "trial":
            spec = self.localize(from_dict(TrialSpec, job["spec"]))
            outcome = launch.run_trial(
                spec,
                folder,
                cache_dir=paths.cache_dir(),
                policy=NEVER,
                should_stop=self._ended(n, stop),
                rendezvous=rdzv,
                extra_env={SCAN_NODE_ENV: str(self.nodes.node_rank)},
            )
            (folder / "launch.json").write_text(json.dumps(dataclasses.asdict(outcome)))
            return
        self._command(job, folder, rdzv, self._ended(n, stop))

    def localize(self, spec: TrialSpec) -> TrialSpec:
        """Node 0's trial with this node's GPUs, data and model paths."""
        nproc = spec.nproc_per_node
        return dataclasses.replace(
            spec,
            gpus=list(self.hw.gpus[:nproc]) if spec.device == "cuda" else [],
            data=self.dataset.data,
            model=self.model if Path(spec.model).name == Path(self.model).name else spec.model,
        )

    def _command(self, job: dict, folder: Path, rdzv: launch.Rendezvous, should_stop) -> None:
        """A probe's launch (the link ceiling): `{dir}` in its arguments is this node's folder."""
        args = [a.replace("{dir}", str(folder)) for a in job["args"]]
        cmd = launch.torchrun_prefix(job["nproc"], rendezvous=rdzv) + ["-m", job["module"], *args]
        env = {**os.environ, **launch.offline_env(paths.cache_dir()), **job.get("env", {})}
        if self.hw.device == "cuda":
            from yoloprof.scan.ceilings import physical

            env["CUDA_VISIBLE_DEVICES"] = ",".join(physical(self.hw.gpus[: job["nproc"]]))
        with open(folder / "launcher.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
            try:
                while proc.poll() is None and not should_stop():
                    time.sleep(0.25)
            finally:
                launch.kill_group(proc, grace_s=2.0)


def run(ctx, req, console: Console) -> int:
    """`yoloprof scan --nnodes N --node-rank K` with K > 0: 0 when node 0 ended the scan, else 1 with its reason."""
    from yoloprof.scan.runner import StopFlag

    nodes = ctx.nodes
    out = paths.next_run_dir(f"scan-node{nodes.node_rank}")
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]yoloprof scan[/], node {nodes.node_rank} of {nodes.nnodes}: following node 0 at {nodes.endpoint} "
        f"({ctx.hw_why}); this node's launches go to {out}, node 0 writes every output"
    )
    me = cluster.hello(ctx.hw, ctx.dataset, ctx.model, ctx.imgsz)
    with StopFlag() as stop:
        follower = Follower(nodes, out, ctx.hw, ctx.dataset, ctx.model, console)
        try:
            reason = follower.run(stop, me)
        except KeyboardInterrupt:
            return 128 + (stop.signum or 2)
    if reason == "the scan ended":
        console.print(f"node {nodes.node_rank}: node 0 ended the scan; its outputs are on node 0")
        return 0
    raise ScanFailed(reason)
