"""The phase arithmetic of StepProbe, driven by a fake clock so every number is exact."""

from __future__ import annotations

import types

import pytest

import torch

import yoloprof.probes.clock as clock_mod
import yoloprof.probes.steps as steps_mod
from yoloprof.probes.clock import Clock
from yoloprof.probes.comm import BucketTiming
from yoloprof.probes.steps import StepProbe
from fake_cuda import FakeCuda, installed


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


def test_epoch_boundary_is_timed_apart_from_data_wait_and_other(fake):
    out = []
    probe = StepProbe(rank=0, warmup_steps=0, clock=Clock(cuda=False), sink=out.append)
    probe.epoch_start()
    run_step(probe, fake, wait=1, h2d=1, fwd=1, bwd=2, comm_tail=0, opt=None, other=0)
    run_step(probe, fake, wait=2, h2d=1, fwd=1, bwd=2, comm_tail=0, opt=None, other=0)
    fake.advance_ms(40)  # epoch-end bookkeeping
    probe.epoch_start()
    run_step(probe, fake, wait=7, h2d=1, fwd=1, bwd=2, comm_tail=0, opt=None, other=0)
    assert [s.epoch_boundary for s in out] == [True, False, True]
    assert out[1].epoch_end_ms is None and out[0].epoch_end_ms is None  # the trial's first step has no previous epoch
    s = out[2]
    assert s.data_wait_ms == pytest.approx(7) and s.host_data_wait_ms == pytest.approx(7)
    assert s.epoch_end_ms == pytest.approx(40)
    assert s.other_ms == pytest.approx(0)
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


# -- a GPU's timeline: the CUDA stand-in (tests/fake_cuda.py) runs the clock's real torch.cuda calls --


@pytest.fixture
def dev(fake, monkeypatch):
    """torch.cuda answered by the stand-in on the fake clock, the rank's GPU current as the worker sets it."""
    rt = FakeCuda(clock=fake)
    with installed(rt, monkeypatch):
        torch.cuda.set_device(0)
        yield rt


def gpu_step(probe, ft, dev, *, host_wait):
    """A rank that never synchronizes: ~3 ms of host enqueue for 97 ms of device work."""
    ft.advance_ms(host_wait)
    probe.batch_start(epoch=0)
    t_batch = ft.now
    for name, host_ms, device_ms in (("h2d_end", 0.5, 2), ("fwd_end", 1, 30), ("grad_end", 1, 60), ("bwd_end", 0, 0)):
        dev.launch(device_ms)
        ft.advance_ms(host_ms)
        probe.mark(name)
    probe.mark("opt_start")
    dev.launch(5)
    ft.advance_ms(0.5)
    probe.mark("opt_end")
    ft.advance_ms(0.2)
    probe.batch_end()
    return t_batch


def test_gpu_data_wait_is_the_devices_idle_gap_not_the_hosts_wait(fake, dev):
    out = []
    probe = StepProbe(0, 0, Clock(cuda=True), out.append)
    probe.epoch_start()
    gpu_step(probe, fake, dev, host_wait=1)
    # The host waits 20 ms for the loader while the GPU still runs ~94 ms of the previous step: no stall.
    gpu_step(probe, fake, dev, host_wait=20)
    # Then the loader is slow: the host waits 300 ms and the GPU idles for the part it had no work.
    idle_from = dev.busy_until[0]  # the device finishes the second step here (~168 ms after its host did)
    t_batch = gpu_step(probe, fake, dev, host_wait=300)
    probe.flush(block=True)
    assert [s.timing for s in out] == ["cuda_event"] * 3
    busy, stalled = out[1], out[2]
    assert busy.host_data_wait_ms == pytest.approx(20)
    assert busy.data_wait_ms == pytest.approx(0)  # the host-clock wait would have said 20 ms of input stall
    assert busy.step_ms == pytest.approx(97)  # the device's step, not the host's 23 ms
    assert stalled.host_data_wait_ms == pytest.approx(300)
    assert stalled.data_wait_ms == pytest.approx((t_batch - idle_from) * 1e3) and 100 < stalled.data_wait_ms < 300
    for s in out[1:]:  # the phases add up to the step, and nothing is negative
        parts = [s.data_wait_ms, s.h2d_ms, s.forward_ms, s.backward_ms, s.comm_wait_ms, s.optimizer_ms]
        assert min(parts + [s.other_ms]) >= 0
        assert sum(parts) + s.other_ms == pytest.approx(s.step_ms)
        assert (s.h2d_ms, s.forward_ms, s.backward_ms, s.optimizer_ms) == (
            pytest.approx(2),
            pytest.approx(30),
            pytest.approx(60),
            pytest.approx(5),
        )


def test_sync_mode_times_on_the_host_after_each_synchronize(fake, dev):
    out = []
    probe = StepProbe(0, 0, Clock(cuda=True, sync=True), out.append)
    probe.epoch_start()
    gpu_step(probe, fake, dev, host_wait=1)
    gpu_step(probe, fake, dev, host_wait=20)
    s = out[1]
    assert s.timing == "cuda_sync"
    assert s.forward_ms == pytest.approx(30)  # the host's 1 ms enqueue overlaps the device's 30 ms
    assert s.data_wait_ms == pytest.approx(20)  # synchronized: the host's wait is the device's idle time


def test_a_sticky_device_error_still_flushes_without_raising(fake, dev):
    out = []
    clock = Clock(cuda=True)
    probe = StepProbe(0, 0, clock, out.append)
    probe.epoch_start()
    gpu_step(probe, fake, dev, host_wait=1)
    gpu_step(probe, fake, dev, host_wait=1)
    dev.fail()  # an illegal address: every query and synchronize raises from now on
    probe.batch_start(epoch=0)
    probe.mark("h2d_end")
    probe.flush_after_failure()  # before: the event query raised again here and the end record was lost
    assert "illegal memory access" in clock.device_error
    assert [s.step for s in out] == [0, 1]  # the finished steps are written; the failed one is not
    assert out[1].timing == "host_after_device_error" and out[1].forward_ms is None and out[1].step_ms > 0


def test_a_step_is_written_only_once_its_events_have_completed(fake, dev):
    """The stand-in refuses elapsed_time on an event still pending ("device not ready"): the probe
    must wait for completion, never read early, and never mistake the refusal for a broken device."""
    out = []
    clock = Clock(cuda=True)
    probe = StepProbe(0, 0, clock, out.append)
    probe.epoch_start()
    gpu_step(probe, fake, dev, host_wait=1)  # ~3 ms of host time for 97 ms queued on the device
    assert out == [] and clock.device_error is None  # still running: nothing read
    fake.advance_ms(50)
    probe.flush(block=False)
    assert out == []
    fake.advance_ms(60)  # the device is done
    probe.flush(block=False)
    assert len(out) == 1 and out[0].timing == "cuda_event" and out[0].forward_ms == pytest.approx(30)
    with pytest.raises(RuntimeError, match="device not ready"):  # what reading early would have met
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dev.launch(5)
        b.record()
        a.elapsed_time(b)
