"""A real scan: torchrun, 2 gloo ranks, Ultralytics training; then training from its best.yaml."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scans import SECRETS
from yoloprof.records import ScanMeta

from yoloprof.analysis import aggregate
from yoloprof.records import TrialResult, TrialSpec, read_json

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run_cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run(
        [str(BIN / "yoloprof"), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


@pytest.fixture
def scan(real_scan):
    """The shared real scan (tests/scans.py: shared_scan); test_scan_ceilings.py reads its ceilings."""
    return real_scan


def test_no_network_no_home_folders_no_secrets(scan):
    out, proc, root = scan
    assert not (root / "net.log").exists(), (root / "net.log").read_text()  # not one connection or lookup was tried
    assert list((root / "home").iterdir()) == []  # Ultralytics' settings and runs went to yoloprof's folders
    assert not (root / "runs" / "detect").exists()
    written = [p for p in out.rglob("*") if p.is_file()]
    for p in written:
        text = p.read_bytes()
        for value in SECRETS.values():
            assert value.encode() not in text, f"{value} leaked into {p}"
    env_vars = read_json(out / "scan.json", ScanMeta).environment.env_vars
    assert env_vars.get("NCCL_DEBUG") == "WARN" and env_vars.get("OMP_PROC_BIND") == "false"
    assert not set(SECRETS) & set(env_vars)


def test_scan_prints_its_choices_progress_and_ranked_table(scan):
    out, proc, _ = scan
    text = proc.stdout
    assert "2 CPU ranks with gloo" in text and "plan: 2 trials" in text
    # no --optimizer: Ultralytics' auto, resolved for the planned run (16 images, 100 epochs: 100 iterations)
    assert (
        "optimizer: auto -> AdamW (Ultralytics' pick for 100 epochs of 16 images at batch 4: 100 iterations <= 10,000)"
    ) in text
    assert "[1/2] t01-b4-w0-fp32" in text and "[2/2] t02-b4-w1-fp32" in text
    assert "trials, best first" in text and "Best: " in text and str(out / "best.yaml") in text


def test_every_rank_recorded_the_same_steps(scan):
    out, _, _ = scan
    meta = read_json(out / "scan.json", ScanMeta)
    assert meta.world_size == 2 and meta.device == "cpu" and len(meta.trial_ids) == 2
    for tid in meta.trial_ids:
        ranks = aggregate.read_ranks(out / "trials" / tid)
        assert [r.rank for r in ranks] == [0, 1]
        for r in ranks:
            assert r.info.backend == "gloo" and r.info.world_size == 2 and r.info.batch_per_rank == 2
            assert r.info.optimizer_effective == "AdamW"  # auto's pick for the planned run, read back from the trainer
            assert r.end.status == "ok" and r.end.mem_source == "rss" and r.end.peak_mem_mib > 100
            assert [s.warmup for s in r.steps] == [True, False, False, False]
            for s in r.steps:
                assert s.images == 2 and s.step_ms > 0 and s.forward_ms > 0 and s.backward_ms > 0
                assert s.data_wait_ms >= 0 and s.comm_wait_ms >= 0
                parts = s.data_wait_ms + s.h2d_ms + s.forward_ms + s.backward_ms + s.comm_wait_ms + s.optimizer_ms
                assert parts + (s.epoch_end_ms or 0.0) + s.other_ms == pytest.approx(s.step_ms)
                assert s.other_ms >= 0 and s.host_data_wait_ms == pytest.approx(s.data_wait_ms)  # one clock on CPU
        assert [s.step for s in ranks[0].steps] == [s.step for s in ranks[1].steps] == [0, 1, 2, 3]
        assert ranks[0].info.workers_effective == (0 if "-w0-" in tid else 1)


def test_allreduce_buckets_match_the_models_gradients(scan):
    from ultralytics.nn.tasks import DetectionModel

    from yoloprof.scan.request import DEFAULT_MODEL

    out, _, _ = scan
    meta = read_json(out / "scan.json", ScanMeta)
    assert meta.model == DEFAULT_MODEL == "yolo26n.yaml"  # no --model: YOLO26, both branches of its head reduced
    model = DetectionModel(DEFAULT_MODEL, nc=3, verbose=False)
    grad_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if ".dfl" not in n)  # YOLO11's DFL: frozen
    for tid in meta.trial_ids:
        ranks = aggregate.read_ranks(out / "trials" / tid)
        sizes = {tuple(b.size_bytes for b in s.buckets) for r in ranks for s in r.steps}
        assert len(sizes) == 1, "every step on every rank reduces the same buckets"
        (buckets,) = sizes
        assert len(buckets) >= 2 and sum(buckets) == grad_bytes
        assert all(b.allreduce_ms > 0 for r in ranks for s in r.steps for b in s.buckets)
        result = read_json(out / "trials" / tid / "result.json", TrialResult)
        assert result.bucket_sizes_bytes == list(buckets) and result.comm_ms_p50 > 0


def test_results_csv_positions_follow_throughput(scan):
    out, _, _ = scan
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert [r["position"] for r in rows] == ["1", "2"]
    assert float(rows[0]["img_per_s"]) >= float(rows[1]["img_per_s"]) > 0
    for r in rows:
        result = read_json(out / "trials" / r["trial_id"] / "result.json", TrialResult)
        assert float(r["img_per_s"]) == pytest.approx(result.img_per_s, rel=1e-5)
    best = yaml.safe_load((out / "best.yaml").read_text())
    ranking = json.loads((out / "ranking.json").read_text())
    (recommended,) = [r for r in rows if r["trial_id"] == ranking["recommended_trial_id"]]
    if recommended is not rows[0]:  # only a trial tied with the fastest may be recommended over it
        assert ranking["recommended_trial_id"] in ranking["tied"]
    assert best["workers"] == int(recommended["workers"]) and best["batch"] == 4 and best["device"] == "cpu"
    assert [r["optimizer"] for r in rows] == ["AdamW", "AdamW"]
    assert "optimizer" not in best  # left to Ultralytics' auto, which picks what the trials ran
    assert "# optimizer: not set, so Ultralytics' auto picks it: AdamW" in (out / "best.yaml").read_text()


def _train_env(tmp_path):
    return {
        **os.environ,
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "cfg"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "YOLO_VERBOSE": "True",
    }


def test_yolo_train_cfg_best_yaml_trains_as_it_is(scan, tmp_path):
    out, _, _ = scan
    proc = subprocess.run(
        [str(BIN / "yolo"), "train", f"cfg={out / 'best.yaml'}", "epochs=1", f"project={tmp_path}", "name=cli"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_train_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "cli" / "weights" / "last.pt").is_file()
    assert "1 epochs completed" in proc.stdout + proc.stderr


def test_python_api_trains_from_best_yaml(scan, tmp_path):
    out, _, _ = scan
    best = yaml.safe_load((out / "best.yaml").read_text())
    code = (
        f"from ultralytics import YOLO; YOLO({best['model']!r}).train(cfg={str(out / 'best.yaml')!r}, "
        f"epochs=1, project={str(tmp_path)!r}, name='api')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_train_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "api" / "weights" / "last.pt").is_file()


def test_the_scan_times_the_epoch_and_predicts_every_ok_trials_epoch_and_run(scan):
    from yoloprof.records import EpochCosts

    out, proc, _ = scan
    costs = read_json(out / "epoch" / "w2.json", EpochCosts)
    assert costs.status == "ok" and len(costs.val.s) == 2 and all(s > 0 for s in costs.val.s + costs.save.s)
    assert costs.val_images_total == 4 and costs.setup_s > 0  # tiny_data: 4 val images, all timed
    job = read_json(out / "epoch" / "w2" / "spec.json", TrialSpec)  # the same optimizer as the trial it extends
    trials = {(t.optimizer, t.optimizer_iterations) for t in read_json(out / "scan.json", ScanMeta).specs}
    assert trials == {(job.optimizer, job.optimizer_iterations)} == {("AdamW", 100)}
    assert {r.info.optimizer_effective for r in aggregate.read_ranks(out / "epoch" / "w2")} == {"AdamW"}
    assert "Epoch costs (2 ranks): validation" in proc.stdout
    rows = [r for r in csv.DictReader((out / "results.csv").open()) if r["status"] == "ok"]
    assert rows
    for r in rows:
        epoch_s, steps_s = float(r["epoch_s"]), float(r["steps_s"])
        # the steps at the trial's rate, plus validation and saving as timed (the later pass)
        assert epoch_s >= steps_s + costs.val.s[-1] + costs.save.s[-1] - 1e-6
        assert float(r["run_h"]) * 3600 > 100 * epoch_s * 0.9  # Ultralytics' default 100 epochs
    assert " an epoch, " in proc.stdout and "for 100 epochs" in proc.stdout
    from yoloprof import pipeline

    ok = [r for r in pipeline.collect(out).results if r.status == "ok"]
    assert ok and all(r.setup_s is not None and 0 < r.setup_s < 120 for r in ok)  # each trial's own set-up
