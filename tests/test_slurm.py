"""`yoloprof slurm`: the batch script's content, read back as bash would, and run under fake `srun` and
`scontrol` (shims on PATH) to show the command each node would run."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from yoloprof.cli import main

# Arguments a shell would mangle if the script quoted them wrongly: a space, a quote, a $, a glob.
SCAN = [
    "--nnodes",
    "2",
    "--gpus",
    "0,1,2,3",
    "--out",
    "/shared/my scan",
    "--cfg",
    "it's $HOME.yaml",
    "--baseline",
    "batch=32,workers=*",
]


def _script(capsys, *argv: str) -> str:
    assert main(["slurm", *argv]) == 0
    return capsys.readouterr().out


def _parse(text: str) -> tuple[list[str], list[str], list[str]]:
    """(#SBATCH options, srun's own words, the command each task runs)."""
    sbatch = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    srun = shlex.split(next(line for line in text.splitlines() if line.startswith("srun ")))
    assert srun[-3:-1] == ["bash", "-c"]
    return sbatch, srun[:-3], shlex.split(srun[-1])


def test_script_asks_for_the_nodes_and_runs_one_scan_per_node(capsys):
    text = _script(capsys, "--time", "01:00:00", "--gpus-per-node", "4", "--port", "29555", "--", *SCAN)
    sbatch, srun, task = _parse(text)
    assert text.startswith("#!/bin/bash\n")
    assert {"--nodes=2", "--ntasks-per-node=1", "--time=01:00:00", "--gpus-per-node=4"} <= set(sbatch)
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    # shlex.split undoes exactly the quoting bash undoes: every scan argument arrives as it was given
    assert task == [
        "exec",
        "yoloprof",
        "scan",
        *SCAN,
        "--node-rank",
        "$SLURM_NODEID",
        "--rdzv-endpoint",
        "$RDZV_ENDPOINT",
    ]
    assert 'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"' in text
    assert 'export RDZV_ENDPOINT="${head_node}:29555"' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_each_node_runs_the_scan_with_its_own_node_rank(capsys, tmp_path):
    """Fake srun starts the task once per node with SLURM_NODEID set; fake yoloprof prints its arguments."""
    script = tmp_path / "scan.sbatch"
    assert main(["slurm", "--out", str(script), "--setup", "cd /tmp", "--", *SCAN]) == 0
    assert os.access(script, os.X_OK) and "sbatch" in capsys.readouterr().out
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {
        "scontrol": '[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] || exit 9\nprintf "gpu-07\\ngpu-08\\n"',
        "srun": 'n=1; for a in "$@"; do case "$a" in --nodes=*) n=${a#--nodes=};; esac; done\n'
        'while [ "${1#--}" != "$1" ]; do shift; done\n'
        'i=0; while [ $i -lt $n ]; do SLURM_NODEID=$i "$@" || exit $?; i=$((i+1)); done',
        "yoloprof": 'echo "node=$SLURM_NODEID cwd=$(pwd)"; for a in "$@"; do printf "%s\\n" "$a"; done; echo END',
    }
    for name, body in shims.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[07-08]"}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    runs = [chunk.strip().splitlines() for chunk in ran.stdout.split("END") if chunk.strip()]
    assert len(runs) == 2
    for k, lines in enumerate(runs):
        assert lines[0] == f"node={k} cwd=/tmp"
        assert lines[1:] == ["scan", *SCAN, "--node-rank", str(k), "--rdzv-endpoint", "gpu-07:29400"]


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "after `--`"),
        (["--", "--gpus", "0,1"], "give --nnodes N"),
        (["--", "--nnodes", "two"], "--nnodes two"),
        (["--", "--nnodes=2", "--node-rank", "0"], "drop --node-rank"),
        (["--", "--nnodes", "2", "--rdzv-endpoint=h:1"], "drop --rdzv-endpoint"),
        (["--port", "0", "--", "--nnodes", "2"], "--port 0"),
        (["--unknown", "--", "--nnodes", "2"], "unrecognized arguments: --unknown"),
        (["--out", "/no/such/dir/x.sh", "--", "--nnodes", "2"], "does not exist"),
    ],
)
def test_bad_slurm_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(["slurm", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
