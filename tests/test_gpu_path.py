"""The CUDA-only code, executed against the CUDA stand-in (tests/fake_cuda.py), which enforces what the
real runtime does: allocator statistics before initialisation fail, events give elapsed time only once
both completed, sticky errors stay. Each test runs the product's own branch, not a copy of it."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fake_cuda import FakeCuda, installed
from yoloprof.probes import memory
from yoloprof.probes.clock import Clock
from yoloprof.records import Knobs, TrialSpec


@pytest.fixture
def rt(monkeypatch):
    with installed(FakeCuda(count=4), monkeypatch) as runtime:
        yield runtime


def spec(**kw) -> TrialSpec:
    base = dict(
        trial_id="t",
        knobs=Knobs(64, 8, True, True, "off", "default"),
        world_size=2,
        device="cuda",
        gpus=[2, 3],
        model="yolo26n.yaml",
        data="/d/data.yaml",
        imgsz=640,
        optimizer="SGD",
        warmup_steps=0,
        measured_steps=3,
        env={},
    )
    return TrialSpec(**{**base, **kw})


@pytest.fixture
def gloo_group(tmp_path):
    """A real one-rank gloo process group in this process (the comm hook and the link probe need one)."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# -- defect 1: the rank's first CUDA call ------------------------------------------------------------


def test_the_stand_in_refuses_a_peak_reset_before_cuda_is_initialised(rt):
    """What every GPU rank met: the peak reset as the first CUDA call (GPU 0 prints as a zero byte)."""
    with pytest.raises(RuntimeError, match="Invalid device argument \x00: did you call init"):
        memory.reset(torch.device("cuda", 0))
    assert rt.max_memory_reserved(0) == 0  # the readings answer 0 before init, as memory_stats() does


def test_the_worker_starts_its_gpu_before_any_allocator_call(rt, monkeypatch):
    from yoloprof.worker.__main__ import start_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    clock = start_device(spec())
    assert rt.calls[:2] == ["set_device(3)", "init"]  # local rank 1 -> the scan's GPU 3, made current first
    assert rt.calls.index("reset_peak_memory_stats(3)") > rt.calls.index("set_device(3)")
    assert rt.current == 3 and rt.contexts == {3}  # no stray context on GPU 0
    assert clock.cuda and clock.timing == "cuda_event"
    # a pool's next trial: the same start-up again; cached blocks freed, peaks back to what is held now
    rt.alloc(5000, 3)
    rt.free(4000, 3)
    start_device(spec())
    peak = memory.peak(torch.device("cuda", 3))
    assert (peak.peak_mib, peak.allocated_mib, peak.source) == (1000.0, 1000.0, "cuda_reserved")
    assert peak.total_mib == pytest.approx(rt.total_mib)


def test_a_cpu_rank_touches_no_cuda(rt):
    from yoloprof.worker.__main__ import start_device

    clock = start_device(spec(device="cpu", gpus=[]))
    assert rt.calls == [] and not clock.cuda


# -- the worker's rank on a GPU, with a stand-in trainer ---------------------------------------------


class _Loader:
    batch_size, num_workers, pin_memory = 32, 8, True
    dataset = list(range(512))

    def __len__(self):
        return 16


def _gpu_trainer(rt: FakeCuda, steps: int, fail_at=None):
    """The task trainer's part the worker sees: set-up on the rank's GPU, then steps timed by the probe."""
    from yoloprof.worker.trainer import TrialComplete

    class Trainer:
        setup_s, epoch_parts = 1.5, None

        def __init__(self, spec, probe, project, on_ready, on_step, precise=None):
            self.probe, self.on_ready = probe, on_ready

        def train(self):
            self.device = torch.device("cuda", torch.cuda.current_device())
            self.train_loader, self.test_loader = _Loader(), None
            self.model, self.accumulate, self.amp = torch.nn.Conv2d(3, 8, 3), 2, True
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
            rt.alloc(20000)  # model, optimizer, activations
            rt.free(12000)
            self.on_ready(self)
            self.probe.epoch_start()
            for i in range(steps):
                self.probe.batch_start(0)
                for name, ms in (("h2d_end", 2), ("fwd_end", 30), ("grad_end", 60), ("bwd_end", 0)):
                    rt.launch(ms)
                    self.probe.mark(name)
                    if fail_at == (i, name):
                        rt.fail()
                        raise RuntimeError(rt.sticky)
                self.probe.set_images(32)
                self.probe.batch_end()
            self.probe.flush(block=True)
            raise TrialComplete()

    return Trainer


def _run_rank(tmp_path, monkeypatch, rt, trainer, pooled=False):
    import yoloprof.worker.__main__ as worker
    import yoloprof.worker.tasks as tasks

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tasks, "trainer_for", lambda model: trainer)
    writer = worker.RankWriter(tmp_path / "rank1.jsonl")
    end = worker.run(spec(), tmp_path, writer, rank=1, pooled=pooled)
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "rank1.jsonl").read_text().splitlines()]
    return end, lines


def test_a_gpu_rank_writes_event_timed_steps_and_the_allocators_peak(tmp_path, monkeypatch, rt):
    end, lines = _run_rank(tmp_path, monkeypatch, rt, _gpu_trainer(rt, steps=3), pooled=True)
    assert end.status == "ok", end.error
    info = next(x for x in lines if x["kind"] == "info")
    assert info["device"] == "cuda:3" and info["device_name"] == "NVIDIA H200" and info["node"] == 0
    assert info["optimizer_effective"] == "SGD"  # what the trainer built, read back
    steps = [x for x in lines if x["kind"] == "step"]
    assert [s["timing"] for s in steps] == ["cuda_event"] * 3
    for s in steps[1:]:  # device spans, and they add up to the device's step
        assert (s["h2d_ms"], s["forward_ms"], s["backward_ms"]) == (
            pytest.approx(2, abs=0.5),
            pytest.approx(30, abs=1),
            pytest.approx(60, abs=1),
        )
        parts = [
            s[k]
            for k in ("data_wait_ms", "h2d_ms", "forward_ms", "backward_ms", "comm_wait_ms", "optimizer_ms", "other_ms")
        ]
        assert sum(p for p in parts if p is not None) == pytest.approx(s["step_ms"])
    assert (end.mem_source, end.peak_mem_mib, end.peak_mem_allocated_mib) == ("cuda_reserved", 20000.0, 20000.0)
    assert end.device_mem_total_mib == pytest.approx(rt.total_mib)
    assert "empty_cache" in rt.calls[rt.calls.index("reset_peak_memory_stats(3)") + 1 :]  # the pool's clean-up


def test_a_sticky_cuda_error_still_ends_the_rank_with_its_record(tmp_path, monkeypatch, rt):
    end, lines = _run_rank(tmp_path, monkeypatch, rt, _gpu_trainer(rt, steps=4, fail_at=(2, "fwd_end")))
    assert end.status == "error" and "illegal memory access" in end.error
    assert end.mem_source == "n/a" and end.peak_mem_mib is None  # the allocator can no longer say
    steps = [x for x in lines if x["kind"] == "step"]
    assert [s["step"] for s in steps] == [0, 1] and end.last_step == 2


# -- defect 2: what Ultralytics counts as out of memory -----------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR",
        "GET was unable to find an engine to execute this computation",
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    ],
)
def test_cuda_memory_errors_are_oom_as_ultralytics_counts_them(message):
    from yoloprof.worker.__main__ import _is_oom

    assert _is_oom(RuntimeError(message))
    assert not _is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


# -- the probes' CUDA branches -----------------------------------------------------------------------


def test_the_comm_hook_times_each_bucket_with_events_on_the_device(rt, gloo_group):
    from yoloprof.probes import comm

    torch.cuda.set_device(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))
    )
    clock = Clock(cuda=True)
    seen = []
    comm.attach(model, clock, seen.append)
    model(torch.randn(8, 256)).sum().backward()
    rt.launch(3)  # the AllReduce's kernels, queued before the callback's event
    torch.cuda.synchronize()
    assert seen and all(b.end is not None and b.end.event is not None for b in seen)
    assert sum(b.size_bytes for b in seen) == 4 * sum(p.numel() for p in model.parameters())
    assert all(clock.ms(b.start, b.end) >= 0 for b in seen) and clock.device_error is None


def test_the_link_probe_times_a_window_with_events(rt, gloo_group):
    from yoloprof.probes import allreduce_bench

    torch.cuda.set_device(0)
    args = types.SimpleNamespace(warmup=2, target_s=0.01, min_iters=3, max_iters=5)
    t_s, enqueue_s, ops = allreduce_bench.measure(dist, torch, torch.ones(1024), args, True, torch.device("cpu"))
    assert ops >= 3 and t_s >= 0 and enqueue_s is not None and enqueue_s >= 0
    assert "synchronize" in rt.calls  # every rank starts the window on an empty stream


def test_the_epoch_end_span_waits_for_the_device_work_it_queued(rt):
    from yoloprof.worker.epoch_end import EpochEndMixin

    torch.cuda.set_device(1)
    rank = types.SimpleNamespace(device=torch.device("cuda", 1), world_size=1)
    span = EpochEndMixin._span(rank, lambda: rt.launch(40, 1))  # validation's kernels, queued and left running
    assert span >= 0.039


def test_the_amp_check_reads_the_device_name(rt, monkeypatch):
    from yoloprof.probes import offline

    torch.cuda.set_device(0)
    model = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(device=torch.device("cuda", 0))]))
    assert offline.check_amp_offline(model) is True
    monkeypatch.setattr(rt, "name", "NVIDIA GeForce GTX 1660 Ti")  # Ultralytics' list: AMP breaks there
    assert offline.check_amp_offline(model) is False


def test_the_environment_lists_each_gpu_with_its_capability(rt):
    from yoloprof.probes import environment

    found = environment.gpus()
    assert [g.index for g in found] == [0, 1, 2, 3]
    assert found[0].name == "NVIDIA H200" and found[0].capability == [9, 0]
    assert found[0].mem_total_mib == pytest.approx(rt.total_mib)


def test_the_loader_probe_makes_its_gpu_current_before_building_the_loader(rt, tiny_data):
    from yoloprof.probes import loader_bench

    loader = loader_bench.build_loader(str(Path(tiny_data)), 64, 4, 0, "off", "cuda:2", "yolo26n.yaml", pin_memory=True)
    assert rt.calls[0] == "set_device(2)" and rt.current == 2
    assert loader.pin_memory is True and loader.batch_size == 4  # Ultralytics pins where it counts GPUs
    # (pinning itself needs the driver: a batch is not fetched here)


# -- the trainer's and the launcher's CUDA set-up --------------------------------------------------


def test_a_pooled_gpu_rank_runs_ultralytics_device_set_up_and_keeps_its_process_group(rt, gloo_group, monkeypatch):
    """ScanMixin._setup_ddp on CUDA: Ultralytics' own _setup_ddp (device from LOCAL_RANK in device=, made
    current, NCCL's blocking wait) runs, and in a pool the existing process group is not initialised again."""
    import ultralytics.engine.trainer as ul_trainer

    from yoloprof.worker.trainer import ScanTrainer

    monkeypatch.setattr(ul_trainer, "LOCAL_RANK", 1)
    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    t = object.__new__(ScanTrainer)  # the set-up step alone: no model, no data
    t.spec, t.world_size = spec(), 2
    t.args = types.SimpleNamespace(device="2,3")
    t._setup_ddp()
    assert t.device == torch.device("cuda", 3) and rt.current == 3
    assert dist.get_world_size() == 1  # the pool's group, not a new one
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"


def test_yoloprof_trains_rank_makes_its_gpu_current_before_the_process_group(rt, monkeypatch):
    from yoloprof.worker import ddp

    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    assert ddp.init(torch.device("cuda", 2), ddp.World()) is False  # alone: no group, but the device is set
    assert rt.calls[0] == "set_device(2)" and rt.current == 2
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"


def test_the_doctor_reports_no_cuda_error_where_torch_sees_gpus(rt):
    from yoloprof.probes import system_check

    assert system_check.torch_cuda_error() is None
    assert "init" not in rt.calls  # asking must not start CUDA in the scan process
