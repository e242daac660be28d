"""The phase arithmetic of StepProbe, driven by a fake clock so every number is exact."""

from __future__ import annotations

import types

import pytest

import probes.clock as clock_mod
import probes.steps as steps_mod
from probes.clock import Clock
from probes.comm import BucketTiming
from probes.steps import StepProbe


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def time(self):
        return 1_700_000_000.0 + self.now

    def advance_ms(self, ms):
        self.now += ms / 1e3


@pytest.fixture
def fake(monkeypatch):
    ft = FakeTime()
    fake_mod = types.SimpleNamespace(perf_counter=ft.perf_counter, time=ft.time, sleep=lambda s: None)
    monkeypatch.setattr(clock_mod, "time", fake_mod)
    monkeypatch.setattr(steps_mod, "time", fake_mod)
    return ft


def run_step(probe, ft, *, wait, h2d, fwd, bwd, comm_tail, opt, other, buckets=()):
    ft.advance_ms(wait)
    probe.batch_start(epoch=0)
    ft.advance_ms(h2d)
    probe.set_images(4)
    probe.mark("h2d_end")
    ft.advance_ms(fwd)
    probe.mark("fwd_end", once=True)
    ft.advance_ms(bwd / 2)
    for size in buckets:  # buckets launch during backward and finish before backward() returns
        b = BucketTiming(len(probe.current.buckets), size, probe.clock.mark())
        probe.bucket_launched(b)
    ft.advance_ms(bwd / 2)
    probe.mark("grad_end")
    ft.advance_ms(comm_tail)
    for b in probe.current.buckets:
        b.end = probe.clock.mark()
    probe.mark("bwd_end")
    if opt is not None:
        probe.mark("opt_start")
        ft.advance_ms(opt)
        probe.mark("opt_end")
    ft.advance_ms(other)
    probe.batch_end()


def test_phases_add_up_exactly(fake):
    out = []
    probe = StepProbe(rank=1, warmup_steps=1, clock=Clock(cuda=False), sink=out.append)
    probe.epoch_start()
    run_step(probe, fake, wait=50, h2d=2, fwd=30, bwd=60, comm_tail=8, opt=None, other=1)
    run_step(probe, fake, wait=5, h2d=2, fwd=30, bwd=60, comm_tail=8, opt=12, other=3, buckets=(9306532, 1055104))
    assert [s.step for s in out] == [0, 1]
    assert [s.warmup for s in out] == [True, False]
    s = out[1]
    assert s.rank == 1 and s.images == 4 and s.timing == "host"
    assert s.data_wait_ms == pytest.approx(5)
    assert s.h2d_ms == pytest.approx(2)
    assert s.forward_ms == pytest.approx(30)
    assert s.backward_ms == pytest.approx(60)
    assert s.comm_wait_ms == pytest.approx(8)
    assert s.optimizer_ms == pytest.approx(12) and s.optimizer_stepped
    assert s.other_ms == pytest.approx(3)
    assert s.step_ms == pytest.approx(5 + 2 + 30 + 60 + 8 + 12 + 3)
    # both buckets launched half-way through backward and completed when backward returned
    assert [b.size_bytes for b in s.buckets] == [9306532, 1055104]
    assert [b.allreduce_ms for b in s.buckets] == [pytest.approx(38), pytest.approx(38)]
    assert s.comm_ms == pytest.approx(38)
    # a step without an optimizer step (gradient accumulation) reports 0 ms, not n/a
    assert out[0].optimizer_ms == 0.0 and not out[0].optimizer_stepped


def test_epoch_boundary_goes_to_other_not_data_wait(fake):
    out = []
    probe = StepProbe(rank=0, warmup_steps=0, clock=Clock(cuda=False), sink=out.append)
    probe.epoch_start()
    run_step(probe, fake, wait=1, h2d=1, fwd=1, bwd=2, comm_tail=0, opt=None, other=0)
    fake.advance_ms(40)  # epoch-end bookkeeping
    probe.epoch_start()
    run_step(probe, fake, wait=7, h2d=1, fwd=1, bwd=2, comm_tail=0, opt=None, other=0)
    s = out[1]
    assert s.data_wait_ms == pytest.approx(7)
    assert s.other_ms == pytest.approx(40)
    assert s.step_ms == pytest.approx(40 + 7 + 1 + 1 + 2)


def test_missing_grad_hook_leaves_comm_wait_unmeasured(fake):
    out = []
    probe = StepProbe(rank=0, warmup_steps=0, clock=Clock(cuda=False), sink=out.append)
    probe.epoch_start()
    probe.batch_start(epoch=0)
    fake.advance_ms(3)
    probe.mark("h2d_end")
    fake.advance_ms(10)
    probe.mark("fwd_end")
    fake.advance_ms(20)
    probe.mark("bwd_end")
    probe.batch_end()
    assert out[0].backward_ms == pytest.approx(20)
    assert out[0].comm_wait_ms is None
