"""The link probe: nccl-tests' formulas, and real 2-rank gloo sweeps through torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from yoloprof.probes import allreduce_bench
from yoloprof.probes.allreduce_bench import MIN_OPS_PER_WINDOW, bus_bandwidth, iterations, ops_per_window, point, sizes
from yoloprof.scan import ceilings
from yoloprof.search import plan
from yoloprof.records import AllReduceCeiling, read_json


@pytest.mark.parametrize("n", [2, 4, 8])
def test_busbw_is_algbw_times_2_n_minus_1_over_n(n):
    p = point(8 * 2**20, 0.004, 10, n)
    assert p.algbw_gbs == 8 * 2**20 / 0.004 / 1e9
    assert p.busbw_gbs == p.algbw_gbs * 2 * (n - 1) / n
    assert bus_bandwidth(10.0, n) == 10.0 * 2 * (n - 1) / n
    assert (p.size_bytes, p.time_us, p.iters, p.is_bucket) == (8 * 2**20, pytest.approx(4000.0), 10, False)


def test_known_values():
    assert bus_bandwidth(10.0, 2) == 10.0
    assert bus_bandwidth(10.0, 4) == 15.0
    assert bus_bandwidth(10.0, 8) == 17.5
    assert point(1_000_000, 1e-3, 3, 2, is_bucket=True).algbw_gbs == pytest.approx(1.0)
    assert point(1_000_000, 1e-3, 3, 2, is_bucket=True).is_bucket


def test_one_rank_has_zero_busbw_as_in_nccl_tests():
    p = point(65536, 1e-5, 3, 1)
    assert p.busbw_gbs == 0.0 and bus_bandwidth(5.0, 1) == 0.0
    assert p.algbw_gbs == 65536 / 1e-5 / 1e9


def test_sizes_are_whole_float32_messages_with_the_buckets_marked():
    assert sizes(65536, 1048576, 4, [100001]) == [(65536, False), (100000, True), (262144, False), (1048576, False)]
    assert sizes(65536, 262144, 2, [131072, 65536]) == [(65536, True), (131072, True), (262144, False)]
    default = sizes(65536, 256 * 2**20, 2, [9306532, 1055104])
    assert len(default) == 15 and [s for s, b in default if b] == [1055104, 9306532]


def test_iterations_follow_the_target_within_the_clamp():
    assert iterations(0.01, 0.2, 3, 50) == 20
    assert iterations(1.0, 0.2, 3, 50) == 3
    assert iterations(1e-7, 0.2, 3, 50) == 50
    assert iterations(0.0, 0.2, 3, 50) == 50


def test_a_timed_window_holds_enough_back_to_back_ops():
    """Defect 9: never fewer than MIN_OPS_PER_WINDOW, and at least a millisecond of ops when one is short."""
    assert MIN_OPS_PER_WINDOW >= 20
    assert ops_per_window(1.0, 0.2, 3, 50) == MIN_OPS_PER_WINDOW  # the old clamp gave 3
    assert ops_per_window(0.01, 0.2, 3, 50) == 20 and ops_per_window(0.002, 0.2, 3, 50) == 50
    assert ops_per_window(2e-6, 0.2, 3, 50) == 500  # a 2 us op: 1 ms of them, past --max-iters
    assert ops_per_window(0.0, 0.2, 3, 50) == allreduce_bench.MAX_OPS_PER_WINDOW  # bounded


class _Log:
    """A fake torch / torch.distributed pair that records the order of what the timing code calls."""

    def __init__(self, op_s: float):
        self.calls, self.op_s, self.now = [], op_s, 0.0
        log = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = log.now
                log.calls.append("event.record")

            def synchronize(self):
                log.calls.append("event.synchronize")

            def elapsed_time(self, other):
                return (other.t - self.t) * 1e3

        self.torch = SimpleNamespace(
            tensor=torch.tensor,
            float64=torch.float64,
            cuda=SimpleNamespace(
                Event=Event, current_device=lambda: 0, synchronize=lambda: self.calls.append("cuda.synchronize")
            ),
        )
        self.dist = SimpleNamespace(
            ReduceOp=SimpleNamespace(MAX="max"), barrier=self._barrier, all_reduce=self._all_reduce
        )

    def _barrier(self, device_ids=None):
        self.calls.append("barrier")

    def _all_reduce(self, t, op=None):
        self.calls.append("all_reduce" if op is None else "agree")
        self.now += self.op_s if op is None else 0.0

    def clock(self):
        self.calls.append("clock")
        return self.now


@pytest.mark.parametrize("cuda", [True, False])
def test_barrier_then_a_batch_of_ops_inside_the_timed_window(cuda):
    """Defect 9: every window (warm-up and timed) starts after a barrier, on GPU also after a synchronize,
    and the timed window holds at least MIN_OPS_PER_WINDOW back-to-back AllReduces and nothing else."""
    fake = _Log(op_s=1e-3)
    args = SimpleNamespace(warmup=2, target_s=0.001, min_iters=1, max_iters=2)  # the old code timed 2 ops
    t_s, enqueue_s, ops = allreduce_bench.measure(fake.dist, fake.torch, torch.zeros(4), args, cuda, "cpu", fake.clock)
    assert ops >= MIN_OPS_PER_WINDOW and t_s == pytest.approx(1e-3)
    assert (enqueue_s is not None) == cuda
    start_mark = "event.record" if cuda else "clock"
    starts = [i for i, c in enumerate(fake.calls) if c == start_mark][::2]  # each window's opening mark
    assert len(starts) == 2  # the warm-up and the timed window
    for s in starts:
        before = fake.calls[:s]
        if cuda:
            assert before[-3:] == ["barrier", "cuda.synchronize", "clock"]  # barrier, empty stream, then the window
        else:
            assert before[-1] == "barrier"
    timed = fake.calls[starts[1] + 1 :]
    timed = timed[: timed.index(start_mark)]
    assert timed == ["all_reduce"] * ops  # back to back, nothing else inside the window
    assert fake.calls.count("agree") == 2  # ops and the slowest rank's time agreed across ranks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *probe_args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        "-m",
        "yoloprof.probes.allreduce_bench",
        *probe_args,
    ]
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # torchrun's default, without its warning
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_real_gloo_sweep(tmp_path):
    out = tmp_path / "ar.json"
    proc = _torchrun(
        2,
        "--out",
        str(out),
        "--sizes-min",
        "65536",
        "--sizes-max",
        "1048576",
        "--factor",
        "4",
        "--extra-sizes",
        "100000",
        "--target-s",
        "0.02",
        "--backend",
        "auto",
        "--min-iters",
        "3",
        "--max-iters",
        "50",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    c = read_json(out, AllReduceCeiling)
    assert (c.backend, c.world_size, c.timing, c.device, c.dtype, c.nccl, c.status, c.error) == (
        "gloo",
        2,
        "host",
        "cpu",
        "float32",
        "default",
        "ok",
        None,
    )
    assert [p.size_bytes for p in c.points] == [65536, 100000, 262144, 1048576]
    assert [p.is_bucket for p in c.points] == [False, True, False, False]
    for p in c.points:
        assert p.time_us > 0 and isinstance(p.iters, int)
        assert p.iters >= MIN_OPS_PER_WINDOW and (p.iters <= 50 or p.iters * p.time_us / 1e6 < 2e-3)  # the floor
        assert p.enqueue_us is None  # host-timed on CPU: the enqueue is the op
        assert p.algbw_gbs == pytest.approx(p.size_bytes / (p.time_us / 1e6) / 1e9, rel=1e-9)
        assert p.busbw_gbs == pytest.approx(p.algbw_gbs, rel=1e-12)  # 2 ranks: 2(n-1)/n = 1
    # rank 0 prints one summary line per size and nothing else on stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(c.points) and all(" B " in ln and "GB/s" in ln for ln in lines)
    assert "(model bucket)" in lines[1] and sum("(model bucket)" in ln for ln in lines) == 1


@pytest.mark.slow
def test_bad_settings_are_recorded_as_an_error_and_exit_1(tmp_path):
    out = tmp_path / "ar.json"
    proc = _torchrun(2, "--out", str(out), "--factor", "1", "--nccl-preset", "ring")
    assert proc.returncode != 0
    data = json.loads(out.read_text())
    assert data["status"] == "error" and "--factor" in data["error"] and "\n" not in data["error"]
    assert (data["backend"], data["nccl"], data["world_size"], data["points"]) == ("gloo", "ring", 2, [])


@pytest.mark.slow
def test_scan_side_runner_writes_the_link_ceiling(tmp_path, _private_cache):
    hw = plan.Hardware("cpu", 2, [], 2, 0)
    c = ceilings.allreduce(
        tmp_path,
        hw=hw,
        preset="default",
        bucket_sizes=[100000],
        cache_dir=_private_cache,
        sizes_max=262144,
        target_s=0.01,
    )
    assert c.status == "ok" and [p.size_bytes for p in c.points] == [65536, 100000, 131072, 262144]
    assert read_json(tmp_path / "allreduce-default.json", AllReduceCeiling) == c


def test_the_link_table_flags_a_window_the_host_may_have_timed():
    from rich.console import Console

    from yoloprof.reports import terminal
    from yoloprof.records import AllReducePoint

    pts = [
        point(65536, 10e-6, 100, 2, enqueue_s=9.5e-6),
        point(1 << 20, 100e-6, 20, 2, True, enqueue_s=10e-6),
        point(1 << 22, 1e-3, 20, 2),
    ]
    assert pts[0].enqueue_us == pytest.approx(9.5) and pts[2].enqueue_us is None
    c = AllReduceCeiling("nccl", 2, "default", "cuda", "float32", "cuda_event", pts)
    console = Console(width=200, record=True)
    console.print(terminal.allreduce_table(c))
    rows = [ln for ln in console.export_text().splitlines() if "KiB" in ln or "MiB" in ln]
    assert "host-bound?" in rows[0] and "host-bound?" not in rows[1] + rows[2] and "model bucket" in rows[1]
    assert AllReducePoint(1, 1.0, 1.0, 1.0, 1).enqueue_us is None  # the field has a default: older records load
