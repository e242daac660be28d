"""tests/machine_share.py, the lock that lets `exclusive` tests run alone while the rest of the suite runs on
two xdist workers: an exclusive holder waits for the shared ones to leave, and a shared one that comes while
it waits goes after it, not ahead of it."""

from __future__ import annotations

import threading
import time

import machine_share
from machine_share import folder, hold, once


def test_an_exclusive_hold_waits_for_the_shared_and_a_shared_one_behind_it_waits_for_it(tmp_path):
    seen: list[str] = []
    a_in, b_waiting = threading.Event(), threading.Event()

    def shared_a():
        with hold(tmp_path, exclusive=False):
            seen.append("A in")
            a_in.set()
            b_waiting.wait(5)
            time.sleep(0.3)  # C arrives while A still holds the machine and B waits for it
            seen.append("A out")

    def exclusive_b():
        b_waiting.set()
        with hold(tmp_path, exclusive=True):
            seen.append("B in")
            time.sleep(0.2)
            seen.append("B out")

    def shared_c():
        with hold(tmp_path, exclusive=False):
            seen.append("C in")

    a = threading.Thread(target=shared_a)
    a.start()
    assert a_in.wait(5)
    b = threading.Thread(target=exclusive_b)
    b.start()
    b_waiting.wait(5)
    time.sleep(0.1)  # B is now blocked on the machine, holding the gate
    c = threading.Thread(target=shared_c)
    c.start()
    for t in (a, b, c):
        t.join(10)
    assert seen == ["A in", "A out", "B in", "B out", "C in"]


def test_two_shared_holds_overlap(tmp_path):
    inside = threading.Barrier(2, timeout=5)

    def shared():
        with hold(tmp_path, exclusive=False):
            inside.wait()  # both are in at once, or this times out

    ts = [threading.Thread(target=shared) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not inside.broken


def test_one_process_locks_nothing(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert folder() is None
    with hold(None, exclusive=True):
        pass


def test_once_builds_for_the_first_worker_and_the_others_read_it_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    (tmp_path / "locks").mkdir()
    monkeypatch.setenv(machine_share.ENV, str(tmp_path / "locks"))
    builds, fresh = [], iter(tmp_path / f"f{i}" for i in range(9))

    def build(root):
        builds.append(root)
        time.sleep(0.2)  # the other caller arrives meanwhile and waits
        return {"root": str(root)}

    got = []
    ts = [threading.Thread(target=lambda: got.append(once("x", build, lambda: next(fresh)))) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(builds) == 1 and got == [{"root": str(builds[0])}] * 2
    assert folder() == tmp_path / "locks"


def test_once_outside_xdist_builds_in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert once("x", lambda root: {"root": str(root)}, lambda: tmp_path) == {"root": str(tmp_path)}
