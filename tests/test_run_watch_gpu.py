"""The watched run's CUDA branch (yoloprof.worker.run_watch on a GPU rank), executed against the CUDA stand-in
(tests/fake_cuda.py): the watch's own callbacks and marks on a trainer whose device work is queued on the
stand-in's stream. It enforces what the real runtime does: a span is read only once its events completed, the
peak reset only after CUDA is initialised. The real 2-rank CPU run is in tests/test_run_watch.py."""

from __future__ import annotations

import json
import time
import types

import pytest
import torch

from fake_cuda import FakeCuda, installed
from yoloprof.worker import run_watch

STEPS, EPOCHS = 4, 2


@pytest.fixture
def rt(monkeypatch):
    with installed(FakeCuda(count=2), monkeypatch) as runtime:
        yield runtime


class _Scaler:  # GradScaler(enabled=False): the loss as it is
    def scale(self, loss):
        return loss


def _trainer(rt: FakeCuda, tmp_path):
    """What the watch touches of Ultralytics' trainer, with each phase's kernels queued on the stand-in."""
    torch.cuda.set_device(1)  # Ultralytics' DDP set-up makes the rank's GPU current before anything else
    model = torch.nn.Linear(16, 4)
    rt.alloc(3000)  # the model, the optimizer: CUDA initialised before the first epoch
    t = types.SimpleNamespace(
        device=torch.device("cuda", 1),
        model=model,
        scaler=_Scaler(),
        save_dir=str(tmp_path / "run"),
        epochs=EPOCHS,
        epoch=0,
        args=types.SimpleNamespace(close_mosaic=0),
        train_time_start=time.time(),
        saved=[],
    )
    t.preprocess_batch = lambda batch: (rt.launch(2), batch)[1]  # the copy to the device
    t.optimizer_step = lambda: rt.launch(5)
    t.save_metrics = t.saved.append
    return t


def _train(rt: FakeCuda, t, watch: run_watch.RunWatch, grow_mib: float) -> list[str]:
    """Ultralytics' loop as the callbacks see it; returns the runtime calls made while the steps ran."""
    cb = watch.callbacks()
    cb["on_train_start"](t)
    during = []
    for epoch in range(EPOCHS):
        t.epoch = epoch
        cb["on_train_epoch_start"](t)
        first = len(rt.calls)
        for _ in range(STEPS):
            cb["on_train_batch_start"](t)
            batch = t.preprocess_batch({"img": torch.zeros(8, 16)})
            rt.launch(30)  # forward and loss
            out = t.model(batch["img"])
            out.register_hook(lambda g: rt.launch(60))  # backward's kernels, before the first layer's gradient
            t.scaler.scale(out.sum()).backward()
            t.optimizer_step()
            cb["on_train_batch_end"](t)
        rt.alloc(grow_mib)  # this epoch's peak
        rt.free(grow_mib)
        during += rt.calls[first:]
        cb["on_train_epoch_end"](t)
        t.save_metrics({})
        cb["on_fit_epoch_end"](t)
    return during


def test_a_gpu_rank_times_the_run_with_events_and_reads_each_epochs_allocator_peak(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    t = _trainer(rt, tmp_path)
    during = _train(rt, t, run_watch.RunWatch(), grow_mib=2000)
    rows = [json.loads(x) for x in (tmp_path / "run" / "yoloprof" / "rank0.jsonl").read_text().splitlines()]
    start, epochs = rows[0], rows[1:]
    assert start["timing"] == "cuda_event" and start["device"] == "cuda:1"
    assert [e["epoch"] for e in epochs] == [0, 1] and all(e["timing"] == "cuda_event" for e in epochs)
    for e in epochs:  # the device's spans, read once the events completed
        assert e["steps"] == STEPS and e["images"] == 8 * STEPS
        assert e["forward_ms_mean"] == pytest.approx(30, abs=2)
        assert e["backward_ms_mean"] == pytest.approx(60, abs=2)
        assert e["optimizer_ms_mean"] == pytest.approx(5, abs=2)
        assert e["peak_mem_mib"] == 5000.0  # the allocator's reserved peak of this epoch: 3000 held + 2000
    # the peak is reset each epoch, after CUDA was initialised; nothing synchronises the device while steps run
    assert rt.calls.count("reset_peak_memory_stats(1)") == EPOCHS
    assert "synchronize" not in during


def test_the_epochs_peak_is_its_own(rt, tmp_path, monkeypatch):
    """A larger first epoch does not carry its peak into the next: the reset is per epoch."""
    monkeypatch.setenv("RANK", "0")
    t = _trainer(rt, tmp_path)
    watch = run_watch.RunWatch()
    cb = watch.callbacks()
    cb["on_train_start"](t)
    peaks = []
    for epoch, grow in enumerate((4000, 1000)):
        t.epoch = epoch
        cb["on_train_epoch_start"](t)
        rt.alloc(grow)
        rt.free(grow)
        rt.reserved[1] = rt.allocated[1]  # Ultralytics' _clear_memory between epochs empties the cache
        cb["on_train_epoch_end"](t)
        cb["on_fit_epoch_end"](t)
        peaks.append(json.loads((tmp_path / "run" / "yoloprof" / "rank0.jsonl").read_text().splitlines()[-1]))
    assert [p["peak_mem_mib"] for p in peaks] == [7000.0, 4000.0]
