"""Outputs rebuilt from the recorded real CPU scan: CSV, best.* (checked by Ultralytics), HTML."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import pytest
import yaml

from yoloprof import pipeline
from yoloprof.errors import UsageError
from yoloprof.records import write_json
from yoloprof.reports import config_files, csv_table, html

REQUIRED = [
    "trial_id",
    "status",
    "world_size",
    "batch",
    "workers",
    "amp",
    "pin_memory",
    "cache",
    "nccl",
    "img_per_s",
    "img_per_s_ci_low",
    "img_per_s_ci_high",
    "step_ms_p50",
    "step_ms_p90",
    "data_wait_frac",
    "comm_ms_p50",
    "comm_frac",
    "peak_mem_mib",
    "gpu_util_pct",
    "bottleneck",
    "position",
]


def test_report_dir_rebuilds_every_output(cpu_scan_copy):
    for name in ("results.csv", "report.html", "best.yaml", "best.env", "best.sh", "ranking.json"):
        (cpu_scan_copy / name).unlink(missing_ok=True)
    out = pipeline.write_all(cpu_scan_copy)
    for name in ("results.csv", "report.html", "best.yaml", "best.env", "best.sh", "ranking.json"):
        assert (cpu_scan_copy / name).is_file(), name
    rows = list(csv.DictReader((cpu_scan_copy / "results.csv").open()))
    assert list(rows[0])[: len(REQUIRED)] == REQUIRED
    assert len(rows) == len(out.meta.trial_ids)
    rates = [float(r["img_per_s"]) for r in rows]
    assert [int(r["position"]) for r in rows] == [1, 2, 3, 4] and rates == sorted(rates, reverse=True)
    assert all(r["gpu_util_pct"] == "" for r in rows)  # no GPU: empty, never 0
    assert {r["bottleneck"] for r in rows} <= {"input", "compute", "communication", "memory", "straggler"}
    ranking = json.loads((cpu_scan_copy / "ranking.json").read_text())
    # t03 (41.9 img/s, 95% 38.6-45.2) and t04 (39.9, 36.6-43.1) are tied; t03 is the fastest and uses no workers
    assert (
        ranking["best_trial_id"]
        == ranking["recommended_trial_id"]
        == ranking["fastest_trial_id"]
        == rows[0]["trial_id"]
    )
    assert ranking["tied"] == ["t03-b16-w0-fp32", "t04-b16-w2-fp32"] and ranking["run_to_run_rel"] is None
    assert "tied within ±11%" in ranking["recommendation_reason"]
    assert ranking["verdicts"][0]["uncertainty"] == "batch means within the run; run-to-run noise not measured"
    assert [r["tied_with_best"] for r in rows] == ["true", "true", "false", "false"]
    for r in rows:  # every interval brackets its figure
        assert float(r["img_per_s_ci_low"]) < float(r["img_per_s"]) < float(r["img_per_s_ci_high"])
    assert float(rows[0]["img_per_s_ci_low"]) == pytest.approx(38.600, abs=1e-3)
    assert float(rows[0]["img_per_s_ci_high"]) == pytest.approx(45.214, abs=1e-3)
    page = (cpu_scan_copy / "report.html").read_text()
    assert "41.9 (38.6-45.2)" in page and ">recommended<" in page and ">tied<" in page
    assert "recommending t03-b16-w0-fp32" in page


def test_best_yaml_is_accepted_by_ultralytics_get_cfg(cpu_scan_copy):
    from ultralytics.cfg import get_cfg

    out = pipeline.write_all(cpu_scan_copy)
    cfg = yaml.safe_load((cpu_scan_copy / "best.yaml").read_text())
    args = get_cfg(overrides=cfg)  # raises SyntaxError on any key Ultralytics does not accept
    k = out.best.knobs
    assert (args.batch, args.workers, args.amp, args.device) == (k.batch, k.workers, k.amp, "cpu")
    assert args.model == out.meta.model and args.data == out.meta.dataset.data
    env = (cpu_scan_copy / "best.env").read_text()
    assert re.search(r"^export OMP_NUM_THREADS=\d+$", env, re.M)
    assert "yolo train cfg=" in (cpu_scan_copy / "best.sh").read_text()


def test_unknown_cfg_keys_never_reach_best_yaml(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    meta = dataclasses.replace(
        out.meta,
        environment=dataclasses.replace(
            out.meta.environment,
            ultralytics_cfg_keys=[k for k in out.meta.environment.ultralytics_cfg_keys if k != "cache"],
        ),
    )
    cfg = config_files.best_config(meta, out.best)
    assert "cache" not in cfg.cfg and any("'cache'" in f for f in cfg.findings)


def test_nccl_preset_and_pin_memory_go_to_env_and_findings(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    meta = dataclasses.replace(out.meta, device="cuda", gpus=[0, 1])
    best = dataclasses.replace(out.best, knobs=dataclasses.replace(out.best.knobs, nccl="ring", pin_memory=False))
    cfg = config_files.best_config(meta, best)
    assert ("NCCL_ALGO", "Ring") in [(n, v) for n, v, _ in cfg.env]
    assert "pin_memory" not in cfg.cfg and any("pin_memory" in f for f in cfg.findings)
    assert cfg.cfg["device"] == "0,1"
    text = config_files.render_env(best, cfg)
    assert "export NCCL_ALGO=Ring" in text and "debugging variable" in text


def test_html_is_self_contained_and_escapes_user_strings(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    evil = '<script>alert("x")</script>'
    meta = dataclasses.replace(
        out.meta, model=f"{evil}.yaml", dataset=dataclasses.replace(out.meta.dataset, classes=[evil, "<b>car</b>"])
    )
    out = dataclasses.replace(out, meta=meta)
    page = html.render(out, config_files.best_config(meta, out.best), title=str(cpu_scan_copy))
    assert evil not in page and "&lt;script&gt;alert(" in page and "<b>car</b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a host
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # only in-page references
    assert page.count("<svg") >= 2  # throughput and breakdown figures inline


def test_report_on_a_folder_that_is_not_a_scan(tmp_path):
    with pytest.raises(UsageError, match="not a yoloprof scan folder"):
        pipeline.collect(tmp_path)
    (tmp_path / "scan.json").write_text('{"schema": 1, "yoloprof_version"')
    with pytest.raises(UsageError, match="corrupt or truncated"):
        pipeline.collect(tmp_path)
    write_json(tmp_path / "scan.json", {"schema": 99})
    with pytest.raises(UsageError, match="schema 99"):
        pipeline.collect(tmp_path)


def test_csv_cells_are_empty_for_unmeasured_values(cpu_scan_copy):
    out = pipeline.collect(cpu_scan_copy)
    failed = dataclasses.replace(out.results[0], trial_id="tx", status="error", img_per_s=None, error="boom")
    from yoloprof.analysis.ranking import rank_trials

    results = out.results + [failed]
    text = csv_table.render(results, rank_trials(results))
    last = list(csv.DictReader(text.splitlines()))[-1]
    assert last["trial_id"] == "tx" and last["position"] == "" and last["img_per_s"] == "" and last["error"] == "boom"


def _scaled(r, k: float, **kw):
    """A trial whose throughput (and its interval) is k times r's."""
    return dataclasses.replace(
        r,
        img_per_s=r.img_per_s * k,
        img_per_s_ci_low=r.img_per_s_ci_low * k,
        img_per_s_ci_high=r.img_per_s_ci_high * k,
        **kw,
    )


def test_compare_finds_where_the_time_moved(cpu_scan_copy):
    from yoloprof.analysis.compare import compare

    a = pipeline.collect(cpu_scan_copy)
    faster = _scaled(a.best, 1.5, trial_id="tb", breakdown=dataclasses.replace(a.best.breakdown, data_wait_ms=1.0))
    b = dataclasses.replace(a, results=[faster], best=faster)
    c = compare(a, b)
    assert c.best_ratio == pytest.approx(1.5) and c.beyond_noise
    # both sides +-7.9% relative: the ratio's interval is 1.5 x exp(+-sqrt(2) log 1.079)
    assert c.best_ratio_low == pytest.approx(1.5 * 1.0789 ** -(2**0.5), rel=2e-3)
    assert c.best_ratio_low > 1.3 and c.best_ratio_high < 1.75
    assert c.phases[0].phase == "data_wait_ms" and c.phases[0].b_ms == 1.0 and c.phases[0].beyond_noise
    assert "is 1.50x best of A" in c.summary and "data wait" in c.summary and "beyond the noise" in c.summary
    assert len(c.pairs) == 1 and c.pairs[0].ratio == pytest.approx(1.5) and c.pairs[0].beyond_noise
    assert c.env_changes == []
    # the same configuration with another optimizer step (auto's MuSGD against a pinned SGD) is a change to name
    musgd = dataclasses.replace(faster, optimizer="MuSGD")
    assert compare(a, dataclasses.replace(b, results=[musgd], best=musgd)).env_changes == [
        ("optimizer", "SGD", "MuSGD")
    ]


def test_compare_of_identical_scans_is_no_measurable_change(cpu_scan_copy, tmp_path):
    import shutil

    from yoloprof.analysis.compare import compare

    other = tmp_path / "again"
    shutil.copytree(cpu_scan_copy, other)
    a, b = pipeline.collect(cpu_scan_copy), pipeline.collect(other)
    c = compare(a, b)
    assert c.best_ratio == pytest.approx(1.0) and not c.beyond_noise
    assert c.best_ratio_low == pytest.approx(0.90, abs=0.01) and c.best_ratio_high == pytest.approx(1.11, abs=0.01)
    assert c.summary.startswith("No measurable change") and "no phase of the step moved beyond the noise" in c.summary
    assert not any(m.beyond_noise for m in c.phases) and not any(p.beyond_noise for p in c.pairs)
    # a rerun 6% slower with data wait moved within its interval: still no measurable change
    t03 = b.best
    slower = _scaled(
        t03, 0.94, breakdown=dataclasses.replace(t03.breakdown, data_wait_ms=t03.breakdown.data_wait_ms * 1.02)
    )
    b2 = dataclasses.replace(b, results=[slower if r is t03 else r for r in b.results], best=slower)
    c = compare(a, b2)
    assert c.best_ratio == pytest.approx(0.94) and not c.beyond_noise and c.summary.startswith("No measurable change")
    assert "0.94x" in c.summary and "largest move" not in c.summary
    page = html.render_compare(c, "A", "B")
    assert "No measurable change" in page and "within noise" in page


def test_recorded_scan_with_failed_trials(tmp_path):
    import shutil

    from conftest import FIXTURES

    scan = tmp_path / "fail"
    shutil.copytree(FIXTURES / "cpu-scan-failures", scan)
    out = pipeline.write_all(scan)
    status = {r.trial_id: r.status for r in out.results}
    assert status == {
        "t01-b2-w0-fp32": "oom",
        "t02-b2-w1-fp32": "error",
        "t03-b4-w0-fp32": "skipped",
        "t04-b4-w1-fp32": "ok",
    }
    by = {r.trial_id: r for r in out.results}
    assert "can't allocate memory" in by["t01-b2-w0-fp32"].error
    assert (
        by["t02-b2-w1-fp32"].error.startswith("rank 1 killed by SIGKILL")
        and "torchrun then stopped" in by["t02-b2-w1-fp32"].error
    )
    assert by["t03-b4-w0-fp32"].error.startswith("oom at batch 2")
    verdicts = {v.trial_id: v for v in out.ranking.verdicts}
    assert verdicts["t01-b2-w0-fp32"].bottleneck == "memory" and verdicts["t04-b4-w1-fp32"].position == 1
    assert [v.position for v in out.ranking.verdicts] == [1, None, None, None]
    assert out.headline.endswith("3 of 4 trials did not finish.")
    rows = list(csv.DictReader((scan / "results.csv").open()))
    assert [r["img_per_s"] == "" for r in rows] == [False, True, True, True]
    page = (scan / "report.html").read_text()
    assert "can&#39;t allocate memory" in page and "oom at batch 2" in page


def test_recorded_scan_against_its_ceilings(cpu_scan_copy):
    from yoloprof.analysis import headroom

    out = pipeline.collect(cpu_scan_copy)
    c = out.ceilings
    assert c.loader and c.compute and c.allreduce and c.allreduce[0].status == "ok"
    assert [p.workers for p in c.loader.points] == [0, 2] and [p.batch for p in c.compute.points] == [4, 8]
    for r in out.results:
        v = headroom.against(r, c)
        point = next(p for p in c.compute.points if p.batch == r.knobs.batch // 2)
        assert v.compute_img_s == pytest.approx(point.img_per_s * 2)  # two ranks
        assert 0.2 < v.pipeline_eff < 1.0  # training reaches part of what the device alone can do, never more
        assert v.input_headroom > 1.0
    bw = headroom.achieved_bucket_busbw(out.best)
    assert [s for s, _ in bw] == out.best.bucket_sizes_bytes == [9306532, 1055104]
    probe = headroom.bucket_busbw(c.allreduce[0])
    assert set(probe) == {9306532, 1055104} and all(b < probe[s] for s, b in bw)  # contention in training
    tel = out.best.telemetry
    assert tel.gpu_status == "not measured: no GPU in this run" and tel.gpu_util_mean_pct is None
    assert 0 < tel.cpu_util_mean_pct <= 100 and tel.samples > 10


def test_recorded_scaling_scan(tmp_path):
    import shutil

    from conftest import FIXTURES
    from yoloprof.analysis import scaling

    scan = tmp_path / "scale"
    shutil.copytree(FIXTURES / "cpu-scan-scaling", scan)
    out = pipeline.write_all(scan)
    (g,) = scaling.groups(out.results)
    assert [p.world_size for p in g.points] == [1, 2] and g.settings.startswith("batch 4/rank")
    one, two = g.points
    assert one.speedup == 1.0 and two.speedup == pytest.approx(two.img_per_s / one.img_per_s)
    assert two.efficiency == pytest.approx(two.speedup / 2)
    r1 = next(r for r in out.results if r.world_size == 1)
    assert r1.comm_frac is None and r1.bucket_sizes_bytes == []  # one rank: no AllReduce, n/a not 0
    page = (scan / "report.html").read_text()
    assert "<h2>Scaling</h2>" in page and "speed-up" in page
