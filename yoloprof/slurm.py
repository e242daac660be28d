"""`yoloprof slurm [FLAGS] -- SCAN ARGS...`: a SLURM batch script that runs `yoloprof scan SCAN ARGS...`
on every node of its allocation, one task per node.

The node count is the scan's own `--nnodes N` (required in SCAN ARGS): the script asks SLURM for
N nodes. Each task runs the same scan command with `--node-rank $SLURM_NODEID` and the rendezvous
endpoint on the allocation's first host (`scontrol show hostnames`), where SLURM_NODEID is 0: node 0
leads the scan and writes its outputs (so a scan's `--out` lies on shared storage or node 0's disk).
Flags before `--` are this command's; everything after it is the scan's, quoted for the shell.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Optional

from yoloprof import nodes as nodes_mod
from yoloprof.errors import UsageError

# Set by this script on each task; a scan argument that sets them would contradict it.
OWN = ("--node-rank", "--rdzv-endpoint")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see yoloprof slurm --help)")  # cli.main prints the one prefix


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="yoloprof slurm",
        usage="yoloprof slurm [FLAGS] -- SCAN ARGS (with --nnodes N)",
        description="Write a SLURM batch script that runs `yoloprof scan SCAN ARGS` on every node of the "
        "allocation, one task per node, node 0 (the first host) hosting the rendezvous.",
    )
    p.add_argument("--out", metavar="FILE", help="write the script here (default: standard output)")
    p.add_argument(
        "--port",
        type=int,
        default=nodes_mod.DEFAULT_PORT,
        help=f"rendezvous port on the first host (default {nodes_mod.DEFAULT_PORT})",
    )
    p.add_argument("--job-name", default="yoloprof-scan", help="SLURM job name (default yoloprof-scan)")
    p.add_argument("--time", help="SLURM time limit, e.g. 01:00:00")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--gpus-per-node", help="GPUs to ask for on each node, e.g. 8")
    p.add_argument("--cpus-per-task", type=int, help="CPU cores to ask for on each node's task")
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="any other sbatch option, e.g. --sbatch=--exclusive (repeatable)",
    )
    p.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run before the scan on every node, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    p.add_argument(
        "--yoloprof", default="yoloprof", metavar="CMD", help="how the nodes start yoloprof (default yoloprof)"
    )
    return p


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this command's flags, the scan's args): the scan's come after `--`."""
    if "--" not in argv:
        raise UsageError(
            "give the scan's arguments after `--`, e.g. "
            "yoloprof slurm --time 01:00:00 -- --nnodes 2 --gpus 0,1,2,3 --out /shared/scan"
        )
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def _flag_value(args: list[str], flag: str) -> Optional[str]:
    """The value of `flag V` or `flag=V` in args (the last one, as argparse takes it)."""
    found = None
    for i, a in enumerate(args):
        if a == flag:
            if i + 1 >= len(args):
                raise UsageError(f"scan argument {flag} needs a value")
            found = args[i + 1]
        elif a.startswith(flag + "="):
            found = a.split("=", 1)[1]
    return found


def nnodes(scan_args: list[str]) -> int:
    for flag in OWN:
        if any(a == flag or a.startswith(flag + "=") for a in scan_args):
            raise UsageError(
                f"drop {flag} from the scan's arguments: each node gets its own from "
                "SLURM (--node-rank $SLURM_NODEID, --rdzv-endpoint on the first host)"
            )
    value = _flag_value(scan_args, "--nnodes")
    if value is None:
        raise UsageError("give --nnodes N in the scan's arguments: the script asks SLURM for N nodes")
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--nnodes {value}: give the number of nodes, 1 or more")
    return int(value)


def script(opts: argparse.Namespace, scan_args: list[str]) -> str:
    n = nnodes(scan_args)
    if not 0 < opts.port < 65536:
        raise UsageError(f"--port {opts.port}: give a port, 1-65535")
    sbatch = [f"--job-name={opts.job_name}", f"--nodes={n}", "--ntasks-per-node=1"]
    for flag in ("time", "partition", "account", "gpus_per_node", "cpus_per_task"):
        value = getattr(opts, flag)
        if value is not None:
            sbatch.append(f"--{flag.replace('_', '-')}={value}")
    sbatch += opts.sbatch
    bad = next((o for o in sbatch if "\n" in str(o)), None)
    if bad is not None:
        raise UsageError(f"{bad!r}: one line per sbatch option")
    scan = [*shlex.split(opts.yoloprof), "scan", *scan_args]
    # Expanded by each task's own shell: SLURM_NODEID differs per node, RDZV_ENDPOINT comes from the batch shell.
    per_node = f'{shlex.join(scan)} --node-rank "$SLURM_NODEID" --rdzv-endpoint "$RDZV_ENDPOINT"'
    task = "; ".join([*opts.setup, f"exec {per_node}"])
    lines = [
        "#!/bin/bash",
        f"# Written by yoloprof slurm: `yoloprof scan` across {n} node(s), one task per node. Submit: sbatch THIS_FILE",
        *(f"#SBATCH {o}" for o in sbatch),
        "",
        "set -eu",
        "# Node 0 (SLURM_NODEID 0, the allocation's first host) hosts the rendezvous, leads the scan and writes its",
        "# outputs (the scan's --out: shared storage or node 0's disk). Every node runs the same command with its own",
        "# --node-rank; the single quotes below leave $SLURM_NODEID to each task's shell.",
        'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        *(
            ()
            if opts.cpus_per_task or any("exclusive" in o for o in opts.sbatch)
            else (
                "# SLURM may give a task one core by default: --cpus-per-task N (or --sbatch=--exclusive) lets the ranks",
                "# and their DataLoader workers use the node's cores.",
            )
        ),
        f'export RDZV_ENDPOINT="${{head_node}}:{opts.port}"',
        f"srun --nodes={n} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    own, scan_args = (argv, []) if argv in (["-h"], ["--help"]) else split(argv)
    opts = parser().parse_args(own)
    text = script(opts, scan_args)
    if opts.out:
        from pathlib import Path

        out = Path(opts.out)
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
        out.write_text(text)
        out.chmod(0o755)
        print(f"Wrote {out}: submit it with  sbatch {out}")
    else:
        print(text, end="")
    return 0
