"""Scans across nodes: the flags, node 0's store protocol, and real two-"node" scans on localhost
(two scan processes, gloo, their own torchrun each, one c10d rendezvous per trial)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yoloprof.probes import node_store
from yoloprof import nodes
from yoloprof.analysis.aggregate import LaunchOutcome, _status
from yoloprof.cli import main
from yoloprof.errors import ScanFailed, UsageError
from yoloprof.records import Knobs, TrialResult, TrialSpec, read_json
from yoloprof.scan import cluster
from yoloprof.search import plan

BIN = Path(sys.executable).parent
TINY_MODEL = Path(__file__).parent / "fixtures" / "tiny-detect.yaml"
SMALL = [
    *"--device cpu --imgsz 64 --steps 3 --warmup 1 --no-defaults --precision off --model".split(),
    str(TINY_MODEL),
    "--workers",
    "0",
    "--nproc",
    "1",
    "--no-epoch-job",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the flags -------------------------------------------------------------------------------------


def test_node_flags_parse_and_name_what_is_wrong():
    assert nodes.parse(None, None, None) == nodes.SINGLE
    n = nodes.parse(2, 1, "node0.cluster:29500")
    assert (n.nnodes, n.node_rank, n.host, n.port, n.multi, n.leader) == (2, 1, "node0.cluster", 29500, True, False)
    assert nodes.parse(2, 0, "10.0.0.1").port == nodes.DEFAULT_PORT
    for args, words in (
        ((2, None, "h:1"), "--node-rank"),
        ((2, 0, None), "--rdzv-endpoint"),
        ((2, 2, "h:1"), "give 0 to 1"),
        ((0, None, None), "1 or more"),
        ((2, 0, "h:notaport"), "HOST:PORT"),
        ((1, 1, None), "single node"),
    ):
        with pytest.raises(UsageError, match=words):
            nodes.parse(*args)


def test_torchrun_arguments_single_and_across_nodes():
    one = nodes.torchrun(2, master_port=1234)
    assert "--nnodes=1" in one and "--master-port=1234" in one and "--nproc-per-node=2" in one
    many = nodes.torchrun(4, nodes.parse(2, 1, "h:29400"), rdzv_endpoint="h:5555", rdzv_id="scan-7")
    assert {
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=h:5555",
        "--rdzv-id=scan-7",
        "--max-restarts=0",
    } <= set(many)
    assert any(a.startswith("--rdzv-conf=is_host=false") for a in many)  # only node 0 hosts a launch's rendezvous


@pytest.mark.parametrize(
    "argv, words",
    [
        (["scan", "--nnodes", "2", "--device", "cpu"], "--node-rank"),
        (["scan", "--nnodes", "2", "--node-rank", "5", "--rdzv-endpoint", "h:1", "--device", "cpu"], "give 0 to 1"),
        (["probe", "allreduce", "--nnodes", "2", "--rdzv-endpoint", "h:x", "--node-rank", "1"], "HOST:PORT"),
    ],
)
def test_bad_node_flags_are_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_scaling_across_nodes_compares_one_node_with_all():
    hw = plan.Hardware("cuda", 16, list(range(8)), 64, 8, nnodes=2)
    assert (hw.per_node, hw.nodes_for(8), hw.nodes_for(16)) == (8, 1, 2)
    assert plan.parse_world_sizes("8,16", hw) == [8, 16]
    with pytest.raises(UsageError, match="--ranks 8,16"):
        plan.parse_world_sizes("4,16", hw)
    p = plan.make_plan(hw, {"batch": [256], "workers": [8]})
    specs = plan.specs(
        p, hw, model="m.yaml", data="d.yaml", imgsz=640, optimizer="SGD", warmup=1, steps=3, world_sizes=[8, 16]
    )
    assert [(s.world_size, s.nnodes, s.nproc_per_node, s.knobs.batch, len(s.gpus)) for s in specs] == [
        (8, 1, 8, 128, 8),
        (16, 2, 8, 256, 8),
    ]  # the same batch per rank; 8 GPUs on each node
    assert all(s.env["OMP_NUM_THREADS"] == "8" for s in specs)  # cores per rank of one node


# -- node 0's side of the records ------------------------------------------------------------------


def test_a_lost_node_is_the_cause_and_resumable_a_refusal_is_an_error():
    spec = TrialSpec(
        "t", Knobs(4, 0, False, False, "off", "default"), 2, "cpu", [], "m", "d", 64, "SGD", 1, 3, {}, nnodes=2
    )
    lost = LaunchOutcome(
        returncode=1, node_failure="node 1 stopped answering (21 s without a heartbeat)", node_lost=True
    )
    assert _status(spec, [], lost) == ("interrupted", lost.node_failure)
    refused = LaunchOutcome(returncode=1, node_failure="node 1 could not launch: no GPU 3")
    assert _status(spec, [], refused) == ("error", refused.node_failure)


def test_follower_files_land_beside_node_0s_records(tmp_path):
    src, dst = tmp_path / "node1", tmp_path / "node0"
    (src / "sub").mkdir(parents=True)
    (src / "rank1.jsonl").write_text('{"kind": "info"}\n')
    (src / "rank1.log").write_text("x" * (cluster.MAX_LOG_BYTES + 10))
    (src / "telemetry.jsonl").write_text("{}\n")
    (src / "result.json").write_text("{}")
    (src / "sub" / "weights.pt").write_bytes(b"\0")  # not a record: stays on its node
    dst.mkdir()
    (dst / "result.json").write_text('{"mine": 1}')
    files = cluster.read_files(src)
    assert "sub/weights.pt" not in files and len(files["rank1.log"]) < cluster.MAX_LOG_BYTES + 100
    cluster.write_files(dst, json.loads(json.dumps(files)), 1)
    assert (dst / "rank1.jsonl").read_text() == '{"kind": "info"}\n'
    assert (dst / "rank1.log").read_text().startswith("[... earlier output cut ...]")
    assert (dst / "nodes" / "node1" / "telemetry.jsonl").exists()
    assert json.loads((dst / "result.json").read_text()) == {"mine": 1}  # node 0's own is never overwritten
    assert (dst / "nodes" / "node1" / "result.json").exists()


def test_node_0_refuses_a_node_that_does_not_match_and_tells_it_why():
    port = free_port()
    n0, n1 = nodes.parse(2, 0, f"127.0.0.1:{port}"), nodes.parse(2, 1, f"127.0.0.1:{port}")
    me = {"version": "1", "device": "cpu", "nproc": 1, "imgsz": 64, "train_images": 16, "classes": 2, "model": "a.yaml"}
    heard = {}

    def follower():
        store = node_store.connect(n1.host, n1.port, leader=False, timeout_s=30)
        store.set("hello/1", json.dumps({**me, "train_images": 32}))
        store.wait(["job/1"])
        heard.update(node_store.get_json(store, "job/1"))
        store.set("bye/1", "1")

    t = threading.Thread(target=follower)
    leader = cluster.Leader(n0, "s", me)
    t.start()
    with pytest.raises(ScanFailed, match="training images 32 there, 16 on node 0"):
        leader.admit(cluster.mismatch, timeout_s=30)
    t.join(30)
    assert heard["kind"] == "end" and "training images 32 there" in heard["reason"]


# -- real scans on two localhost "nodes" -----------------------------------------------------------


def node_cmd(kind: str, k: int, port: int, data: Path, *extra: str) -> list[str]:
    """`extra` starts with the probe's kind for `probe`."""
    head = [kind, *SMALL] if kind == "scan" else [kind, extra[0]]
    rest = extra if kind == "scan" else extra[1:]
    return [
        str(BIN / "yoloprof"),
        *head,
        "--data",
        str(data),
        "--nnodes",
        "2",
        "--node-rank",
        str(k),
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        *rest,
    ]


def start(cmd, cwd: Path, **env) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
    )


def finish(p: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = p.communicate(timeout=timeout)
    return out


def leftovers(*marks: Path) -> list[str]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "pid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(str(m) in cmd for m in marks) and p.info["pid"] != os.getpid():
            found.append(cmd[:120])
    return found


@pytest.mark.slow
def test_two_nodes_scan_one_node_against_both_and_an_oom_on_node_1(tiny_data, tmp_path):
    """--ranks 1,2 on 2 nodes of 1 rank: t01 on node 0 alone, t02 across both, where node 1's rank runs out of
    memory: its records reach node 0, which writes every output once."""
    port, out = free_port(), tmp_path / "scan"
    args = ("--batch", "8", "--ranks", "1,2", "--no-ceilings")
    follower = start(
        node_cmd("scan", 1, port, tiny_data, *args), tmp_path / "node1", YOLOPROF_TEST_FAULT="alloc@1:trial=t02"
    )
    leader = start(node_cmd("scan", 0, port, tiny_data, *args, "--out", str(out)), tmp_path / "node0")
    log0, log1 = finish(leader), finish(follower)
    assert leader.returncode == 0, log0[-3000:]
    assert follower.returncode == 0 and "node 0 ended the scan" in log1, log1[-3000:]
    meta = json.loads((out / "scan.json").read_text())
    assert (meta["nnodes"], meta["world_size"], meta["rdzv_endpoint"]) == (2, 2, f"127.0.0.1:{port}")
    assert "2 nodes" in " ".join(meta["trial_deviations"])
    r = {p.parent.name: read_json(p, TrialResult) for p in sorted(out.glob("trials/*/result.json"))}
    assert {k: v.status for k, v in r.items()} == {"t01-b4-w0-fp32-r1": "ok", "t02-b8-w0-fp32-r2": "oom"}
    one, both = out / "trials" / "t01-b4-w0-fp32-r1", out / "trials" / "t02-b8-w0-fp32-r2"
    assert [p.name for p in one.glob("rank*.jsonl")] == ["rank0.jsonl"] and not (one / "nodes").exists()
    assert sorted(p.name for p in both.glob("rank*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    assert (both / "nodes" / "node1" / "telemetry.jsonl").exists() and (
        both / "nodes" / "node1" / "launcher.log"
    ).exists()
    assert "can't allocate memory" in r["t02-b8-w0-fp32-r2"].error  # node 1's rank, read on node 0
    assert r["t01-b4-w0-fp32-r1"].img_per_s > 0 and r["t02-b8-w0-fp32-r2"].world_size == 2
    assert (out / "report.html").exists() and (out / "results.csv").exists()
    assert not list((tmp_path / "node1").rglob("results.csv")) and not list((tmp_path / "node1").rglob("report.html"))
    assert leftovers(out, tmp_path / "node1") == []


@pytest.mark.slow
def test_a_node_killed_mid_trial_stops_the_scan_and_resume_finishes_it(tiny_data, tmp_path):
    port, out = free_port(), tmp_path / "scan"
    hold = {
        "YOLOPROF_TEST_FAULT": "wait@1:trial=t02",
        "YOLOPROF_TEST_RELEASE": str(tmp_path / "never"),
        "YOLOPROF_NODE_LOST_S": "5",
    }
    args = ("--batch", "4,8", "--no-ceilings")
    follower = start(node_cmd("scan", 1, port, tiny_data, *args), tmp_path / "node1", **hold)
    leader = start(node_cmd("scan", 0, port, tiny_data, *args, "--out", str(out)), tmp_path / "node0", **hold)
    held = out / "trials" / "t02-b8-w0-fp32" / "rank0.jsonl"
    deadline = time.monotonic() + 240
    while not (held.exists() and '"step": 1,' in held.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    follower.send_signal(signal.SIGKILL)  # node 1 goes away mid-trial: its torchrun and rank die with it
    follower.communicate(timeout=30)
    log0 = finish(leader, 120)
    assert leader.returncode == 1, log0[-3000:]
    assert "node 1 is gone" in log0 and "--resume" in log0
    r = read_json(out / "trials" / "t02-b8-w0-fp32" / "result.json", TrialResult)
    assert r.status == "interrupted" and "node 1" in r.error
    assert read_json(out / "trials" / "t01-b4-w0-fp32" / "result.json", TrialResult).status == "ok"
    assert (out / "results.csv").exists()  # what finished is written
    assert leftovers(out, tmp_path / "node1") == []
    # node 1 starts its command again; node 0 resumes from its folder: only t02 runs
    follower = start(node_cmd("scan", 1, port, tiny_data, *args), tmp_path / "node1b")
    leader = start(
        [str(BIN / "yoloprof"), "scan", "--resume", str(out), "--no-ceilings", "--no-epoch-job"], tmp_path / "node0"
    )
    log0, log1 = finish(leader), finish(follower)
    assert leader.returncode == 0 and "1 of 2 trials have results; running 1" in log0, log0[-3000:]
    assert follower.returncode == 0, log1[-3000:]
    assert read_json(out / "trials" / "t02-b8-w0-fp32" / "result.json", TrialResult).status == "ok"
    assert leftovers(out, tmp_path / "node1", tmp_path / "node1b") == []


def test_a_node_that_never_joins_stops_the_scan_and_leaves_no_folder(tmp_path, monkeypatch):
    from rich.console import Console

    from yoloprof.scan import orchestrate

    monkeypatch.setattr(nodes, "JOIN_TIMEOUT_S", 1.0)
    out = tmp_path / "scan"
    out.mkdir()
    with pytest.raises(
        ScanFailed,
        match="node 1 did not join at 127.0.0.1:.* within 1 s: run the same command there with --node-rank 1",
    ):
        orchestrate.lead(nodes.parse(2, 0, f"127.0.0.1:{free_port()}"), out, {}, Console(quiet=True))
    assert not out.exists()  # nothing half-written


def test_link_loss_compares_the_buckets_across_nodes_with_one_node():
    from yoloprof.analysis.scaling import link_losses
    from yoloprof.records import AllReduceCeiling, AllReducePoint

    def ceiling(world, nnodes, bucket_us, big_us):
        pts = [AllReducePoint(2**20, bucket_us, 0, 0, 20, is_bucket=True), AllReducePoint(2**24, big_us, 0, 0, 20)]
        return AllReduceCeiling("nccl", world, "default", "cuda", "float32", "cuda_event", pts, nnodes=nnodes)

    [loss] = link_losses([ceiling(16, 2, 3000.0, 9e3), ceiling(8, 1, 500.0, 2e3)])
    assert (loss.across_ms, loss.one_node_ms, loss.ranks, loss.ranks_one_node) == (3.0, 0.5, 16, 8)
    assert "costs +2.50 ms a step (6.0x)" in loss.text and "1 gradient bucket (1.0 MiB)" in loss.text
    [alone] = link_losses([ceiling(2, 2, 3000.0, 9e3)])  # one rank per node: nothing to compare with
    assert alone.one_node_ms is None and "unknown" in alone.text
    assert link_losses([ceiling(8, 1, 500.0, 2e3)]) == []  # one node: no loss to show
    [tie] = link_losses([ceiling(16, 2, 550.0, 9e3), ceiling(8, 1, 500.0, 2e3)])  # +10%: inside one sweep's noise
    assert "no measurable difference" in tie.text and "costs" not in tie.text


@pytest.mark.slow
def test_link_probe_across_two_nodes_and_within_one(tiny_data, tmp_path):
    port, out = free_port(), tmp_path / "probe"
    args = ("--device", "cpu", "--nproc", "2", "--imgsz", "64", "--model", str(TINY_MODEL), "--max-mib", "1")
    follower = start(node_cmd("probe", 1, port, tiny_data, "allreduce", *args), tmp_path / "node1")
    leader = start(node_cmd("probe", 0, port, tiny_data, "allreduce", *args, "--out", str(out)), tmp_path / "node0")
    log0, log1 = finish(leader), finish(follower)
    assert leader.returncode == 0 and follower.returncode == 0, log0[-3000:] + log1[-2000:]
    across = json.loads((out / "allreduce-default.json").read_text())
    within = json.loads((out / "allreduce-default-node.json").read_text())
    assert (across["world_size"], across["nnodes"], within["world_size"], within["nnodes"]) == (4, 2, 2, 1)
    assert across["status"] == within["status"] == "ok"
    assert any(p["is_bucket"] for p in across["points"]) and max(p["size_bytes"] for p in within["points"]) >= 2**20
    assert "Across nodes: AllReduce of the model's" in " ".join(log0.split()) and "within one node (2 ranks" in log0
