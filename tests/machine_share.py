"""The suite runs on two pytest-xdist workers (`make test`), but some tests time real work against known
costs and cannot share the machine's two cores: they are marked `exclusive` and run alone. Every other test
holds a shared hold on the machine, an exclusive test the whole of it, through two flock(2) files that all
workers of one run open:

- `machine`: shared by ordinary tests, exclusive for an `exclusive` one;
- `gate`: taken by every test on its way in, and held by an exclusive test while it waits for `machine`,
  so no new shared test slips in ahead of it (a writer-preferring read-write lock: without the gate, the
  other worker's short tests, back to back, could keep an exclusive test waiting indefinitely).

A lock held by a process dies with it, so a crashed worker never blocks the run. Without xdist (one process)
nothing is locked. `once` builds a session fixture's expensive result once for all workers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional


ENV = "YOLOPROF_TEST_LOCKS"  # the run's lock folder: made by the controller before its workers start (conftest)


def folder() -> Optional[Path]:
    """The run's lock folder, the same for all of its workers; None outside xdist."""
    path = os.environ.get(ENV)
    return Path(path) if path and os.environ.get("PYTEST_XDIST_WORKER") else None


def start() -> None:
    """In the controller, before any worker starts: a fresh lock folder its workers inherit."""
    os.environ[ENV] = tempfile.mkdtemp(prefix="yoloprof-tests-")


def end() -> None:
    """In the controller, once the workers are gone: the folder goes with the run."""
    path = os.environ.pop(ENV, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def hold(where: Optional[Path], exclusive: bool) -> Iterator[None]:
    """The machine, shared or whole, for the duration of the block."""
    if where is None:
        yield
        return
    with open(where / "gate", "a+") as gate, open(where / "machine", "a+") as machine:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)


def once(name: str, build: Callable[[Path], dict], fresh: Callable[[], Path]) -> dict:
    """`build(folder)`'s JSON-able result, built by the first worker that asks and read back by the others
    (a session fixture would otherwise run once per worker: the shared real scan costs about 25 s). Outside
    xdist it is built in `fresh()`. A build that fails leaves nothing, so the next worker tries again."""
    where = folder()
    if where is None:
        return build(fresh())
    done = where / f"{name}.json"
    with open(where / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.exists():
                return json.loads(done.read_text())
            value = build(fresh())
            done.write_text(json.dumps(value))
            return value
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
