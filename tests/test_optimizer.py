"""The optimizer a trial runs: Ultralytics' `auto` resolved for the planned run, per trial; a name the user gave
as is; what best.yaml, the terminal and the report say about it. Fast: no trial is launched."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from yoloprof.probes import environment
from yoloprof import pipeline
from yoloprof.analysis import optimizer as optim
from yoloprof.errors import UsageError
from yoloprof.records import Knobs, OptimizerPlan, ScanMeta, read_json, write_json
from yoloprof.scan import ceilings, orchestrate, resume
from yoloprof.search import plan, usercfg

CPU_2 = plan.Hardware("cpu", 2, [], 16, 0)
COCO = optim.plan("auto", images=118287, epochs=100)


def knobs(batch: int) -> Knobs:
    return Knobs(batch, 0, False, False, "off", "default")


def test_auto_picks_by_the_planned_runs_iterations_per_batch():
    # COCO at batch 64 for 100 epochs: ceil(118287 / 64) * 100 = 184,900 iterations
    assert optim.for_batch(COCO, 64) == ("MuSGD", 184900)
    assert optim.for_batch(COCO, 16) == ("MuSGD", 184900)  # below nbs the iterations are nbs's
    # the built-in dataset: 512 images, ceil(512 / 64) * 100 = 800
    assert optim.for_batch(optim.plan("auto", images=512, epochs=100), 16) == ("AdamW", 800)
    # a larger batch means fewer iterations: 20,000 images, 100 epochs
    mid = optim.plan("auto", images=20000, epochs=100)
    assert optim.for_batch(mid, 64) == ("MuSGD", 31300) and optim.for_batch(mid, 512) == ("AdamW", 4000)
    assert optim.for_batch(COCO, 512) == ("MuSGD", 23200)
    # the threshold is Ultralytics' `iterations > 10000`; nbs from the config counts as the batch's floor
    assert optim.for_batch(optim.plan("auto", images=64, epochs=10000), 8)[0] == "AdamW"
    assert optim.for_batch(optim.plan("auto", images=64, epochs=10001), 8)[0] == "MuSGD"
    assert optim.for_batch(optim.plan("auto", images=20000, epochs=100, nbs=256), 64) == ("AdamW", 7900)


def test_a_named_optimizer_is_used_as_is_for_every_trial():
    named = optim.plan("SGD", images=118287, epochs=100, source="--optimizer")
    assert [optim.for_batch(named, b) for b in (8, 64, 4096)] == [("SGD", None)] * 3
    assert optim.for_batch("AdamW", 64) == ("AdamW", None)  # a bare name: every trial, as before
    with pytest.raises(ValueError, match="needs the planned run"):
        optim.for_batch("auto", 64)  # never a spec that says auto: a trial would pick for its own few steps


def test_where_the_optimizer_comes_from():
    assert usercfg.optimizer_asked(None, {}) == ("auto", "Ultralytics' default")
    assert usercfg.optimizer_asked(None, {"optimizer": "Adam"}) == ("Adam", "your config")
    assert usercfg.optimizer_asked(None, {"optimizer": "AUTO"}) == ("auto", "your config")
    assert usercfg.optimizer_asked("sgd", {"optimizer": "SGD"}) == (
        "SGD",
        "--optimizer",
    )  # the flag wins; as spelt by UL
    with pytest.raises(UsageError, match="no optimizer 'Lion'"):
        usercfg.optimizer_asked(None, {"optimizer": "Lion"})
    req = orchestrate.ScanRequest(command=["yoloprof", "scan"])
    assert req.optimizer == "auto" and usercfg.optimizer_flag(req) is None  # the default is no choice of the user's
    req = orchestrate.ScanRequest(optimizer="auto", command=["yoloprof", "scan", "--optimizer", "auto"])
    assert usercfg.optimizer_flag(req) == "auto"


def test_the_configs_fraction_and_nbs_count_as_ultralytics_counts_them():
    assert optim.trained_images(1000, None) == optim.trained_images(1000, 1.0) == 1000
    assert optim.trained_images(1000, 0.25) == 250 and optim.trained_images(1000, 100) == 100
    assert optim.trained_images(1000, [0.5, 1.0]) == 500  # per split: train's
    p = usercfg.optimizer_plan(None, {"fraction": 0.1, "nbs": 128}, images=118287, epochs=100, nbs=128)
    assert p == OptimizerPlan("auto", "Ultralytics' default", 11829, 100, 128)
    assert optim.for_batch(p, 64) == ("AdamW", 9300)  # ceil(11829 / 128) * 100


def test_every_trial_and_its_compute_probe_get_the_pick_for_their_global_batch():
    mid = optim.plan("auto", images=20000, epochs=100)
    axes = plan.Axes([64, 1024], [0], [False], [False], ["off"], ["default"])
    grid = plan.specs(
        plan.Plan(axes, [knobs(64), knobs(1024)]),
        CPU_2,
        model="m",
        data="/d",
        imgsz=64,
        optimizer=mid,
        warmup=1,
        steps=3,
    )
    assert [(s.knobs.batch, s.optimizer, s.optimizer_iterations) for s in grid] == [
        (64, "MuSGD", 31300),
        (1024, "AdamW", 2000),
    ]
    one = plan.spec_for(knobs(1024), 3, CPU_2, model="m", data="/d", imgsz=64, optimizer=mid, warmup=1, steps=3)
    assert (one.optimizer, one.optimizer_iterations) == ("AdamW", 2000)
    # the compute probe runs batch 32 and 512 on one rank for the 2-rank trials of global batch 64 and 1024
    probe = ceilings.compute_specs(
        CPU_2, [64, 1024], [False], model="m", data="/d", imgsz=64, optimizer=mid, warmup=1, steps=3
    )
    assert [(s.knobs.batch, s.optimizer, s.optimizer_iterations) for s in probe] == [
        (32, "MuSGD", 31300),
        (512, "AdamW", 2000),
    ]
    # scaling: the 1-rank trial of the same batch per rank has a smaller global batch, so its own pick
    scaled = plan.specs(
        plan.Plan(axes, [knobs(1024)]),
        CPU_2,
        model="m",
        data="/d",
        imgsz=64,
        optimizer=mid,
        warmup=1,
        steps=3,
        world_sizes=[1, 2],
    )
    assert [(s.knobs.batch, s.optimizer) for s in scaled] == [(512, "AdamW"), (1024, "AdamW")]
    named = plan.specs(
        plan.Plan(axes, [knobs(64)]),
        CPU_2,
        model="m",
        data="/d",
        imgsz=64,
        optimizer=optim.plan("SGD", images=20000, epochs=100),
        warmup=1,
        steps=3,
    )
    assert (named[0].optimizer, named[0].optimizer_iterations) == ("SGD", None)


def test_a_trial_builds_autos_pick_through_auto():
    from yoloprof.worker.trainer import trial_overrides

    mid = optim.plan("auto", images=20000, epochs=100)
    picked = plan.spec_for(knobs(64), 1, CPU_2, model="m", data="/d", imgsz=64, optimizer=mid, warmup=1, steps=3)
    assert trial_overrides(picked, "/p")["optimizer"] == "auto"  # with the planned run's iterations (below)
    named = dataclasses.replace(picked, optimizer="SGD", optimizer_iterations=None)
    assert trial_overrides(named, "/p")["optimizer"] == "SGD"


@pytest.mark.parametrize("iterations,built", [(31300, "MuSGD"), (2000, "AdamW")])
def test_the_trainer_hands_auto_the_planned_runs_iterations(iterations, built):
    """ScanMixin.build_optimizer on a real model: Ultralytics' own auto decides, from the spec's iterations, not
    from the trial's 1000 epochs, and sets its own lr0 (MuSGD 0.01; AdamW's fit to the classes)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from yoloprof.worker.trainer import ScanTrainer

    spec = plan.spec_for(
        knobs(64),
        1,
        CPU_2,
        model="m",
        data="/d",
        imgsz=64,
        warmup=1,
        steps=3,
        optimizer=optim.plan("auto", images=20000 if built == "MuSGD" else 2000, epochs=100),
    )
    t = ScanTrainer.__new__(ScanTrainer)  # no data, no process group: only the optimizer is built
    t.spec, t.args, t.data = spec, get_cfg(overrides={"optimizer": "auto"}), {"nc": 2}
    model = DetectionModel(str(Path(__file__).parent / "fixtures" / "tiny-detect.yaml"), nc=2, verbose=False)
    opt = t.build_optimizer(model, name="auto", lr=0.01, momentum=0.937, decay=5e-4, iterations=1000)  # a trial's
    assert type(opt).__name__ == built == spec.optimizer and t.args.optimizer == built
    assert t.args.lr0 == (0.01 if built == "MuSGD" else round(0.002 * 5 / (4 + 2), 6))  # auto's, not lr0's 0.01


# -- best.yaml ------------------------------------------------------------------------------------------------


def _auto_scan(folder, asked="auto", source=optim.DEFAULT_SOURCE, epochs=100):
    """The recorded CPU scan (512 images, batches 8 and 16) as if it had resolved `asked` for its run."""
    meta = pipeline.load_meta(folder)
    meta.optimizer = asked
    meta.optimizer_plan = optim.plan(asked, images=meta.dataset.train_images, epochs=epochs, source=source)
    meta.run_plan.epochs = epochs
    write_json(folder / "scan.json", meta)
    return meta


def test_best_yaml_leaves_auto_to_ultralytics_and_says_what_it_picks(cpu_scan_copy):
    from ultralytics.cfg import get_cfg

    _auto_scan(cpu_scan_copy)
    out = pipeline.write_all(cpu_scan_copy)
    text = (cpu_scan_copy / "best.yaml").read_text()
    best = yaml.safe_load(text)
    assert "optimizer" not in best  # plain `yolo train` picks auto itself: the pick the trials were given
    get_cfg(overrides=best)
    assert (
        f"# optimizer: not set, so Ultralytics' auto picks it: AdamW for this run (100 epochs of 512 images at "
        f"batch {out.best.knobs.batch}: 800 iterations <= 10,000;"
    ) in text
    # these recorded trials ran SGD (recorded before auto was resolved): the line says that is not this run's step
    assert "The trials ran SGD: its optimizer step is not the one this run takes" in text
    assert "optimizer" not in (cpu_scan_copy / "best.sh").read_text()
    html = (cpu_scan_copy / "report.html").read_text()
    assert "auto -&gt; AdamW (Ultralytics&#39; pick for 100 epochs of 512 images at batches 8, 16" in html
    assert "optimizer (SGD)" in html  # the per-rank phase column names the step it timed


def best_yaml(folder) -> str:
    """best.yaml as the scan writes it (without rendering the whole report)."""
    from yoloprof.reports import config_files

    out = pipeline.collect(folder)
    config_files.write(folder, out.meta, out.best, out.results)
    return (folder / "best.yaml").read_text()


def test_best_yaml_writes_the_optimizer_the_user_named(cpu_scan_copy):
    from ultralytics.cfg import get_cfg
    from yoloprof.reports.html import optimizer_text

    meta = _auto_scan(cpu_scan_copy, "AdamW", "--optimizer")
    text = best_yaml(cpu_scan_copy)
    best = yaml.safe_load(text)
    assert best["optimizer"] == "AdamW" and "not set" not in text
    get_cfg(overrides=best)
    assert optimizer_text(meta, pipeline.collect(cpu_scan_copy).results) == "AdamW (--optimizer); the trials ran SGD"


def test_best_yaml_of_an_earlier_scan_keeps_the_optimizer_it_pinned(cpu_scan_copy):
    text = best_yaml(cpu_scan_copy)  # scan.json from before optimizer_plan: SGD was pinned and timed
    assert yaml.safe_load(text)["optimizer"] == "SGD" and "not set" not in text


def test_best_yaml_from_a_config_keeps_the_users_optimizer(cpu_scan_copy):
    meta = _auto_scan(cpu_scan_copy, "Adam", "your config")
    meta.train_cfg, meta.train_cfg_args = "/home/me/c.yaml", {"batch": 16, "optimizer": "Adam", "lr0": 0.001}
    write_json(cpu_scan_copy / "scan.json", meta)
    text = best_yaml(cpu_scan_copy)
    assert yaml.safe_load(text)["optimizer"] == "Adam" and "not set" not in text
    # no optimizer in the config: none written, and the header says which one Ultralytics picks
    meta = _auto_scan(cpu_scan_copy, "auto", optim.DEFAULT_SOURCE)
    meta.train_cfg, meta.train_cfg_args = "/home/me/c.yaml", {"batch": 16, "lr0": 0.001}
    write_json(cpu_scan_copy / "scan.json", meta)
    text = best_yaml(cpu_scan_copy)
    assert "optimizer" not in yaml.safe_load(text) and "# optimizer: not set, so Ultralytics' auto picks it" in text
    # named with --optimizer only: written, since plain `yolo train` would otherwise pick another
    meta = _auto_scan(cpu_scan_copy, "SGD", "--optimizer")
    meta.train_cfg, meta.train_cfg_args = "/home/me/c.yaml", {"batch": 16, "lr0": 0.001}
    write_json(cpu_scan_copy / "scan.json", meta)
    text = best_yaml(cpu_scan_copy)
    assert yaml.safe_load(text) == {"batch": 16, "lr0": 0.001, "optimizer": "SGD"}
    assert "optimizer: SGD  # from --optimizer" in text


def test_re_priced_epochs_that_change_autos_pick_are_said(cpu_scan_copy):
    _auto_scan(cpu_scan_copy, epochs=20000)  # 8 x 20,000 iterations: the trials would have run MuSGD
    pipeline.replan(cpu_scan_copy, epochs=100)
    meta = pipeline.load_meta(cpu_scan_copy)
    assert meta.optimizer_plan.epochs == 20000  # what the trials were resolved for stays
    text = best_yaml(cpu_scan_copy)
    assert "picks it: AdamW for this run (100 epochs" in text and "scan again with --epochs 100" in text


# -- the scan: terminal, scan.json, --resume --------------------------------------------------------------------


def fake_env():
    from yoloprof.records import Environment

    return Environment(
        "h",
        "linux",
        "3.11",
        16,
        64000.0,
        "2.14.1",
        "8.4.190",
        None,
        None,
        None,
        [],
        ["batch", "workers", "optimizer"],
        {},
    )


@pytest.mark.parametrize(
    "extra,said,picks",
    [
        (
            [],
            "optimizer: auto -> AdamW (Ultralytics' pick for 100 epochs of 16 images at batches 4, 8: 100 iterations "
            "<= 10,000)",
            ["AdamW", "AdamW"],
        ),
        (
            ["--epochs", "10001"],
            "auto -> MuSGD (Ultralytics' pick for 10001 epochs of 16 images at batches 4, 8: "
            "10,001 iterations > 10,000)",
            ["MuSGD", "MuSGD"],
        ),
        (["--optimizer", "sgd"], "optimizer: SGD (--optimizer)", ["SGD", "SGD"]),
    ],
)
def test_the_scan_resolves_says_and_keeps_its_choice(extra, said, picks, tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env())
    seen = {}

    def finish(out, meta, ctx, req, console, started=None):
        seen.update(ctx=ctx, req=req)
        return None, out, 0

    monkeypatch.setattr(orchestrate, "finish", finish)
    argv = ["--device", "cpu", "--data", str(tiny_data), "--batch", "4,8", "--workers", "0", "--no-defaults", *extra]
    opt = extra[extra.index("--optimizer") + 1] if "--optimizer" in extra else "auto"
    req = orchestrate.ScanRequest(
        device="cpu",
        data=str(tiny_data),
        batch="4,8",
        workers="0",
        no_defaults=True,
        out=str(tmp_path / "s"),
        optimizer=opt,
        command=["yoloprof", "scan", *argv],
        epochs=int(extra[1]) if "--epochs" in extra else None,
    )
    buf = io.StringIO()
    orchestrate.run(req, Console(file=buf, width=300))
    assert said in buf.getvalue()
    meta = read_json(tmp_path / "s" / "scan.json", ScanMeta)
    assert [s.optimizer for s in meta.specs] == picks
    assert meta.optimizer == ("SGD" if "--optimizer" in extra else "auto")  # what was asked, not what it resolved to
    assert meta.optimizer_plan == seen["ctx"].optimizer
    # --resume resolves the saved choice again, the same way, for the trials it still runs
    resume.resume(
        str(tmp_path / "s"),
        orchestrate.ScanRequest(command=["yoloprof", "scan", "--resume"]),
        Console(file=io.StringIO()),
    )
    ctx, again = seen["ctx"], seen["req"]
    assert ctx.optimizer == meta.optimizer_plan and again.optimizer == meta.optimizer
    respec = plan.spec_for(
        meta.specs[0].knobs, 1, ctx.hw, model="m", data="/d", imgsz=64, optimizer=ctx.optimizer, warmup=1, steps=3
    )
    assert (respec.optimizer, respec.optimizer_iterations) == (
        meta.specs[0].optimizer,
        meta.specs[0].optimizer_iterations,
    )


def test_resume_of_an_earlier_scan_keeps_its_pinned_optimizer(cpu_scan_copy, monkeypatch):
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: fake_env())
    seen = {}
    monkeypatch.setattr(orchestrate, "finish", lambda out, meta, ctx, req, console, started=None: seen.update(ctx=ctx))
    resume.resume(
        str(cpu_scan_copy),
        orchestrate.ScanRequest(command=["yoloprof", "scan", "--resume"]),
        Console(file=open(os.devnull, "w")),
    )
    assert seen["ctx"].optimizer == "SGD"
