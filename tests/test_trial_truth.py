"""Failures that used to look like success or lose their cause, reproduced for real on CPU ranks."""

from __future__ import annotations

import pytest

from scans import leftovers, results, run_scan

pytestmark = pytest.mark.slow


def test_an_oom_at_world_size_1_is_oom_not_a_smaller_batch(tiny_data, tmp_path):
    # Convolutions raise the CUDA OOM message for batches above 8, inside Ultralytics' own try block,
    # where with one rank (RANK -1) it would halve the batch and retry instead of failing.
    out = tmp_path / "s"
    proc = run_scan(tiny_data, out, "--nproc", "1", "--batch", "8,16", "--workers", "0", fault="oomabove@8")
    r = results(out)
    assert {k: v.status for k, v in r.items()} == {"t01-b8-w0-fp32": "ok", "t02-b16-w0-fp32": "oom"}, proc.stderr[
        -2000:
    ]
    assert "CUDA out of memory" in r["t02-b16-w0-fp32"].error and "batch 16 > 8" in r["t02-b16-w0-fp32"].error
    log = (out / "trials" / "t02-b16-w0-fp32" / "rank0.log").read_text()
    assert "Reducing to batch" not in log
    assert r["t01-b8-w0-fp32"].img_per_s > 0 and leftovers(out) == []


def test_a_sticky_device_error_keeps_its_cause_and_the_steps_before_it(tiny_data, tmp_path):
    out = tmp_path / "s"
    run_scan(tiny_data, out, "--batch", "4", "--workers", "0", "--steps", "3", fault="sticky@2:rank1")
    r = results(out)["t01-b4-w0-fp32"]
    assert r.status == "error" and r.error == "RuntimeError: CUDA error: an illegal memory access was encountered"
    rank1 = (out / "trials" / "t01-b4-w0-fp32" / "rank1.jsonl").read_text()
    assert '"kind": "end"' in rank1 and '"step": 2,' in rank1  # the steps before the error are kept
    assert leftovers(out) == []
