"""Shared fixtures: the recorded CPU scan, a private cache folder, and a tiny dataset; and how the suite
shares the machine between its xdist workers (machine_share.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CPU_SCAN = FIXTURES / "cpu-scan"
BENCH = Path(__file__).parent.parent / "benchmarks"


def pytest_configure(config):
    """The xdist controller (it has workers, it is not one) makes the lock folder its workers share."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        from machine_share import start

        start()


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        from machine_share import end

        end()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test holds the machine, shared or (marked `exclusive`) whole, through its set-up, call and
    tear-down (module and session fixtures are built inside the first test that needs them)."""
    from machine_share import folder, hold

    with hold(folder(), exclusive=item.get_closest_marker("exclusive") is not None):
        yield


def pytest_collection_modifyitems(config, items):
    """Files holding `exclusive` tests run first (a stable sort: the rest keep their order). An exclusive test
    waits for the other worker's test to end; later in the run that is often a hang test waiting out its
    timeout, and the machine idled (seen: 70 s at 0% busy in one fresh-clone run)."""
    first = {item.path for item in items if item.get_closest_marker("exclusive")}
    items.sort(key=lambda item: item.path not in first)


def load_benchmark(name: str, module: str = ""):
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package), registered in sys.modules
    as `module` (default bench_<name>) because dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(module or f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep datasets and Ultralytics settings out of the user's home during tests."""
    cache = tmp_path_factory.mktemp("yoloprof-cache")
    old = {k: os.environ.get(k) for k in ("YOLOPROF_CACHE", "YOLO_CONFIG_DIR", "YOLO_OFFLINE", "MPLCONFIGDIR")}
    os.environ["YOLOPROF_CACHE"] = str(cache)
    os.environ["YOLO_CONFIG_DIR"] = str(cache / "ultralytics")
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _restore_environ():
    """In-process CLI tests run scan.prepare, which sets Ultralytics' variables for its own process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """16 training images at 160x120: enough for a few DDP steps at imgsz 64."""
    from yoloprof.data.dataset import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("data")
    return generate(root / "tiny", SyntheticSpec(images=16, width=160, height=120, val_images=4, seed=1))


@pytest.fixture
def cpu_scan_copy(tmp_path) -> Path:
    """A writable copy of the recorded real CPU scan."""
    dst = tmp_path / "scan"
    shutil.copytree(CPU_SCAN, dst)
    return dst


@pytest.fixture(scope="session")
def real_scan(tiny_data, tmp_path_factory):
    """One real 2-rank CPU scan with its ceilings, read by test_scan_cpu.py, test_scan_ceilings.py, test_tasks.py
    and test_run_watch.py: built once for the whole run, by whichever xdist worker asks first."""
    from machine_share import once
    from scans import shared_scan

    def build(root: Path) -> dict:
        out, proc, root = shared_scan(tiny_data, root)
        return {"out": str(out), "root": str(root), "stdout": proc.stdout, "stderr": proc.stderr, "args": proc.args}

    got = once("real_scan", build, lambda: tmp_path_factory.mktemp("scan"))
    proc = subprocess.CompletedProcess(got["args"], 0, got["stdout"], got["stderr"])
    return Path(got["out"]), proc, Path(got["root"])
