"""`yoloprof train`: Ultralytics' own training under our torchrun, on one node or across nodes, and the
best.sh that runs it after a scan across nodes.

The slow test trains one real epoch on CPU ranks (gloo) twice, with the same world size: two `yoloprof
train` processes as two "nodes" on localhost (c10d rendezvous, one rank each, each in a folder of its
own, as nodes without shared storage), and one node with --nproc 2. Both must write what `yolo train`
writes, the same way, and only node 0 may write it."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES
from yoloprof import pipeline
from yoloprof.cli import main
from yoloprof.scan.launch import free_port

TINY_MODEL = FIXTURES / "tiny-detect.yaml"
TIMEOUT_S = 180


def _cfg(tmp_path: Path, data: Path) -> Path:
    """A config as a scan writes it, epochs 3 (the command line's epochs=1 must win), and its best.env."""
    cfg = tmp_path / "best.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(TINY_MODEL),
                "data": str(data),
                "imgsz": 64,
                "batch": 4,
                "epochs": 3,
                "workers": 0,
                "device": "cpu",
                "optimizer": "SGD",
            }
        )
    )
    (tmp_path / "best.env").write_text("# yoloprof: environment\nexport OMP_NUM_THREADS=1\n")
    return cfg


def _train(cfg: Path, cwd: Path, project: Path, *flags: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "yoloprof",
        "train",
        str(cfg),
        "epochs=1",
        "plots=False",
        f"project={project}",
        "name=run",
        *flags,
    ]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out


def _written(run: Path) -> dict:
    import torch

    ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    rows = list(csv.DictReader((run / "results.csv").open()))
    return {
        "top": sorted(ckpt),
        "state": sorted(ckpt["model"].state_dict()),
        "columns": list(rows[0]),
        "rows": len(rows),
        # each node's yoloprof train samples its own node: telemetry-node<n>.jsonl, compared apart
        "files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "telemetry-" not in p.name),
        "telemetry": sorted(p.name for p in (run / "yoloprof").glob("telemetry-node*.jsonl")),
    }


@pytest.mark.slow
def test_one_epoch_across_two_nodes_writes_what_one_node_writes(tiny_data, tmp_path):
    cfg = _cfg(tmp_path, tiny_data)
    port = free_port()
    t0 = time.monotonic()
    # node 1 starts first: c10d would make it global rank 0 by its order; --node-rank must decide. The
    # single-node run goes at the same time (the suite's time: the two take about 45 s one after the other)
    node = {
        k: _train(
            cfg,
            tmp_path / f"node{k}",
            tmp_path / f"node{k}" / "runs",
            "--nnodes",
            "2",
            "--node-rank",
            str(k),
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
        )
        for k in (1, 0)
    }
    single = _train(cfg, tmp_path / "single", tmp_path / "single" / "runs", "--nproc", "2")
    done = {k: _finish(p) for k, p in node.items()}
    code, single_log = _finish(single)
    print(f"two nodes and one node, at once: {time.monotonic() - t0:.1f} s")
    assert done[0][0] == 0 and done[1][0] == 0, done[0][1][-3000:] + done[1][1][-3000:]
    assert code == 0, single_log[-3000:]

    # the same world, as the ranks saw it, and nothing torchrun would warn about
    assert "a world of 2 ranks on 2 node(s), 1 per node, gloo" in done[0][1]
    assert "a world of 2 ranks on 1 node(s), 2 per node, gloo" in single_log
    assert "node_rank is only used" not in done[0][1] + done[1][1]
    # only node 0 wrote: node 1's folder holds nothing (its rank used node 0's run folder, never writing)
    assert not (tmp_path / "node1" / "runs").exists()
    assert [p for p in (tmp_path / "node1").rglob("*") if p.is_file()] == []
    across, alone = _written(tmp_path / "node0" / "runs" / "run"), _written(tmp_path / "single" / "runs" / "run")
    # the two "nodes" share this host's disk, so node 1's telemetry lands in the same run folder
    assert across.pop("telemetry") == ["telemetry-node0.jsonl", "telemetry-node1.jsonl"]
    assert alone.pop("telemetry") == ["telemetry-node0.jsonl"]
    assert across == alone
    assert across["rows"] == 1  # epochs=1 on the command line won over the config's 3
    assert {"weights/last.pt", "weights/best.pt", "results.csv", "args.yaml"} <= set(across["files"])
    assert {"epoch", "train/box_loss", "metrics/mAP50(B)", "val/box_loss"} <= set(across["columns"])
    args = yaml.safe_load((tmp_path / "node0" / "runs" / "run" / "args.yaml").read_text())
    assert (args["epochs"], args["plots"], args["batch"]) == (1, False, 4)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train"], "give CFG"),
        (["train", "nosuch.yaml"], "CFG nosuch.yaml: no such file"),
        (["train", "{cfg}", "epochs"], "epochs: give Ultralytics arguments as key=value"),
        (["train", "{cfg}", "foo/bar"], "foo/bar: give Ultralytics arguments as key=value"),
        (["train", "{cfg}", "epochs="], "give key=value with a value"),
        (["train", "{cfg}", "batchh=4"], "'batchh' is not an argument of Ultralytics"),
        (["train", "{cfg}", "--nnodes", "2", "--node-rank", "0"], "--rdzv-endpoint"),
        (["train", "{cfg}", "--nproc", "2", "--gpus", "0,1"], "give one of them"),
        (["train", "{cfg}", "--gpus", "a,b"], "--gpus a,b"),
        (["train", "{cfg}", "--env", "nope.env"], "--env nope.env: no such file"),
        (["train", "{cfg}", "model=nothere.pt"], "model=nothere.pt: no such file"),
    ],
)
def test_bad_train_input_is_one_line_and_exit_2(argv, words, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {TINY_MODEL}\ndata: d.yaml\ndevice: cpu\n")
    assert main([a.format(cfg=cfg) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_train_args_read_as_yolo_train_reads_them(tmp_path):
    from yoloprof.worker.train_args import train_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {TINY_MODEL}\ndata: d.yaml\nepochs: 3\nbatch: 8\ncfg: other.yaml\n")
    args = train_args(str(cfg), ["epochs=1", "lr0", "=", "0.02", "rect"])
    assert args["epochs"] == 1 and args["batch"] == 8 and args["lr0"] == 0.02 and args["rect"] is True
    assert "cfg" not in args  # as `yolo train cfg=` drops a cfg key inside the file


def test_env_file_beside_cfg_reaches_the_ranks(tmp_path):
    from yoloprof import nodes, train

    (tmp_path / "best.yaml").write_text("model: x.yaml\n")
    (tmp_path / "best.env").write_text("# a comment\nexport NCCL_ALGO=Ring\nOMP_NUM_THREADS='4'\n\n")
    opts = train.parser().parse_intermixed_args([str(tmp_path / "best.yaml"), "epochs=1"])
    env, used = train.environment(opts, nodes.parse(2, 1, "h:1"))
    assert used == tmp_path / "best.env" and env["NCCL_ALGO"] == "Ring" and env["OMP_NUM_THREADS"] == "4"
    assert env["YOLO_OFFLINE"] == "1" and env["YOLOPROF_NODE_RANK"] == "1" and env["YOLOPROF_NNODES"] == "2"
    assert env.get("YOLO_CONFIG_DIR") == os.environ.get("YOLO_CONFIG_DIR")  # the user's settings (runs_dir) hold
    (tmp_path / "bad.env").write_text("export 1X=2\n")
    with pytest.raises(Exception, match=r"bad.env:1"):
        train.read_env(tmp_path / "bad.env")


def test_ranks_per_node_from_gpus_device_list_or_nproc():
    from yoloprof import train
    from yoloprof.errors import UsageError

    assert train.ranks_per_node({"device": "cpu"}, None, None) == (1, None)
    assert train.ranks_per_node({"device": "cpu"}, 2, None) == (2, None)
    assert train.ranks_per_node({"device": "cpu"}, None, "0,1") == (2, "0,1")  # --gpus wins over the config
    assert train.ranks_per_node({"device": [0, 1, 2]}, None, None) == (3, None)
    assert train.ranks_per_node({"device": "0,1"}, None, None) == (2, None)
    with pytest.raises(UsageError, match="--nproc 2 counts CPU ranks"):
        train.ranks_per_node({"device": "0,1"}, 2, None)


def test_the_run_telemetry_samples_the_gpus_the_ranks_train_on(monkeypatch):
    from yoloprof import train

    monkeypatch.setattr(train, "_cuda", lambda: True)
    assert train.node_gpus({"device": "cpu"}, None) == []
    assert train.node_gpus({"device": "cpu"}, "2,3") == [2, 3]  # --gpus wins over the config
    assert train.node_gpus({"device": [0, 1, 2]}, None) == [0, 1, 2]
    assert train.node_gpus({"device": None}, None) == [0]  # Ultralytics' default on a GPU machine
    monkeypatch.setattr(train, "_cuda", lambda: False)
    assert train.node_gpus({"device": None}, None) == []


def test_the_run_telemetry_starts_when_the_run_folder_is_named_and_stops_with_the_run(tmp_path):
    """The sampler waits for the node's first rank to name the run folder, samples into it as the run goes,
    and gives up without a sample when the run ends before naming it."""
    from yoloprof import train

    pointer = tmp_path / "run_dir"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    sampler = train.RunSampler(pointer, [], 0, dict(os.environ))
    try:
        sampler.follow(proc)
        (tmp_path / "run").mkdir()
        pointer.write_text(str(tmp_path / "run"))
        out = tmp_path / "run" / "yoloprof" / "telemetry-node0.jsonl"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (out.exists() and out.read_text().count('"kind": "cpu"') >= 2):
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        sampler.stop()
    text = out.read_text()
    assert text.startswith('{"kind": "header", "interval_s": 1.0') and text.count('"kind": "cpu"') >= 2
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    nothing = train.RunSampler(tmp_path / "never", [], 0, dict(os.environ))
    nothing.follow(quick)
    quick.wait()
    t0 = time.monotonic()
    nothing.stop()
    assert nothing.sampler is None and time.monotonic() - t0 < 5


def test_node_rank_decides_the_global_rank():
    from yoloprof.worker import ddp

    env = {
        "YOLOPROF_NODE_RANK": "1",
        "YOLOPROF_NNODES": "2",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "RANK": "0",
    }
    assert ddp.follow_node_rank(env) == 3 and env["RANK"] == "3" and env["GROUP_RANK"] == "1"
    uneven = {**env, "WORLD_SIZE": "5", "RANK": "0"}  # nodes with different rank counts: torchrun's numbering
    assert ddp.follow_node_rank(uneven) is None and uneven["RANK"] == "0"
    assert ddp.device_for("0,1", 1).index == 1 and ddp.device_for("cuda:2,3", 0).index == 2
    assert ddp.device_for("cpu", 3).type == "cpu"


# -- best.sh -------------------------------------------------------------------------------------------------


def _fake_yoloprof(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "yoloprof"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_best_sh_on_one_node_stays_plain_yolo_train(cpu_scan_copy):
    from yoloprof.reports import config_files

    out = pipeline.collect(cpu_scan_copy)
    assert out.meta.nnodes == 1  # a scan recorded before nodes existed reads as one node
    config_files.write(cpu_scan_copy, out.meta, out.best, out.results)
    sh = (cpu_scan_copy / "best.sh").read_text()
    assert 'exec yolo train cfg="$here/best.yaml" "$@"' in sh and "yoloprof train" not in sh
    assert "yolo train cfg=best.yaml" in (cpu_scan_copy / "best.env").read_text()


def test_best_sh_after_a_scan_across_nodes_runs_yoloprof_train(cpu_scan_copy, tmp_path):
    from yoloprof.reports import config_files

    out = pipeline.collect(cpu_scan_copy)
    meta = dataclasses.replace(out.meta, nnodes=2, rdzv_endpoint="node0.cluster:29400", world_size=4)
    config_files.write(cpu_scan_copy, meta, out.best, out.results)
    sh = cpu_scan_copy / "best.sh"
    text = sh.read_text()
    assert "plain `yolo train`" in text and "one node" in text  # why not yolo train, in a comment
    assert "exec yolo train" not in text
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    assert "NODE_RANK=k ./best.sh" in (cpu_scan_copy / "best.yaml").read_text()
    assert "`yoloprof train` reads it" in (cpu_scan_copy / "best.env").read_text()
    env = _fake_yoloprof(tmp_path)
    ran = subprocess.run([str(sh), "epochs=5"], env={**env, "NODE_RANK": "1"}, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "train",
        str(cpu_scan_copy / "best.yaml"),
        "--env",
        str(cpu_scan_copy / "best.env"),
        "--nnodes",
        "2",
        "--nproc",
        "2",
        "--node-rank",
        "1",
        "--rdzv-endpoint",
        "node0.cluster:29400",
        "epochs=5",
    ]
    moved = subprocess.run(
        [str(sh)], env={**env, "NODE_RANK": "0", "RDZV_ENDPOINT": "10.0.0.5:29500"}, capture_output=True, text=True
    )
    assert moved.stdout.splitlines()[-1] == "10.0.0.5:29500"
    unset = subprocess.run(
        [str(sh)], env={k: v for k, v in env.items() if k != "NODE_RANK"}, capture_output=True, text=True
    )
    assert unset.returncode != 0 and "set NODE_RANK to the rank of this node, 0..1" in unset.stderr
    assert unset.stdout == ""
