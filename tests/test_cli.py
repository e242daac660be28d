"""The CLI in a subprocess: `report DIR` rebuilds outputs; a user's mistake is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, **kw):
    return subprocess.run([str(BIN / "yoloprof"), *args], capture_output=True, text=True, timeout=300, **kw)


def test_report_rebuilds_outputs_from_records(cpu_scan_copy):
    assert not (cpu_scan_copy / "report.html").exists()  # the fixture keeps records only
    proc = run("report", str(cpu_scan_copy))
    assert proc.returncode == 0, proc.stderr
    assert "Best: t03-b16-w0-fp32" in proc.stdout
    assert all((cpu_scan_copy / n).is_file() for n in ("report.html", "results.csv", "best.yaml"))


@pytest.mark.parametrize("args,words", [
    (["scan", "--batch", "0"], "--batch '0' is not a whole number >= 1"),
    (["scan", "--amp", "maybe"], "--amp 'maybe' is not one of"),
    (["scan", "--steps", "0"], "--steps 0"),
    (["scan", "--frobnicate"], "unrecognized arguments"),
    (["report", "/nonexistent/scan"], "is not a folder"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args, words):
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
