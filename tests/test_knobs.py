"""The knobs beyond the five (amp bf16, compile, deterministic, channels_last): planning, records, analysis
and outputs, on hand-written results with round numbers. The real CPU scan is in test_knobs_cpu.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from yoloprof.analysis import advice, aggregate, epoch, tradeoffs
from yoloprof.analysis.ranking import rank_trials
from yoloprof.errors import UsageError
from yoloprof.records import (
    DatasetInfo,
    GpuInfo,
    Knobs,
    RankRecords,
    RunPlan,
    StepSample,
    TrialResult,
    from_dict,
    to_dict,
)
from yoloprof.scan import request
from yoloprof.search import baselines, plan
from yoloprof.search.space import auto_space
from yoloprof.search.strategy import ORDER

CPU2 = plan.Hardware("cpu", 2, [], cpu_count=2, gpus_on_machine=0)
GPU2 = plan.Hardware("cuda", 2, [0, 1], cpu_count=32, gpus_on_machine=2, bf16=True)
V100 = plan.Hardware("cuda", 2, [0, 1], cpu_count=32, gpus_on_machine=2, bf16=False)
BASE = Knobs(16, 0, False, False, "off", "default")


# -- planning ---------------------------------------------------------------------------------------


def test_flags_parse_every_value_ultralytics_takes():
    assert plan.parse_amp("on,off,bf16") == [True, False, "bf16"]
    assert plan.parse_amp("fp16,fp32") == [True, False]
    assert plan.parse_compile("off,on,max-autotune-no-cudagraphs") == ["off", "default", "max-autotune-no-cudagraphs"]
    with pytest.raises(UsageError, match="--compile 'fast' is not one of"):
        plan.parse_compile("off,fast")
    with pytest.raises(UsageError, match="names the same setting twice"):
        plan.parse_compile("on,default")
    axes = request.parse_axes(request.ScanRequest(deterministic="on,off", compile="off,default", channels_last="off"))
    assert (axes["deterministic"], axes["compile"], axes["channels_last"]) == (
        [True, False],
        ["off", "default"],
        [False],
    )


def test_cpu_grid_runs_deterministic_and_compile_and_drops_the_gpu_only_values_with_reasons():
    given = {
        "batch": [16],
        "workers": [0],
        "amp": [True, False, "bf16"],
        "deterministic": [True, False],
        "compile": ["off", "default"],
        "channels_last": [True, False],
    }
    p = plan.make_plan(CPU2, given)
    assert len(p.knobs) == 4  # deterministic x compile; amp and channels_last cannot vary on CPU
    assert {(k.deterministic, k.compile) for k in p.knobs} == {
        (True, "off"),
        (True, "default"),
        (False, "off"),
        (False, "default"),
    }
    assert all(k.amp is False and k.channels_last for k in p.knobs)
    said = " | ".join(p.dropped)
    assert "amp on: AMP needs a GPU" in said and "amp bf16: AMP needs a GPU" in said
    assert "channels_last off: Ultralytics applies NHWC on CUDA only" in said
    ids = [plan.trial_id(i + 1, k) for i, k in enumerate(p.knobs)]
    assert ids == [
        "t01-b16-w0-fp32",
        "t02-b16-w0-fp32-compile",
        "t03-b16-w0-fp32-nondet",
        "t04-b16-w0-fp32-nondet-compile",
    ]


def test_gpu_grid_keeps_bf16_and_nhwc_where_they_can_run():
    given = {
        "batch": [32],
        "workers": [8],
        "amp": [True, "bf16"],
        "channels_last": [True, False],
        "compile": ["off", "reduce-overhead"],
    }
    p = plan.make_plan(GPU2, given)
    assert len(p.knobs) == 8 and not p.dropped
    k = Knobs(32, 8, "bf16", True, "off", "default", False, "reduce-overhead", False)
    assert plan.trial_id(3, k) == "t03-b32-w8-bf16-pin-nondet-compile-reduce-nchw"
    old = plan.make_plan(V100, given)
    assert {k.amp for k in old.knobs} == {True} and any("no native bfloat16" in d for d in old.dropped)
    blocked = dataclasses.replace(GPU2, compile_blocker="inductor needs Triton for GPU kernels and it is not installed")
    p = plan.make_plan(blocked, given)
    assert {k.compile for k in p.knobs} == {"off"} and any(
        "compile reduce-overhead: inductor needs Triton" in d for d in p.dropped
    )


def test_environment_facts_decide_bf16_and_compile():
    gpus = [GpuInfo(0, "A100", 80000.0, [8, 0]), GpuInfo(1, "V100", 32000.0, [7, 0])]
    fake = type("Env", (), {"gpus": gpus, "cxx_compiler": None, "triton": "3.1.0"})()
    assert request.bf16(fake, [0]) is True and request.bf16(fake, [0, 1]) is False
    assert request.bf16(type("Env", (), {"gpus": [GpuInfo(0, "x", None)]})(), [0]) is None  # old record: unknown
    assert "C++ compiler" in request.compile_blocker(fake, "cpu") and request.compile_blocker(fake, "cuda") is None


@pytest.mark.parametrize(
    "flags, cfg, looked",
    [
        ({}, {}, False),  # no trial compiles: inductor's import (seconds) is skipped
        ({"compile": "off"}, {}, False),
        ({"compile": "off,default"}, {}, True),
        ({"baseline": "batch=8,compile=default"}, {}, True),
        ({}, {"compile": True}, True),  # your config compiles
    ],
)
def test_a_cpu_scan_looks_for_the_cpp_compiler_only_when_a_trial_may_compile(
    flags, cfg, looked, tmp_path, tiny_data, monkeypatch
):
    import os

    import yaml
    from rich.console import Console

    from yoloprof.probes import environment
    from yoloprof.scan import orchestrate

    calls = []
    env = environment.Environment("h", "linux", "3.11", 2, 24000.0, "2.14.1", "8.4", None, None, None, [], [], {})
    monkeypatch.setattr(environment, "collect", lambda env_vars=None: env)
    monkeypatch.setattr(environment, "cxx_compiler", lambda: calls.append(1) or "g++")
    extra = {}
    if cfg:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": str(tiny_data), **cfg}))
        extra["cfg"] = str(tmp_path / "c.yaml")
    else:
        extra["data"] = str(tiny_data)
    req = orchestrate.ScanRequest(device="cpu", strategy="grid", batch="4", **flags, **extra, command=["yoloprof"])
    ctx = orchestrate.prepare(req, Console(file=open(os.devnull, "w")))
    assert (len(calls) == 1, ctx.env.cxx_compiler) == (looked, "g++" if looked else None)
    if looked:
        assert ctx.hw.compile_blocker is None  # g++ found: the compile trials are planned


def test_auto_space_adds_the_knobs_where_they_can_matter():
    cpu = auto_space(CPU2)
    assert cpu.values["deterministic"] == [True, False] and cpu.values["compile"] == ["off"]
    assert cpu.values["channels_last"] == [True] and cpu.values["amp"] == [False]
    reasons = {d.knob: d.reason for d in cpu.dropped}
    assert "on CPU its first steps compile for minutes" in reasons["compile"]
    asked = auto_space(CPU2, {"compile": ["off", "default"]})
    assert asked.values["compile"] == ["off", "default"]  # the user asked: it runs
    gpu = auto_space(V100)
    assert gpu.values["amp"] == [True, False] and gpu.values["compile"] == ["off", "default"]
    assert ORDER["compute"][:4] == ("amp", "compile", "deterministic", "channels_last")  # compute-bound: these first


def test_baselines_and_configs_take_the_new_knobs():
    k = baselines.parse_baseline("amp=bf16,compile=on,deterministic=off,channels_last=off", GPU2)
    assert (k.amp, k.compile, k.deterministic, k.channels_last) == ("bf16", "default", False, False)
    on_cpu = baselines.parse_baseline("compile=default,deterministic=off", CPU2)
    assert (on_cpu.compile, on_cpu.deterministic, on_cpu.amp) == ("default", False, False)
    cfg = baselines.from_cfg({"batch": 16, "amp": "bf16", "compile": True, "deterministic": False}, GPU2, "t.yaml")
    assert (cfg.amp, cfg.compile, cfg.deterministic, cfg.channels_last) == ("bf16", "default", False, True)
    with pytest.raises(UsageError, match="compile: fast; give false, true or a mode"):
        baselines.from_cfg({"compile": "fast"}, GPU2, "t.yaml")
    blocked = dataclasses.replace(CPU2, compile_blocker="no C++ compiler")
    with pytest.raises(UsageError, match="compile default in your settings cannot run here: no C\\+\\+ compiler"):
        baselines.parse_baseline("compile=default", blocked)


def test_records_round_trip_and_old_records_read_as_ultralytics_defaults():
    k = Knobs(32, 8, "bf16", True, "off", "default", False, "max-autotune-no-cudagraphs", False)
    assert from_dict(Knobs, json.loads(json.dumps(to_dict(k)))) == k
    old = from_dict(
        Knobs, {"batch": 16, "workers": 0, "amp": True, "pin_memory": False, "cache": "off", "nccl": "default"}
    )
    assert (old.deterministic, old.compile, old.channels_last, old.precision) == (True, "off", True, "amp")
    assert k.extras() == ["deterministic off", "compile max-autotune-no-cudagraphs", "channels_last off"]


def test_a_compile_trial_gets_a_launch_of_its_own():
    spec = plan.spec_for(
        dataclasses.replace(BASE, compile="default"),
        2,
        CPU2,
        model="m",
        data="d",
        imgsz=64,
        optimizer="SGD",
        warmup=5,
        steps=20,
    )
    twin = plan.spec_for(BASE, 3, CPU2, model="m", data="d", imgsz=64, optimizer="SGD", warmup=5, steps=20)
    again = plan.spec_for(BASE, 4, CPU2, model="m", data="d", imgsz=64, optimizer="SGD", warmup=5, steps=20)
    assert twin.env_key == again.env_key and spec.env_key != twin.env_key


# -- what ran, read back from torch ------------------------------------------------------------------


def test_the_worker_reads_back_compile_and_memory_format():
    from yoloprof.worker.trainer import is_channels_last, is_compiled

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
    assert not is_compiled(net) and not is_channels_last(net)
    assert is_compiled(torch.compile(net))  # lazy: nothing compiles until a forward pass
    assert is_channels_last(net.to(memory_format=torch.channels_last))


# -- analysis ----------------------------------------------------------------------------------------


def step(i: int, ms: float, warmup: bool) -> StepSample:
    return StepSample(
        rank=0,
        step=i,
        epoch=0,
        warmup=warmup,
        t_end_s=float(i),
        images=8,
        step_ms=ms,
        data_wait_ms=0.0,
        h2d_ms=0.0,
        forward_ms=0.0,
        backward_ms=0.0,
        comm_wait_ms=0.0,
        optimizer_ms=0.0,
        other_ms=0.0,
        optimizer_stepped=True,
    )


def test_warmup_extra_is_the_slowest_ranks_warmup_beyond_as_many_steady_steps():
    r0 = RankRecords(
        0, None, [step(0, 20_000.0, True), step(1, 300.0, True)] + [step(i, 100.0, False) for i in range(2, 9)], None
    )
    r1 = RankRecords(
        1, None, [step(0, 21_000.0, True), step(1, 100.0, True)] + [step(i, 100.0, False) for i in range(2, 9)], None
    )
    extra, n = aggregate.warmup_extra([r0, r1])
    assert n == 2 and extra == pytest.approx((21_000 + 100 - 2 * 100) / 1e3)  # rank 1: 20.9 s
    assert aggregate.warmup_extra([RankRecords(0, None, [step(0, 100.0, False)], None)]) == (None, 0)


def result(tid: str, k: Knobs, img: float, warm: float, low: float = None, high: float = None, **kw) -> TrialResult:
    return TrialResult(
        tid,
        "ok",
        k,
        2,
        "cpu",
        img_per_s=img,
        img_per_s_ci_low=low or 0.98 * img,
        img_per_s_ci_high=high or 1.02 * img,
        img_per_s_ci_method="batch means",
        wall_s=30.0,
        warmup_extra_s=warm,
        step_ms_p50=1000 * k.batch / img,
        **kw,
    )


def test_compile_pays_for_itself_after_its_one_time_cost_is_won_back():
    off = result("t01", BASE, 100.0, 1.0)
    on = result("t02", dataclasses.replace(BASE, compile="default"), 125.0, 61.0)
    (p,) = tradeoffs.compile_payoffs([off, on], images_per_epoch=512)
    assert p.one_time_s == pytest.approx(60.0)  # 61 s against the twin's 1 s
    # per image: 1/100 - 1/125 = 0.002 s saved; 60 s / 0.002 = 30,000 images = 58.6 epochs of 512
    assert p.break_even_images == pytest.approx(30_000) and p.break_even_epochs == pytest.approx(30_000 / 512)
    assert "pays for itself after 58.6 epochs" in p.text and "a shorter run is faster without it" in p.text
    flat = result("t03", dataclasses.replace(BASE, compile="default"), 101.0, 61.0, low=90.0, high=112.0)
    (q,) = tradeoffs.compile_payoffs([off, flat], images_per_epoch=512)
    assert q.break_even_images is None and "no faster steps beyond the noise" in q.text and "leave it off" in q.text


def test_the_run_counts_compile_once_and_a_short_run_is_recommended_uncompiled():
    off = result("t01", BASE, 100.0, 1.0, setup_s=2.0, batches_per_epoch=32)
    on = result("t02", dataclasses.replace(BASE, compile="default"), 125.0, 61.0, setup_s=2.0, batches_per_epoch=32)
    data = DatasetInfo("d.yaml", 512, 64, ["a"], True)
    preds = {r.trial_id: epoch.predict(r, None, data, RunPlan(epochs=10, close_mosaic=0)) for r in (off, on)}
    assert preds["t02"].compile_s == pytest.approx(61.0) and preds["t01"].compile_s is None
    assert preds["t02"].once_s == pytest.approx(preds["t01"].once_s + 61.0)
    ranking = rank_trials([off, on])
    assert ranking.recommended_trial_id == "t02"  # faster beyond the noise, per image
    swap = tradeoffs.short_run_swap(ranking, [off, on], preds)
    assert swap is not None and swap[0] == "t01" and "not won back" in swap[1]
    long = {r.trial_id: epoch.predict(r, None, data, RunPlan(epochs=300, close_mosaic=0)) for r in (off, on)}
    assert tradeoffs.short_run_swap(ranking, [off, on], long) is None  # 300 epochs win it back


def test_tied_trials_recommend_the_one_that_gives_up_nothing():
    a = result("t01", dataclasses.replace(BASE, deterministic=False), 101.0, 0.1, low=95.0, high=107.0)
    b = result("t02", BASE, 100.0, 0.1, low=94.0, high=106.0)
    rk = rank_trials([a, b])
    assert rk.fastest_trial_id == "t01" and rk.recommended_trial_id == "t02"
    assert "keeps deterministic training" in rk.recommendation_reason


def test_effects_read_from_the_default_and_say_what_the_change_gives_up():
    a = result("t01", BASE, 100.0, 0.1)
    b = result("t02", dataclasses.replace(BASE, deterministic=False), 120.0, 0.1)
    (e,) = advice.effects([b, a])
    assert (e.knob, e.before, e.after, e.from_trial) == ("deterministic", "on", "off", "t01")
    assert "gives up bit-reproducible runs" in e.text and e.beyond_noise
    c = result("t03", dataclasses.replace(BASE, amp=True), 150.0, 0.1)
    d = result("t04", dataclasses.replace(BASE, amp="bf16"), 160.0, 0.1)
    amp = [x for x in advice.effects([a, c, d]) if x.knob == "amp"]
    assert {(x.before, x.after) for x in amp} == {("off", "on"), ("off", "bf16"), ("on", "bf16")}
    assert "changes the numerics" in next(x.text for x in amp if (x.before, x.after) == ("on", "bf16"))


def test_compute_bound_suggests_the_untested_knobs_with_the_scan_that_tests_them():
    best = result("t01", BASE, 100.0, 0.1)
    flags = {u.flags for u in advice.untested(best, "compute", [best], "cuda", 8)}
    assert {"--deterministic on,off", "--compile off,default", "--amp on,bf16", "--amp off,on"} <= flags
    on_cpu = {u.flags for u in advice.untested(best, "compute", [best], "cpu", 2)}
    assert "--compile off,default" in on_cpu and not any(f.startswith("--amp") for f in on_cpu)


def test_trade_offs_name_what_each_non_default_value_gives_up():
    k = Knobs(32, 8, "bf16", True, "off", "default", False, "default", False)
    assert set(tradeoffs.trade_offs(k)) == {"amp", "deterministic", "compile", "channels_last"}
    assert tradeoffs.trade_offs(Knobs(32, 8, True, True, "off", "default")) == {}
    best = result("t02", dataclasses.replace(BASE, deterministic=False), 120.0, 0.1)
    notes = tradeoffs.config_notes([result("t01", BASE, 100.0, 0.1), best], best, 512)
    assert notes["deterministic"].startswith("gives up bit-reproducible runs")
    assert "measured: +20%" in notes["deterministic"] and "against t01" in notes["deterministic"]
    alone = tradeoffs.config_notes([best], best, 512)
    assert "no trial changed only deterministic" in alone["deterministic"]


def test_epoch_prediction_names_compile_as_missing_without_warmup_steps():
    on = result("t02", dataclasses.replace(BASE, compile="default"), 125.0, None, setup_s=2.0, batches_per_epoch=32)
    p = epoch.predict(on, None, DatasetInfo("d.yaml", 512, 64, ["a"], True), RunPlan(epochs=10, close_mosaic=0))
    assert p.compile_s is None and any("torch.compile's start-up: not measured" in m for m in p.parts_missing)


# -- the recorded real CPU scan: yolo11n, 2 gloo ranks, deterministic on,off x compile off,default -------


def test_recorded_scan_measures_compile_start_up_apart_and_recommends_what_gives_up_nothing(tmp_path):
    import shutil

    from ultralytics.cfg import get_cfg

    from conftest import FIXTURES
    from yoloprof import pipeline

    scan = tmp_path / "s"
    shutil.copytree(FIXTURES / "cpu-scan-knobs", scan)
    out = pipeline.write_all(scan)
    r = {x.trial_id: x for x in out.results}
    compiled = ["t02-b16-w0-fp32-compile", "t04-b16-w0-fp32-nondet-compile"]
    assert all(r[t].warmup_extra_s > 100 for t in compiled)  # yolo11n compiled cold on 2 cores: minutes
    assert all(r[t].warmup_extra_s < 1 for t in r if t not in compiled)
    pays = {p.trial_id: p for p in tradeoffs.compile_payoffs(out.results, out.meta.dataset.train_images)}
    assert {t: p.twin_id for t, p in pays.items()} == {
        compiled[0]: "t01-b16-w0-fp32",
        compiled[1]: "t03-b16-w0-fp32-nondet",
    }
    # on 2 gloo ranks compile gave no steady gain beyond the noise: it never pays, and the text says so
    assert all(p.break_even_images is None and "leave it off" in p.text for p in pays.values())
    p = out.predictions
    assert p[compiled[0]].compile_s == pytest.approx(r[compiled[0]].warmup_extra_s)
    assert p[compiled[0]].run_h * 3600 > p["t01-b16-w0-fp32"].run_h * 3600 + 200  # counted once in the run
    # the tied group's recommendation keeps determinism and compiles nothing, and says why
    assert out.ranking.recommended_trial_id == "t01-b16-w0-fp32"
    assert "keeps deterministic training" in out.ranking.recommendation_reason
    best = yaml_body(scan / "best.yaml")
    assert best["deterministic"] is True and best["compile"] is False
    get_cfg(overrides=best)
    html = (scan / "report.html").read_text()
    assert "start-up</b>" in html and "leave it off" in html and ">more</th>" in html and "compile default" in html


def yaml_body(path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_compare_pairs_only_the_same_configuration_across_scans():
    from yoloprof.analysis import compare

    plain, compiled = (
        result("t01", BASE, 100.0, 0.1),
        result("t01", dataclasses.replace(BASE, compile="default"), 100.0, 60.0),
    )
    old = result(
        "t01",
        from_dict(
            Knobs, {"batch": 16, "workers": 0, "amp": False, "pin_memory": False, "cache": "off", "nccl": "default"}
        ),
        100.0,
        0.1,
    )
    assert compare._key(plain) != compare._key(compiled) and compare._key(plain) == compare._key(old)
