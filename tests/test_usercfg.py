"""--cfg: the user's own training config as the scan's start, its arguments in every trial, best.yaml as a diff of it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from yoloprof.probes import environment
from yoloprof import cli, pipeline
from yoloprof.records import Environment, Knobs, OptimizerPlan, write_json
from yoloprof.scan import ceilings, orchestrate
from yoloprof.search import baselines, plan, usercfg

CPU_2 = plan.Hardware("cpu", 2, [], 16, 0)
GPU_2 = plan.Hardware("cuda", 2, [0, 1], 16, 2)
MEASUREMENT = {
    "val": False,
    "save": False,
    "close_mosaic": 0,
    "warmup_epochs": 0,
    "epochs": 1000,
    "plots": False,
    "exist_ok": True,
    "name": "ultralytics",
    "verbose": False,
}
USER = {
    "model": "yolo11n.yaml",
    "epochs": 300,
    "imgsz": 64,
    "batch": 8,
    "workers": 0,
    "lr0": 0.02,
    "mosaic": 0.5,
    "nbs": 32,
    "val": True,
    "save": True,
    "close_mosaic": 10,
    "warmup_epochs": 3.0,
    "plots": True,
    "device": "0",
    "project": "mine",
    "name": "exp",
    "exist_ok": False,
    "resume": False,
    "amp": True,
    "cache": False,
}


def fake_env():
    return Environment(
        "h", "linux", "3.11", 16, 64000.0, "2.14.1", "8.4.190", "13.0", "2.30", None, [], ["batch", "workers"], {}
    )


def write_cfg(folder: Path, text: str, name: str = "my_train.yaml") -> Path:
    p = folder / name
    p.write_text(text)
    return p


BAD = [
    # (config text or None for a missing file, extra flags, fragment of the one line)
    ("batchh: 16\nlr0: 0.01\n", [], "'batchh' is not an argument of Ultralytics"),
    ("batchh: 16\n", [], "did you mean batch?"),
    ("lr0: abc\n", [], "'lr0=abc' is of invalid type str"),
    ("hsv_h: 3\n", [], "'hsv_h=3' is an invalid value"),
    ("- batch\n- 16\n", [], "holds a list, not a mapping of Ultralytics arguments"),
    ("just words\n", [], "holds a str, not a mapping"),
    ("", [], "is empty, not a mapping"),
    ("batch: [unclosed\n", [], "cannot be read as YAML"),
    (None, [], "no such file"),
    ("batch: 16\n", ["--baseline", "batch=8"], "drop --baseline"),
    ("model: yolo11n.yaml\n", ["--model", "yolo11s.yaml"], "--model yolo11s.yaml contradicts --cfg"),
    ("imgsz: 64\n", ["--imgsz", "128"], "drop --imgsz or change the config"),
    ("optimizer: Adam\n", ["--optimizer", "SGD"], "--optimizer SGD contradicts"),
    ("task: segment\n", [], "task: segment, but the model yolo26n.yaml is a detect model"),  # the default
    ("task: track\n", [], "task: track; give one of detect, segment"),
    ("batch: -1\n", [], "batch: -1 lets AutoBatch pick a size"),
    ("batch: 3\n", [], "batch: 3: must be a multiple of the 2 ranks"),
    ("compile: fast\n", [], "compile: fast; give false, true or a mode"),
    ("imgsz: [64, 48]\n", [], "give one number"),
]


@pytest.mark.parametrize("text,flags,words", BAD, ids=[w for _, _, w in BAD])
def test_bad_config_is_one_line_and_exit_2(text, flags, words, tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env())
    cfg = tmp_path / "missing.yaml" if text is None else write_cfg(tmp_path, text)
    before = sorted(tmp_path.rglob("*"))
    code = cli.main(
        ["scan", "--device", "cpu", "--data", str(tiny_data), "--cfg", str(cfg), "--out", str(tmp_path / "s"), *flags]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err and "Docs: https" not in err  # Ultralytics' CLI help stays out
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_held_arguments_are_the_users_less_the_measurement_and_the_knobs():
    held = usercfg.held(USER)
    assert held == {"lr0": 0.02, "mosaic": 0.5, "nbs": 32}
    assert set(usercfg.left_out(USER)) == {
        *"epochs val save close_mosaic warmup_epochs plots device project name exist_ok resume".split(),
    }
    assert all(why for why in usercfg.NOT_IN_TRIALS.values())
    assert "close_mosaic (a trial measures the steady state" in usercfg.deviation(USER)


def test_trial_overrides_carry_the_config_and_never_override_the_measurement():
    from yoloprof.worker.trainer import trial_overrides

    knobs = Knobs(16, 2, False, False, "disk", "default")
    grid = plan.specs(
        plan.Plan(plan.Axes([16], [2], [False], [False], ["disk"], ["default"]), [knobs]),
        CPU_2,
        model="yolo11n.yaml",
        data="/d.yaml",
        imgsz=64,
        optimizer="SGD",
        warmup=1,
        steps=3,
        overrides=usercfg.held(USER),
    )
    auto = plan.spec_for(
        knobs,
        1,
        CPU_2,
        model="yolo11n.yaml",
        data="/d.yaml",
        imgsz=64,
        optimizer="SGD",
        warmup=1,
        steps=3,
        overrides=usercfg.held(USER),
    )
    for spec in (grid[0], auto):
        assert spec.overrides == {"lr0": 0.02, "mosaic": 0.5, "nbs": 32}
        args = trial_overrides(spec, "/proj")
        assert (args["lr0"], args["mosaic"], args["nbs"]) == (0.02, 0.5, 32)
        assert {k: args[k] for k in MEASUREMENT} == MEASUREMENT and args["project"] == "/proj"
        assert (args["batch"], args["workers"], args["amp"], args["cache"], args["device"]) == (
            16,
            2,
            False,
            "disk",
            "cpu",
        )
    # even a spec that carries the user's whole config (built by hand) measures as a trial must
    rogue = dataclasses.replace(auto, overrides=dict(USER))
    args = trial_overrides(rogue, "/proj")
    assert {k: args[k] for k in MEASUREMENT} == MEASUREMENT and args["project"] == "/proj"
    assert (args["batch"], args["workers"], args["amp"], args["device"]) == (16, 2, False, "cpu")


def test_compute_ceiling_holds_the_config_and_the_users_accumulation():
    specs = ceilings.compute_specs(
        CPU_2, [8, 16], [False], model="m", data="/d", imgsz=64, optimizer="SGD", warmup=1, steps=3
    )
    out = usercfg.for_compute(specs, USER, ranks=2)
    # per rank 4 and 8 at 2 ranks: a DDP trial accumulates round(32 / global batch) = 4 and 2 steps
    assert [s.overrides for s in out] == [
        {"lr0": 0.02, "mosaic": 0.5, "nbs": 16},
        {"lr0": 0.02, "mosaic": 0.5, "nbs": 16},
    ]
    assert usercfg.for_compute(specs, {"epochs": 3}, ranks=2) == specs


def test_baseline_from_the_config():
    assert baselines.from_cfg({"batch": 32, "workers": 4, "cache": True}, GPU_2, "c") == Knobs(
        32, 4, True, True, "ram", "default"
    )
    assert baselines.from_cfg({"amp": False, "cache": "disk"}, GPU_2, "c") == Knobs(
        16, 8, False, True, "disk", "default"
    )
    assert baselines.from_cfg({"amp": True, "workers": 2}, CPU_2, "c") == Knobs(16, 2, False, False, "off", "default")
    assert baselines.from_cfg({}, GPU_2, "c") == baselines.ultralytics_defaults(GPU_2)


def test_auto_optimizer_is_picked_for_the_configs_run():
    from yoloprof.analysis.optimizer import for_batch, reason

    named = usercfg.optimizer_plan(None, {"optimizer": "Adam"}, images=100, epochs=10)
    assert for_batch(named, 16) == ("Adam", None) and named.source == "your config"
    plain = usercfg.optimizer_plan(None, {}, images=1000, epochs=100)  # ceil(1000 / 64) * 100 = 1600
    assert for_batch(plain, 16) == ("AdamW", 1600) and "1,600 iterations <= 10,000" in reason(plain, 16)
    assert for_batch(usercfg.optimizer_plan(None, {"optimizer": "auto"}, images=100000, epochs=100), 16)[0] == "MuSGD"


def test_prepare_takes_model_data_imgsz_baseline_and_run_from_the_config(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env())
    cfg = write_cfg(tmp_path, yaml.safe_dump({**USER, "data": str(tiny_data), "optimizer": "SGD"}, sort_keys=False))
    req = orchestrate.ScanRequest(device="cpu", cfg=str(cfg), command=["yoloprof", "scan", "--cfg", str(cfg)])
    ctx = orchestrate.prepare(req, Console(file=open(os.devnull, "w")))
    assert ctx.train_cfg == str(cfg.resolve()) and list(ctx.train_cfg_args) == list(USER) + ["data", "optimizer"]
    assert (ctx.imgsz, ctx.dataset.data, req.optimizer) == (64, str(tiny_data.resolve()), "SGD")
    assert ctx.optimizer == OptimizerPlan("SGD", "your config", 16, 300, 32)  # the config's epochs and nbs
    assert ctx.run_plan.epochs == 300 and ctx.run_plan.close_mosaic == 10
    assert ctx.baseline == Knobs(8, 0, False, False, "off", "default")
    assert ctx.roles[baselines.YOURS] == ctx.baseline


@pytest.fixture
def cfg_scan(cpu_scan_copy):
    """The recorded CPU scan as if it had been run with --cfg; your settings were t01 (batch 8, workers 0)."""
    meta = pipeline.load_meta(cpu_scan_copy)
    meta.train_cfg = "/home/me/my_train.yaml"
    meta.train_cfg_args = dict(USER)
    meta.baselines[baselines.YOURS] = "t01-b8-w0-fp32"
    write_json(cpu_scan_copy / "scan.json", meta)
    return cpu_scan_copy


def _body(text: str) -> dict:
    return yaml.safe_load(text)


def test_best_yaml_is_the_users_config_with_only_the_measured_settings_changed(cfg_scan):
    from ultralytics.cfg import get_cfg

    out = pipeline.write_all(cfg_scan)
    assert out.best.trial_id == "t03-b16-w0-fp32"
    text = (cfg_scan / "best.yaml").read_text()
    best = _body(text)
    assert list(best) == list(USER)  # every key, in the user's order, nothing added
    assert best == {**USER, "batch": 16}  # only batch differs from t01; val, close_mosaic, epochs as the user wrote
    (line,) = [x for x in text.splitlines() if x.startswith("batch:")]
    assert line == "batch: 16  # was 8: +45% img/s (95% +32% to +60%), yoloprof t03-b16-w0-fp32"
    assert [x for x in text.splitlines() if "#" in x and not x.startswith("#")] == [line]
    assert "against your settings (trial t01-b8-w0-fp32)" in text and "Changed: batch" in text
    get_cfg(overrides=best)  # Ultralytics takes every key
    assert "yoloprof t03-b16-w0-fp32" in (cfg_scan / "report.html").read_text()


def test_best_yaml_changes_several_settings_together(cfg_scan):
    meta = pipeline.load_meta(cfg_scan)
    meta.baselines[baselines.YOURS] = "t02-b8-w2-fp32"  # batch 8, workers 2 against t03's 16, 0
    meta.train_cfg_args = {k: v for k, v in USER.items() if k != "workers"}  # workers left at its default
    write_json(cfg_scan / "scan.json", meta)
    pipeline.write_all(cfg_scan)
    text = (cfg_scan / "best.yaml").read_text()
    assert _body(text) == {**meta.train_cfg_args, "batch": 16, "workers": 0}
    assert "batch: 16  # was 8: " in text and ", together with workers, yoloprof t03" in text
    assert "workers: 0  # was 2 (not in your config): " in text


def test_a_change_within_the_noise_is_written_and_says_so(cfg_scan):
    meta = pipeline.load_meta(cfg_scan)
    meta.baselines[baselines.YOURS] = "t04-b16-w2-fp32"  # tied with t03 (workers 2 against 0)
    meta.train_cfg_args = {**USER, "batch": 16, "workers": 2}
    write_json(cfg_scan / "scan.json", meta)
    pipeline.write_all(cfg_scan)
    text = (cfg_scan / "best.yaml").read_text()
    assert _body(text) == {**meta.train_cfg_args, "workers": 0}
    assert "workers: 0  # was 2: no measurable effect on img/s (95% -6% to +17%), yoloprof t03-b16-w0-fp32" in text


def test_best_yaml_unchanged_when_your_settings_were_recommended(cfg_scan):
    meta = pipeline.load_meta(cfg_scan)
    meta.baselines[baselines.YOURS] = "t03-b16-w0-fp32"
    write_json(cfg_scan / "scan.json", meta)
    pipeline.write_all(cfg_scan)
    text = (cfg_scan / "best.yaml").read_text()
    assert _body(text) == USER and "Nothing to change" in text


def test_best_yaml_when_your_settings_did_not_finish(cfg_scan):
    shutil.rmtree(cfg_scan / "trials" / "t01-b8-w0-fp32")
    pipeline.write_all(cfg_scan)
    text = (cfg_scan / "best.yaml").read_text()
    assert "batch: 16  # was 8: your settings' trial t01-b8-w0-fp32 did not finish (no result)" in text


def test_best_yaml_without_cfg_is_unchanged(cpu_scan_copy):
    pipeline.write_all(cpu_scan_copy)
    best = _body((cpu_scan_copy / "best.yaml").read_text())
    assert list(best) == [
        *"model data imgsz batch workers amp cache deterministic compile device optimizer".split(),
    ]
    assert best["deterministic"] is True and best["compile"] is False  # the recorded scan varied neither


@pytest.mark.slow
def test_real_scan_from_a_config(tmp_path, tiny_data):
    """A real grid scan started from a config: its arguments reach Ultralytics in every trial, best.yaml is it."""
    user = {
        "model": "yolo11n.yaml",
        "data": str(tiny_data),
        "imgsz": 64,
        "epochs": 50,
        "batch": 8,
        "workers": 0,
        "optimizer": "SGD",
        "lr0": 0.02,
        "mosaic": 0.5,
        "val": True,
        "close_mosaic": 5,
        "project": "mine",
    }
    cfg = write_cfg(tmp_path, yaml.safe_dump(user, sort_keys=False))
    out = tmp_path / "s"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "yoloprof"),
            *"scan --device cpu --nproc 2 --cfg".split(),
            str(cfg),
            *"--strategy grid --batch 4 --steps 3 --warmup 1 --no-ceilings --no-defaults --precision off --out".split(),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "held in every trial: lr0, mosaic" in proc.stdout
    meta = json.loads((out / "scan.json").read_text())
    assert meta["train_cfg"] == str(cfg) and meta["baselines"]["your settings"] == "t01-b8-w0-fp32"
    assert meta["optimizer"] == "SGD" and meta["imgsz"] == 64
    for spec in meta["specs"]:
        assert spec["overrides"] == {"lr0": 0.02, "mosaic": 0.5}
        assert (spec["optimizer"], spec["optimizer_iterations"]) == ("SGD", None)  # the config's, as named
        args = yaml.safe_load((out / "trials" / spec["trial_id"] / "ultralytics" / "args.yaml").read_text())
        assert (args["lr0"], args["mosaic"], args["val"], args["close_mosaic"], args["epochs"]) == (
            0.02,
            0.5,
            False,
            0,
            1000,
        )
        assert args["batch"] == spec["knobs"]["batch"] and args["project"] != "mine"
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert list(best) == list(user) and {k: v for k, v in best.items() if k != "batch"} == {
        k: v for k, v in user.items() if k != "batch"
    }
