"""One namespace: the repository's probes/ and reports/ install as yoloprof.probes and yoloprof.reports
(setup.py), so site-packages gains one top-level name and a user's own `probes/` folder, in the folder a
scan starts from, shadows nothing (ranks and probes start as `python -m yoloprof.probes...`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
YOLOPROF = str(Path(sys.executable).parent / "yoloprof")
SHADOW = 'raise ImportError("the user\'s own {name}/ package was imported instead of yoloprof.{name}")\n'


def _shadowing_folder(tmp_path: Path) -> Path:
    """A working folder holding its own probes/ and reports/ packages, each failing on import."""
    for name in ("probes", "reports"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(SHADOW.format(name=name))
    return tmp_path


@pytest.mark.slow
def test_a_wheel_holds_one_top_level_name_and_every_module(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for d in ("yoloprof", "probes", "reports"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("yoloprof-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"yoloprof"}
    top = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top).decode().split() == ["yoloprof"]
    for folder in ("probes", "reports"):  # every module of the folder, under yoloprof/
        for path in (ROOT / folder).rglob("*.py"):
            assert f"yoloprof/{folder}/{path.relative_to(ROOT / folder).as_posix()}" in names
    assert any(n.startswith("yoloprof/reports/templates/") for n in names)


def test_the_installed_environment_exposes_no_probes_or_reports(tmp_path):
    """The install the suite runs against (editable): from a folder without them, `probes` and `reports`
    are not importable, yoloprof's are."""
    code = (
        "import importlib.util as u; import yoloprof.probes.steps, yoloprof.reports.html; "
        "print(u.find_spec('probes'), u.find_spec('reports'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]


@pytest.mark.slow
def test_a_probe_started_from_a_folder_with_its_own_probes_package_runs(tmp_path):
    """`python -m yoloprof.probes.allreduce_bench` under torchrun, two gloo ranks, cwd holding a `probes/`
    and a `reports/` that fail on import: the sweep runs and reports its result."""
    work = _shadowing_folder(tmp_path)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run(
        [YOLOPROF, "probe", "allreduce", "--device", "cpu", "--nproc", "2", "--max-mib", "0.0625"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the user's own" not in out.stdout + out.stderr
    assert "MiB" in out.stdout
