"""`yoloprof train CFG [k=v ...]`: Ultralytics training with a scan's recommendation, on one node or several.

`yolo train cfg=best.yaml` trains on one node only: Ultralytics builds its DDP world from this
node's device list and launches torchrun with --nproc_per_node alone. This command starts torchrun
itself (`yoloprof.nodes`: a local master on one node, the c10d rendezvous on several) with the
environment of best.env, and each rank runs Ultralytics' own trainer with only the fixes a world of
several nodes (or of CPU ranks) needs (`yoloprof.worker.train_rank`). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from yoloprof import nodes as nodes_mod
from yoloprof.errors import UsageError

ENV_FILE = "best.env"  # read from CFG's folder when --env is not given
RDZV_ID = "yoloprof-train"
JOIN_TIMEOUT_S = 600.0  # nodes of a job may start minutes apart; torchrun's own default
# The offline variables of a scan's launch, minus the folders: a training run keeps the user's
# Ultralytics settings (runs_dir among them), as `yolo train` does.
KEEP_USERS = ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "YOLO_VERBOSE")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see yoloprof train --help)")  # cli.main prints the one prefix


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="yoloprof train",
        description="Train with Ultralytics' own trainer under torchrun, with "
        "best.env's environment, on one node or several (CPU ranks on gloo included).",
    )
    p.add_argument(
        "cfg", metavar="CFG", nargs="?", help="training config, e.g. a scan's best.yaml (what `yolo train cfg=` takes)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Ultralytics arguments; they win over CFG")
    p.add_argument("--nnodes", type=int, help="nodes (default 1); every node runs the same command")
    p.add_argument("--node-rank", type=int, help="this node, 0..N-1 (node 0 writes the checkpoints and metrics)")
    p.add_argument(
        "--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port, the same on every node"
    )
    p.add_argument("--nproc", type=int, help="CPU ranks per node (default 1)")
    p.add_argument("--gpus", help="GPUs per node, one rank each, e.g. 0,1 (default: CFG's device list)")
    p.add_argument(
        "--env", metavar="FILE", help=f"environment file, lines `export K=V` (default: {ENV_FILE} beside CFG, if any)"
    )
    p.add_argument(
        "--no-watch",
        action="store_true",
        help="train without the run's records (by default every rank writes a line per epoch to RUN_DIR/yoloprof/, "
        "and the end compares the epochs with the scan's prediction)",
    )
    return p


def read_env(path: Path) -> dict[str, str]:
    """`export K=V` / `K=V` lines (values as a shell quotes them), comments and blank lines skipped."""
    out = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--env {path}: cannot be read ({exc.__class__.__name__})") from None
    for n, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"--env {path}:{n}: {exc}") from None
        if words[:1] == ["export"]:
            words = words[1:]
        for w in words:
            key, sep, value = w.partition("=")
            if not sep or not key.isidentifier():
                raise UsageError(f"--env {path}:{n}: {line.strip()!r} is not `export K=V` or `K=V`")
            out[key] = value
    return out


def _device_list(args: dict) -> Optional[str]:
    d = args.get("device")
    if d is None:
        return None
    return ",".join(str(x) for x in d) if isinstance(d, (list, tuple)) else str(d).strip()


def ranks_per_node(args: dict, nproc: Optional[int], gpus: Optional[str]) -> tuple[int, Optional[str]]:
    """(ranks per node, device to pass to the ranks or None): --gpus, else the config's device list on
    CUDA, else --nproc CPU ranks (default 1)."""
    if nproc is not None and gpus is not None:
        raise UsageError("--nproc counts CPU ranks, --gpus names GPUs: give one of them")
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc {nproc}: give 1 or more CPU ranks")
    if gpus is not None:
        ids = [g.strip() for g in gpus.split(",")]
        if not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise UsageError(f"--gpus {gpus}: give GPU indices, e.g. 0,1")
        return len(ids), ",".join(ids)
    device = _device_list(args)
    on_cpu = device in ("cpu", "mps") or (not device and not _cuda())
    if on_cpu:
        return (nproc or 1), None
    ids = [x for x in device.removeprefix("cuda:").split(",") if x.strip()] if device else []
    if nproc is not None:
        raise UsageError(
            f"--nproc {nproc} counts CPU ranks, but the config trains on device={device or 'GPU 0'}: "
            "give --gpus 0,1 (one rank per GPU) or device=cpu"
        )
    return max(len(ids), 1), None


@functools.lru_cache(maxsize=1)
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def command(opts: argparse.Namespace, nproc: int, device: Optional[str], nodes: nodes_mod.Nodes) -> list[str]:
    run = nodes_mod.torchrun(
        nproc,
        nodes,
        master_port=None if nodes.multi else nodes_mod.free_port(),
        rdzv_id=RDZV_ID,
        join_timeout_s=JOIN_TIMEOUT_S,
    )
    extra = [f"device={device}"] if device else []  # the last k=v wins, as on `yolo train`'s command line
    return [
        sys.executable,
        "-m",
        "yoloprof.orphan_guard",
        *run,
        "-m",
        "yoloprof.worker.train_rank",
        str(Path(opts.cfg).expanduser().resolve()),
        *opts.overrides,
        *extra,
    ]


def environment(opts: argparse.Namespace, nodes: nodes_mod.Nodes) -> tuple[dict[str, str], Optional[Path]]:
    from yoloprof import paths
    from yoloprof.scan.launch import offline_env
    from yoloprof.worker import ddp

    env_file = Path(opts.env).expanduser() if opts.env else Path(opts.cfg).expanduser().parent / ENV_FILE
    if opts.env and not env_file.is_file():
        raise UsageError(f"--env {opts.env}: no such file")
    extra = read_env(env_file) if env_file.is_file() else {}
    offline = {k: v for k, v in offline_env(paths.cache_dir()).items() if k not in KEEP_USERS}
    env = {**os.environ, **offline, **extra}
    if nodes.multi:
        env[ddp.NODE_RANK_ENV], env[ddp.NNODES_ENV] = str(nodes.node_rank), str(nodes.nnodes)
    return env, env_file if env_file.is_file() else None


def run(cmd: list[str], env: dict[str, str], started: Optional[Callable[[subprocess.Popen], None]] = None) -> int:
    """torchrun in a session of its own; SIGINT/SIGTERM go to it (a second one kills it); its exit code.
    started: called with the process once it runs (the run's telemetry follows it)."""
    from yoloprof.scan.launch import kill_group

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    if started is not None:
        started(proc)
    signals: list[int] = []

    def forward(sig, _frame):
        signals.append(sig)
        try:
            os.killpg(proc.pid, sig if len(signals) == 1 else signal.SIGKILL)
        except ProcessLookupError:
            pass

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        kill_group(proc, grace_s=10.0)  # DataLoader workers or ranks left behind
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    opts = parser().parse_intermixed_args(argv)
    if opts.cfg is None:
        raise UsageError("give CFG, a training config such as a scan's best.yaml (see yoloprof train --help)")
    nodes = nodes_mod.parse(opts.nnodes, opts.node_rank, opts.rdzv_endpoint)
    from yoloprof.worker.train_args import train_args

    args = train_args(opts.cfg, opts.overrides)
    nproc, device = ranks_per_node(args, opts.nproc, opts.gpus)
    gpus = node_gpus(args, device)
    env, env_file = environment(opts, nodes)
    where = f"node {nodes.node_rank} of {nodes.nnodes}, " if nodes.multi else ""
    print(
        f"yoloprof train: {where}{nproc} rank(s) on this node" + (f", environment from {env_file}" if env_file else ""),
        file=sys.stderr,
        flush=True,
    )
    if opts.no_watch:
        return run(command(opts, nproc, device, nodes), env)
    return watched(opts, nproc * nodes.nnodes, nodes, command(opts, nproc, device, nodes), env, gpus)


def node_gpus(args: dict, device: Optional[str]) -> list[int]:
    """The CUDA indices this node's ranks train on, as this process sees them ([] on CPU): what the run's
    telemetry samples."""
    d = device or _device_list(args)
    if d in ("cpu", "mps") or (not d and not _cuda()):
        return []
    ids = [x.strip() for x in (d or "").removeprefix("cuda:").split(",") if x.strip()]
    return [int(x) for x in ids if x.isdigit()] or [0]


class RunSampler:
    """The node's telemetry while the run trains: started once the node's first rank names the run folder
    (at the trainer's set-up), sampled by this process (not the ranks) every run_watch.TELEMETRY_S into
    RUN_DIR/yoloprof/telemetry-node<n>.jsonl (flushed line by line: a killed run keeps it), stopped with the run."""

    def __init__(self, pointer: Path, gpus: list[int], node: int, environ: dict[str, str]):
        import threading

        self.pointer, self.gpus, self.node, self.environ = pointer, gpus, node, environ
        self.sampler = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="yoloprof-run-telemetry", daemon=True)

    def follow(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._thread.start()

    def _wait(self) -> None:
        from yoloprof.probes.telemetry import TelemetrySampler
        from yoloprof.worker.run_watch import FOLDER, TELEMETRY_S

        while not self._done.wait(0.5):
            if self.proc.poll() is not None:
                return
            if self.pointer.exists() and self.pointer.read_text().strip():
                run_dir = Path(self.pointer.read_text().strip())
                path = run_dir / FOLDER / f"telemetry-node{self.node}.jsonl"
                self.sampler = TelemetrySampler(
                    path, TELEMETRY_S, self.gpus, root_pid=self.proc.pid, environ=self.environ
                ).start()
                return

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self.sampler is not None:
            self.sampler.stop()


def watched(opts, world_size: int, nodes: nodes_mod.Nodes, cmd: list[str], env: dict[str, str], gpus: list[int]) -> int:
    """The run with its records (yoloprof.worker.run_watch); node 0 then writes the summary and run.html."""
    import json
    import tempfile

    from yoloprof import run_outputs
    from yoloprof.worker import run_watch

    predicted, why = run_outputs.prediction(Path(opts.cfg), world_size) if nodes.leader else ({}, None)
    if why:
        print(f"yoloprof train: no prediction to compare: {why}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="yoloprof-train-") as tmp:
        pointer = Path(tmp) / "run_dir"
        env = {
            **env,
            run_watch.ENV: "1",
            run_watch.PREDICTION_ENV: json.dumps(predicted),
            run_watch.POINTER_ENV: str(pointer),
        }
        sampler = RunSampler(pointer, gpus, nodes.node_rank, env)
        try:
            code = run(cmd, env, started=sampler.follow)
        finally:
            sampler.stop()
        run_dir = Path(pointer.read_text().strip()) if pointer.exists() else None
    if nodes.leader and run_dir is not None and run_outputs.is_run(run_dir):
        summary = run_outputs.write(run_dir)
        print("\n".join(run_outputs.lines(summary)), file=sys.stderr, flush=True)
    return code
