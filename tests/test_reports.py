"""Outputs rebuilt from the recorded real CPU scan: CSV, best.* (checked by Ultralytics), HTML."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import pytest
import yaml

from yoloprof import outputs
from yoloprof.errors import UsageError
from yoloprof.records import write_json
from reports import config_files, csv_table, html

REQUIRED = ["trial_id", "status", "world_size", "batch", "workers", "amp", "pin_memory", "cache", "nccl", "img_per_s",
            "step_ms_p50", "step_ms_p90", "data_wait_frac", "comm_ms_p50", "comm_frac", "peak_mem_mib",
            "gpu_util_pct", "bottleneck", "position"]  # fmt: skip


def test_report_dir_rebuilds_every_output(cpu_scan_copy):
    for name in ("results.csv", "report.html", "best.yaml", "best.env", "best.sh", "ranking.json"):
        (cpu_scan_copy / name).unlink(missing_ok=True)
    out = outputs.write_all(cpu_scan_copy)
    for name in ("results.csv", "report.html", "best.yaml", "best.env", "best.sh", "ranking.json"):
        assert (cpu_scan_copy / name).is_file(), name
    rows = list(csv.DictReader((cpu_scan_copy / "results.csv").open()))
    assert list(rows[0])[: len(REQUIRED)] == REQUIRED
    assert len(rows) == len(out.meta.trial_ids)
    rates = [float(r["img_per_s"]) for r in rows]
    assert [int(r["position"]) for r in rows] == [1, 2, 3, 4] and rates == sorted(rates, reverse=True)
    assert all(r["gpu_util_pct"] == "" for r in rows)  # no GPU: empty, never 0
    assert {r["bottleneck"] for r in rows} <= {"input", "compute", "communication", "memory", "straggler"}
    assert json.loads((cpu_scan_copy / "ranking.json").read_text())["best_trial_id"] == rows[0]["trial_id"]


def test_best_yaml_is_accepted_by_ultralytics_get_cfg(cpu_scan_copy):
    from ultralytics.cfg import get_cfg

    out = outputs.write_all(cpu_scan_copy)
    cfg = yaml.safe_load((cpu_scan_copy / "best.yaml").read_text())
    args = get_cfg(overrides=cfg)  # raises SyntaxError on any key Ultralytics does not accept
    k = out.best.knobs
    assert (args.batch, args.workers, args.amp, args.device) == (k.batch, k.workers, k.amp, "cpu")
    assert args.model == out.meta.model and args.data == out.meta.dataset.data
    env = (cpu_scan_copy / "best.env").read_text()
    assert re.search(r"^export OMP_NUM_THREADS=\d+$", env, re.M)
    assert "yolo train cfg=" in (cpu_scan_copy / "best.sh").read_text()


def test_unknown_cfg_keys_never_reach_best_yaml(cpu_scan_copy):
    out = outputs.collect(cpu_scan_copy)
    meta = dataclasses.replace(out.meta, environment=dataclasses.replace(
        out.meta.environment, ultralytics_cfg_keys=[k for k in out.meta.environment.ultralytics_cfg_keys if k != "cache"]))
    cfg = config_files.best_config(meta, out.best)
    assert "cache" not in cfg.cfg and any("'cache'" in f for f in cfg.findings)


def test_nccl_preset_and_pin_memory_go_to_env_and_findings(cpu_scan_copy):
    out = outputs.collect(cpu_scan_copy)
    meta = dataclasses.replace(out.meta, device="cuda", gpus=[0, 1])
    best = dataclasses.replace(out.best, knobs=dataclasses.replace(out.best.knobs, nccl="ring", pin_memory=False))
    cfg = config_files.best_config(meta, best)
    assert ("NCCL_ALGO", "Ring") in [(n, v) for n, v, _ in cfg.env]
    assert "pin_memory" not in cfg.cfg and any("pin_memory" in f for f in cfg.findings)
    assert cfg.cfg["device"] == "0,1"
    text = config_files.render_env(best, cfg)
    assert "export NCCL_ALGO=Ring" in text and "debugging variable" in text


def test_html_is_self_contained_and_escapes_user_strings(cpu_scan_copy):
    out = outputs.collect(cpu_scan_copy)
    evil = '<script>alert("x")</script>'
    meta = dataclasses.replace(out.meta, model=f"{evil}.yaml", dataset=dataclasses.replace(
        out.meta.dataset, classes=[evil, "<b>car</b>"]))
    out = dataclasses.replace(out, meta=meta)
    page = html.render(out, config_files.best_config(meta, out.best), title=str(cpu_scan_copy))
    assert evil not in page and "&lt;script&gt;alert(" in page and "<b>car</b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a host
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # only in-page references
    assert page.count("<svg") >= 2  # throughput and breakdown figures inline


def test_report_on_a_folder_that_is_not_a_scan(tmp_path):
    with pytest.raises(UsageError, match="not a yoloprof scan folder"):
        outputs.collect(tmp_path)
    (tmp_path / "scan.json").write_text('{"schema": 1, "yoloprof_version"')
    with pytest.raises(UsageError, match="corrupt or truncated"):
        outputs.collect(tmp_path)
    write_json(tmp_path / "scan.json", {"schema": 99})
    with pytest.raises(UsageError, match="schema 99"):
        outputs.collect(tmp_path)


def test_csv_cells_are_empty_for_unmeasured_values(cpu_scan_copy):
    out = outputs.collect(cpu_scan_copy)
    failed = dataclasses.replace(out.results[0], trial_id="tx", status="error", img_per_s=None, error="boom")
    from yoloprof.ranking import rank_trials

    results = out.results + [failed]
    text = csv_table.render(results, rank_trials(results))
    last = list(csv.DictReader(text.splitlines()))[-1]
    assert last["trial_id"] == "tx" and last["position"] == "" and last["img_per_s"] == "" and last["error"] == "boom"
