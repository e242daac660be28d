"""The shared real scan (tests/scans.py: shared_scan) runs without --no-ceilings: its three ceilings are measured,
saved and reported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture
def scan(real_scan):
    """The real scan test_scan_cpu.py reads too (tests/scans.py: shared_scan): its ceilings were measured."""
    out, proc, _ = real_scan
    return out, proc


def test_scan_writes_the_three_ceilings_with_measured_points(scan):
    out, proc = scan
    c = out / "ceilings"
    loader = json.loads((c / "loader.json").read_text())
    compute = json.loads((c / "compute.json").read_text())
    link = json.loads((c / "allreduce-default.json").read_text())
    # input: one loader per rank at each of the scan's workers (0, 1) and its batch per rank (4 / 2 ranks)
    points = [(p["workers"], p["ranks"], p["batch_per_rank"], p["status"]) for p in loader["points"]]
    assert points == [(0, 2, 2, "ok"), (1, 2, 2, "ok")]
    lp = loader["points"][0]
    assert lp["img_per_s_machine"] == pytest.approx(lp["img_per_s_rank"] * 2) and lp["img_per_s_rank"] > 0
    assert loader["imgsz"] == 64
    # compute: the batch per rank, fp32 on CPU; its img/s is the probe's own measured images over measured time
    (cp,) = compute["points"]
    assert (cp["batch"], cp["amp"], cp["status"]) == (2, False, "ok")
    steps = [json.loads(x) for x in (c / "compute" / cp["trial_id"] / "rank0.jsonl").read_text().splitlines()]
    measured = [s for s in steps if s.get("kind") == "step" and not s["warmup"]]
    assert measured
    want = sum(s["images"] for s in measured) / (sum(s["step_ms"] for s in measured) / 1e3)
    assert cp["img_per_s"] == pytest.approx(want, rel=1e-9)
    # the probe's trial runs the optimizer of the DDP trial it stands for (auto's pick for its global batch)
    probe_spec = json.loads((c / "compute" / cp["trial_id"] / "spec.json").read_text())
    trial_spec = json.loads((out / "trials" / "t01-b4-w0-fp32" / "spec.json").read_text())
    picks = [(x["optimizer"], x["optimizer_iterations"]) for x in (probe_spec, trial_spec)]
    assert picks == [("AdamW", 100)] * 2  # 16 images, 100 epochs
    assert next(s for s in steps if s.get("kind") == "info")["optimizer_effective"] == "AdamW"
    # link: an AllReduce sweep on the scan's 2 gloo ranks, including the trial's own gradient bucket sizes
    assert (link["status"], link["world_size"], link["backend"]) == ("ok", 2, "gloo")
    assert all(p["time_us"] > 0 and p["busbw_gbs"] > 0 for p in link["points"])
    trial = json.loads((out / "trials" / "t01-b4-w0-fp32" / "result.json").read_text())
    buckets = {p["size_bytes"] for p in link["points"] if p["is_bucket"]}
    assert trial["bucket_sizes_bytes"] and buckets == set(trial["bucket_sizes_bytes"])
    for line in (
        "Input ceiling: the dataloader alone",
        "Compute ceiling: the training step on one device",
        "Link ceiling: AllReduce sweep on the scan's ranks",
    ):
        assert line in proc.stdout


def test_report_sets_the_trial_against_the_measured_ceilings(scan):
    out, _ = scan
    page = (out / "report.html").read_text()
    assert "Not measured: this scan ran without ceilings" not in page
    assert "Input ceiling (imgsz 64, cache off):" in page and "Compute ceiling (cpu):" in page
    assert "<h3>Trials against the ceilings" in page and "<h3>AllReduce bus bandwidth" in page
    compute = json.loads((out / "ceilings" / "compute.json").read_text())["points"][0]["img_per_s"]
    loader = json.loads((out / "ceilings" / "loader.json").read_text())["points"][0]["img_per_s_machine"]
    img = json.loads((out / "trials" / "t01-b4-w0-fp32" / "result.json").read_text())["img_per_s"]
    # the trial's row: achieved, compute ceiling x 2 ranks, efficiency, input ceiling of the machine
    row = (
        f'<td class="l">t01-b4-w0-fp32</td><td>{img:.1f}</td><td>{2 * compute:.1f}</td>'
        f"<td>{100 * img / (2 * compute):.0f}%</td><td>{loader:.1f}</td>"
    )
    assert row in page
