"""`yoloprof train` watches the real run: a 2-rank gloo run from the shared scan's best.yaml, with a data delay
from its third epoch and a slower rank 1 from its fourth (YOLOPROF_TEST_COST), and a run killed mid-epoch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scans import leftovers, wait_for
from yoloprof.analysis import run_drift
from yoloprof.records import read_json
from yoloprof.records.run import RunSummary

pytestmark = pytest.mark.slow
# The watched run's drifts are injected costs found against its own epochs: the tests that read it (and so may
# be the one that runs it) have the machine to themselves (tests/machine_share.py).
ALONE = pytest.mark.exclusive
BIN = Path(sys.executable).parent
EPOCHS = 5


def train(cfg: Path, project: Path, *extra: str, env: dict | None = None, **kw):
    cmd = [str(BIN / "yoloprof"), "train", str(cfg), "--nproc", "2", f"project={project}", "name=run", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def watched(real_scan, tmp_path_factory):
    out, _, _ = real_scan
    project = tmp_path_factory.mktemp("watched")
    env = {**os.environ, "YOLOPROF_TEST_COST": "data=150:from2;forward=250:rank1:from3"}
    proc = train(out / "best.yaml", project, f"epochs={EPOCHS}", "close_mosaic=0", env=env)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-4000:]
    return project / "run", text, out


@ALONE
def test_every_rank_writes_a_line_per_epoch_as_ultralytics_times_it(watched):
    run, _, _ = watched
    starts, epochs = run_drift.read(run)
    assert sorted(epochs) == [0, 1] and [e.epoch for e in epochs[0]] == list(range(EPOCHS)) == [
        e.epoch for e in epochs[1]
    ]
    for rows in epochs.values():
        for e in rows:
            assert e.steps == 4 and e.images == 8 and e.timing == "host"  # 16 images, 2 a rank a step
            assert e.train_s > 0 and e.end_s > 0 and e.step_ms_mean > 0 and e.peak_mem_mib > 0
    # Ultralytics' own results.csv: its time column is the run's seconds at each epoch's metrics row; rank 0's
    # epoch_s is the time between its rows, on the same clock
    times = [float(line.split(",")[1]) for line in (run / "results.csv").read_text().splitlines()[1:]]
    csv_epochs = [b - a for a, b in zip([0.0] + times, times)]
    assert [e.epoch_s for e in epochs[0]] == pytest.approx(csv_epochs, rel=0.02)
    assert starts[0].prediction_from is not None and starts[0].predicted_epoch_s > 0  # best.yaml came from a scan
    assert starts[1].prediction_from is None  # rank 0 carries it


@ALONE
def test_the_injected_drifts_are_named_at_their_epochs(watched):
    run, text, _ = watched
    s = read_json(run / "yoloprof" / "summary.json", RunSummary)
    found = {(d.kind, d.rank): d.epoch for d in s.drifts}
    assert found[("data_wait", 0)] == 2 and found[("data_wait", 1)] == 2  # data=150:from2
    assert found[("straggler", 1)] == 3  # forward=250:rank1:from3
    assert "drift at epoch 3 (data wait): rank 0's data wait rose" in text
    assert "drift at epoch 4 (straggler): rank 1 became a straggler in epoch 4" in text
    assert s.verdict in text and "predicted" in s.verdict
    # the live line: one per epoch on rank 0, with the scan's prediction
    lines = [line for line in text.splitlines() if line.startswith("yoloprof: epoch ")]
    assert len(lines) == EPOCHS and all("(predicted " in line for line in lines)
    # rank 0 reads the other ranks' lines of the epoch: the straggler is on the live line from epoch 4
    assert all("bound: straggler (rank 1, its own work +" in line for line in lines[3:]), lines


@ALONE
def test_the_node_is_sampled_while_the_steps_run(watched):
    run, text, _ = watched
    tele = (run / "yoloprof" / "telemetry-node0.jsonl").read_text().splitlines()
    header = json.loads(tele[0])
    assert header["kind"] == "header" and header["interval_s"] == 1.0 and header["gpus"] == []
    assert header["gpu_status"].startswith("not measured")  # no GPU on this machine: said, never zero
    s = read_json(run / "yoloprof" / "summary.json", RunSummary)
    # Each epoch's figures are the samples taken while its steps ran, from rank 0's line: its training ends
    # end_s before the line is written and lasts train_s. Epochs here take 0.3-4 s, so a sample a second
    # lands in some and not others; the drifted ones (3 and 4) are long enough for one at least. The first
    # sample, with no interval behind it, has no per-core reading: n/a, not idle.
    cpu = [json.loads(x) for x in tele if json.loads(x)["kind"] == "cpu"]
    assert cpu[0]["cpu_pct_per_core"] == [] and all(c["cpu_pct_per_core"] for c in cpu[1:])
    lines = [json.loads(x) for x in (run / "yoloprof" / "rank0.jsonl").read_text().splitlines()]
    for e in (x for x in lines if x["kind"] == "epoch"):
        end = e["t_end_s"] - e["end_s"]
        inside = [c for c in cpu if end - e["train_s"] <= c["t_s"] <= end]
        cores = [sum(c["cpu_pct_per_core"]) / len(c["cpu_pct_per_core"]) for c in inside if c["cpu_pct_per_core"]]
        v = s.epochs[e["epoch"]]
        assert v.telemetry_samples == len(inside), (e, v)
        assert v.cpu_util_pct == (pytest.approx(sum(cores) / len(cores)) if cores else None), (e, v)
    sampled = [v for v in s.epochs if v.cpu_util_pct is not None]
    assert {3, 4} <= {v.epoch for v in sampled} and all(0 < v.cpu_util_pct <= 100 for v in sampled), s.epochs
    assert all(v.gpu_util_pct is None and v.sm_clock_mhz_min is None for v in s.epochs)
    assert s.telemetry[0].startswith("node 0: GPU not measured") and "telemetry: node 0: GPU not measured" in text


@ALONE
def test_the_report_is_rebuilt_from_the_records_alone(watched):
    run, _, _ = watched
    page = run / "yoloprof" / "run.html"
    first = page.read_text()
    page.unlink()
    (run / "yoloprof" / "summary.json").unlink()
    proc = subprocess.run([str(BIN / "yoloprof"), "report", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    def text(page: str) -> str:  # matplotlib names an SVG's clip paths at random: the rest is the same
        return re.sub(r"<svg.*?</svg>", "<svg/>", page, flags=re.S)

    assert text(page.read_text()) == text(first) and "drift at epoch 3 (data wait)" in proc.stdout


def test_a_run_killed_mid_epoch_keeps_its_finished_epochs(real_scan, tmp_path):
    out, _, _ = real_scan
    proc = train(out / "best.yaml", tmp_path, "epochs=50", start_new_session=True)
    lines = tmp_path / "run" / "yoloprof" / "rank0.jsonl"  # rank 0 validates and saves: its epochs end last
    try:
        assert wait_for(lambda: lines.exists() and lines.read_text().count('"kind": "epoch"') >= 2, timeout=300)
        time.sleep(0.5)  # into the next epoch
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert wait_for(lambda: not leftovers(tmp_path), timeout=60), leftovers(tmp_path)  # the ranks died with it
    for r in (0, 1):
        rows = [json.loads(x) for x in (tmp_path / "run" / "yoloprof" / f"rank{r}.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in rows if x["kind"] == "epoch"][:2] == [0, 1]
    report = subprocess.run([str(BIN / "yoloprof"), "report", str(tmp_path / "run")], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    s = read_json(tmp_path / "run" / "yoloprof" / "summary.json", RunSummary)
    assert [v.epoch for v in s.epochs][:2] == [0, 1]


PYTHON_RUN = """
import sys
from ultralytics import YOLO
from yoloprof.probes import offline
from yoloprof.worker.run_watch import watch

offline.patch_ultralytics()
model = YOLO(sys.argv[1])
watch(model)
model.train(data=sys.argv[2], epochs=3, imgsz=64, batch=4, workers=0, device="cpu", project=sys.argv[3],
            name="run", plots=False, close_mosaic=0, warmup_epochs=0)
"""


def test_a_python_users_run_is_watched_with_its_own_telemetry(tiny_data, tmp_path):
    """`watch(model)` before `model.train(...)`, one process, no yoloprof train: the same records, and the
    process samples its own node (yoloprof train is not there to)."""
    from conftest import FIXTURES
    from yoloprof.scan.launch import offline_env

    env = {**os.environ, **offline_env(tmp_path / "cache")}
    args = [str(FIXTURES / "tiny-detect.yaml"), str(tiny_data), str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", PYTHON_RUN, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    starts, epochs = run_drift.read(run)
    assert list(epochs) == [0] and [e.epoch for e in epochs[0]] == [0, 1, 2] and starts[0].world_size == 1
    assert all(e.steps == 4 and e.comm_wait_ms_mean is None for e in epochs[0])  # 16 images, batch 4, one rank
    assert "yoloprof: epoch 3/3" in proc.stderr
    tele = (run / "yoloprof" / "telemetry-node0.jsonl").read_text()
    assert tele.startswith('{"kind": "header", "interval_s": 1.0') and '"kind": "cpu"' in tele
    report = subprocess.run([str(BIN / "yoloprof"), "report", str(run)], capture_output=True, text=True)
    assert report.returncode == 0 and (run / "yoloprof" / "run.html").exists(), report.stderr
    assert "no prediction to hold it against" in read_json(run / "yoloprof" / "summary.json", RunSummary).verdict
