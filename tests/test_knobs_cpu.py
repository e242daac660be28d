"""A real CPU scan over deterministic on,off and a compiled, non-deterministic baseline on 2 gloo ranks: both
knobs run for real, torch.compile's start-up is measured apart from its steady steps and counted once in the run.

The model is tests/fixtures/tiny-detect.yaml: compiling yolo11n takes minutes on 2 cores (README), the
tiny model about 20 s, and the code path is the same."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest
import yaml

from conftest import FIXTURES
from scans import leftovers, results, scan_cmd

pytestmark = pytest.mark.slow
TINY_MODEL = FIXTURES / "tiny-detect.yaml"


LOSS_MS = 80.0


def _odd_minus_even(out, tid: str, phase: str) -> float:
    """Mean of a phase over rank 0's odd measured steps less its mean over the even ones."""
    lines = (out / "trials" / tid / "rank0.jsonl").read_text().splitlines()
    steps = [s for s in (json.loads(x) for x in lines if '"kind": "step"' in x) if not s["warmup"]]
    odd = [s[phase] for s in steps if s["step"] % 2]
    even = [s[phase] for s in steps if not s["step"] % 2]
    return sum(odd) / len(odd) - sum(even) / len(even)


def _info(out, tid: str, rank: int) -> dict:
    lines = (out / "trials" / tid / f"rank{rank}.jsonl").read_text().splitlines()
    return next(json.loads(x) for x in lines if '"kind": "info"' in x)


def test_a_cpu_scan_measures_deterministic_and_compile_for_real(tiny_data, tmp_path):
    from ultralytics.cfg import get_cfg

    out = tmp_path / "s"
    cmd = scan_cmd(
        tiny_data,
        out,
        "--model",
        str(TINY_MODEL),
        "--batch",
        "8",
        "--workers",
        "0",
        "--warmup",
        "2",
        "--deterministic",
        "on,off",
        "--compile",
        "off",
        "--baseline",
        "batch=8,workers=0,deterministic=off,compile=default",
    )  # one compile: ~20 s each
    # The loss costs 80 ms more on odd steps: compiled, Ultralytics computes it outside the compiled forward,
    # and it must still land in forward (+ loss), as it does uncompiled, not in backward.
    env = {**os.environ, "YOLOPROF_TEST_COST": f"loss={LOSS_MS}:odd"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    r = results(out)
    assert sorted(r) == ["t01-b8-w0-fp32-nondet-compile", "t02-b8-w0-fp32", "t03-b8-w0-fp32-nondet"]  # baseline first
    for tid in r:
        grew = {p: _odd_minus_even(out, tid, p) for p in ("forward_ms", "backward_ms")}
        assert grew["forward_ms"] == pytest.approx(LOSS_MS, abs=30), (tid, grew)
        assert abs(grew["backward_ms"]) < 30, (tid, grew)
    assert all(x.status == "ok" for x in r.values()), {t: x.error for t, x in r.items()}
    # what ran, read back from torch on every rank
    for tid, x in r.items():
        for rank in (0, 1):
            info = _info(out, tid, rank)
            assert info["compiled"] is (x.knobs.compile != "off"), (tid, rank)
            assert info["deterministic_effective"] is x.knobs.deterministic, (tid, rank)
            assert info["channels_last_effective"] is False  # NCHW on CPU whatever the setting
    # compile's start-up lands in the warm-up steps, apart from the steady ones; each compiled cold
    compiled = [x for x in r.values() if x.knobs.compile != "off"]
    plain = [x for x in r.values() if x.knobs.compile == "off"]
    assert all(x.warmup_extra_s > 5.0 for x in compiled), [x.warmup_extra_s for x in compiled]
    assert min(x.warmup_extra_s for x in compiled) > 10 * max(max(x.warmup_extra_s for x in plain), 0.1)
    assert not list(out.glob("trials/*/compile-cache"))  # removed after each trial
    # results.csv: the knobs, and compile counted once in the run
    rows = {row["trial_id"]: row for row in csv.DictReader((out / "results.csv").open())}
    for x in compiled:
        row = rows[x.trial_id]
        assert row["compile"] == "default" and float(row["compile_s"]) == pytest.approx(x.warmup_extra_s, rel=1e-3)
        assert float(row["once_s"]) >= float(row["compile_s"])
    assert all(rows[x.trial_id]["compile"] == "off" and rows[x.trial_id]["compile_s"] == "" for x in plain)
    # best.yaml: Ultralytics takes every key; the terminal and the report state compile's start-up
    best = yaml.safe_load((out / "best.yaml").read_text())
    get_cfg(overrides={k: v for k, v in best.items()})
    assert {"deterministic", "compile"} <= set(best)
    said = " ".join(proc.stdout.split())  # the terminal wraps long lines
    assert "Compile: compile default:" in said and "of compilation at the start of every run" in said
    assert "start-up</b>" in (out / "report.html").read_text()
    assert leftovers(out) == []
