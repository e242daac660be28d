"""The link ceiling: an nccl-tests style AllReduce sweep, run in every rank by torchrun.

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N --master-addr=127.0.0.1 --master-port=P \\
        -m probes.allreduce_bench --out OUT.json [--sizes-min 65536] [--sizes-max 268435456] [--factor 2]
        [--extra-sizes 9306532,1055104] [--backend auto|nccl|gloo] [--nccl-preset NAME] [--target-s 0.2]
        [--min-iters 3] [--max-iters 50] [--warmup 2]  (ops per window: see ops_per_window)

Sizes go from 64 KiB to 256 MiB plus the model's own DDP bucket sizes (YOLO gradients are small:
latency, not bandwidth, decides their cost, so the buckets are measured exactly rather than
interpolated). Per size, as nccl-tests does: warm up, a barrier (on GPU then a synchronize, so every
rank starts together on an empty stream), then one timed window of back-to-back AllReduces (at
least MIN_OPS_PER_WINDOW, and enough to fill MIN_WINDOW_S when an op is short: see ops_per_window).
Time per operation is the window over its operations, from the slowest rank, because DDP waits for
the slowest rank too. GPU windows are timed with CUDA events (the host only enqueues); the host's own
enqueue time per op is recorded beside it (`enqueue_us`: near `time_us`, the window timed Python's
enqueue rate, not the link). CPU windows use the host clock (gloo runs the collective on the calling thread).

Rank 0 writes an AllReduceCeiling to --out, also when the sweep fails (status "error", exit 1), so
the scan records why a link ceiling is missing. Rank 0 prints one summary line per size, nothing else.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import timedelta
from typing import Optional

from yoloprof.probes import injected_costs
from yoloprof.records import AllReduceCeiling, AllReducePoint, write_json
from yoloprof.text import error_line

DTYPE_BYTES = 4  # float32


def bus_bandwidth(algbw_gbs: float, world_size: int) -> float:
    """nccl-tests' AllReduce bus bandwidth: algbw x 2(n-1)/n, the load on the busiest link.

    A ring AllReduce moves 2(n-1)/n of the message over each link, so busbw is comparable across
    rank counts and approaches the bottleneck link's speed. For one rank the factor is 0 (nothing
    crosses a link), as in nccl-tests; algbw still says what the call costs.
    """
    return algbw_gbs * 2 * (world_size - 1) / world_size


def point(
    size_bytes: int,
    time_s: float,
    iters: int,
    world_size: int,
    is_bucket: bool = False,
    enqueue_s: Optional[float] = None,
) -> AllReducePoint:
    """One size's record from its time per AllReduce (seconds, slowest rank)."""
    algbw = size_bytes / time_s / 1e9
    return AllReducePoint(
        size_bytes=size_bytes,
        time_us=time_s * 1e6,
        algbw_gbs=algbw,
        busbw_gbs=bus_bandwidth(algbw, world_size),
        iters=iters,
        is_bucket=is_bucket,
        enqueue_us=enqueue_s * 1e6 if enqueue_s is not None else None,
    )


def sizes(lo: int, hi: int, factor: int, extra: list[int]) -> list[tuple[int, bool]]:
    """(bytes, is_bucket): lo, lo*factor, ... <= hi plus the extra (bucket) sizes, each rounded down
    to whole float32 elements, sorted, de-duplicated. A bucket size that falls on the geometric
    series stays marked as a bucket."""
    out: dict[int, bool] = {}
    s = lo
    while s <= hi:
        out[s - s % DTYPE_BYTES] = False
        s *= factor
    for e in extra:
        out[e - e % DTYPE_BYTES] = True
    return sorted(out.items())


def iterations(warmup_s_per_op: float, target_s: float, min_iters: int, max_iters: int) -> int:
    """Timed iterations so that one size takes about target_s, clamped to [min_iters, max_iters]."""
    return min(max(int(target_s / max(warmup_s_per_op, 1e-9)), min_iters), max_iters)


# A timed window's fixed costs: ranks leaving the barrier apart (a few to tens of us), reading the clock or
# recording an event, and on GPU the first op of the window, which the device runs as soon as it is
# enqueued while the host still has the rest to enqueue. Spread over 20 ops (nccl-tests' default -n) and
# at least 1 ms they are a few percent of the window at most; a 2 us op gets 500 ops, not 20.
MIN_OPS_PER_WINDOW = 20
MIN_WINDOW_S = 1e-3
MAX_OPS_PER_WINDOW = 10_000  # bounds the floor when the warm-up estimate is near zero


def ops_per_window(warmup_s_per_op: float, target_s: float, min_iters: int, max_iters: int) -> int:
    """AllReduces in a size's one timed window: about target_s within [min_iters, max_iters] (what keeps the
    sweep short for large messages), but never fewer than MIN_OPS_PER_WINDOW, nor fewer than fill
    MIN_WINDOW_S (only short ops need more, so the floor costs at most a millisecond or so per size)."""
    floor = max(MIN_OPS_PER_WINDOW, math.ceil(round(MIN_WINDOW_S / max(warmup_s_per_op, 1e-9), 6)))
    return max(iterations(warmup_s_per_op, target_s, min_iters, max_iters), min(floor, MAX_OPS_PER_WINDOW))


def _check(args) -> None:
    """Refuse settings that would loop forever, divide by zero or send empty messages."""
    if args.sizes_min < DTYPE_BYTES or args.sizes_max < args.sizes_min:
        raise ValueError(f"need {DTYPE_BYTES} <= --sizes-min <= --sizes-max, got {args.sizes_min}, {args.sizes_max}")
    if args.factor < 2:
        raise ValueError(f"--factor must be >= 2, got {args.factor}")
    if any(e < DTYPE_BYTES for e in args.extra_sizes):
        raise ValueError(f"--extra-sizes must each be >= {DTYPE_BYTES} bytes, got {args.extra_sizes}")
    if args.warmup < 1 or args.min_iters < 1 or args.max_iters < args.min_iters or args.target_s <= 0:
        raise ValueError("need --warmup >= 1, 1 <= --min-iters <= --max-iters and --target-s > 0")


def _use_cuda(backend: str) -> bool:
    import torch
    import torch.distributed as dist

    if backend == "auto":
        return torch.cuda.is_available() and dist.is_nccl_available()
    return backend == "nccl"


def _start_together(dist, torch, cuda: bool) -> None:
    """Every rank leaves this together, and on GPU with nothing left on its stream: the barrier (an
    AllReduce on NCCL) is finished on this rank only when every rank has reached it."""
    if cuda:
        dist.barrier(device_ids=[torch.cuda.current_device()])
        torch.cuda.synchronize()
    else:
        dist.barrier()


def _timed(dist, torch, buf, ops: int, cuda: bool, clock=time.perf_counter) -> tuple[float, Optional[float]]:
    """(seconds per AllReduce, host seconds to enqueue one or None) on this rank: one window of `ops`
    back-to-back calls after _start_together. Nothing but the calls runs inside the window."""
    _start_together(dist, torch, cuda)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        h0 = clock()
        start.record()
        for _ in range(ops):
            dist.all_reduce(buf)
        end.record()
        enqueue_s = (clock() - h0) / ops
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / ops, enqueue_s
    t0 = clock()
    for _ in range(ops):
        dist.all_reduce(buf)
    return (clock() - t0) / ops, None


def measure(dist, torch, buf, args, cuda: bool, device, clock=time.perf_counter) -> tuple[float, Optional[float], int]:
    """One size: warm up (which also estimates an op), agree on the window's length, time it.
    Returns the slowest rank's (seconds per op, enqueue seconds per op or None, ops in the window)."""
    warm_s, _ = _timed(dist, torch, buf, args.warmup, cuda, clock)
    want = torch.tensor([ops_per_window(warm_s, args.target_s, args.min_iters, args.max_iters)], device=device)
    dist.all_reduce(want, op=dist.ReduceOp.MAX)  # every rank runs the same number of calls
    ops = int(want.item())
    t_s, enqueue_s = _timed(dist, torch, buf, ops, cuda, clock)
    t = torch.tensor([t_s, enqueue_s if enqueue_s is not None else -1.0], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's time
    return float(t[0].item()), (float(t[1].item()) if enqueue_s is not None else None), ops


def sweep(args, cuda: bool) -> AllReduceCeiling:
    import torch
    import torch.distributed as dist

    _check(args)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=10))
    n, rank = dist.get_world_size(), dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    plan = sizes(args.sizes_min, args.sizes_max, args.factor, args.extra_sizes)
    # One buffer, views per size: no allocation inside the sweep. Zeros stay zeros under SUM
    # (ones would double every call and reach inf after ~128 calls).
    big = torch.zeros(plan[-1][0] // DTYPE_BYTES, dtype=torch.float32, device=device)
    dist.all_reduce(big[:1])  # connect (NCCL creates its communicator lazily) outside any estimate
    points = []
    timed = injected_costs.LateCalls(dist, "all_reduce", injected_costs.sleeper("allreduce", rank))  # tests only
    for size, is_bucket in plan:
        buf = big[: size // DTYPE_BYTES]
        t_s, enqueue_s, iters = measure(timed, torch, buf, args, cuda, device)
        p = point(size, t_s, iters, n, is_bucket, enqueue_s)
        points.append(p)
        if rank == 0:
            print(
                f"{size:>11} B  {p.time_us:>11.1f} us  algbw {p.algbw_gbs:8.3f}  busbw {p.busbw_gbs:8.3f} GB/s"
                f"  x{iters}{'  (model bucket)' if is_bucket else ''}",
                flush=True,
            )
    return AllReduceCeiling(
        backend="nccl" if cuda else "gloo",
        world_size=n,
        nccl=args.nccl_preset,
        device=device.type,
        dtype="float32",
        timing="cuda_event" if cuda else "host",
        points=points,
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="yoloprof.probes.allreduce_bench", description="nccl-tests style AllReduce sweep")
    p.add_argument("--out", required=True, help="AllReduceCeiling JSON, written by rank 0")
    p.add_argument("--sizes-min", type=int, default=64 * 1024, help="bytes")
    p.add_argument("--sizes-max", type=int, default=256 * 2**20, help="bytes")
    p.add_argument("--factor", type=int, default=2, help="geometric step between sizes")
    p.add_argument("--extra-sizes", type=_ints, default=[], help="comma-separated bytes: the model's DDP buckets")
    p.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    p.add_argument("--nccl-preset", default="default", help="name recorded with the result (the env is the caller's)")
    p.add_argument("--target-s", type=float, default=0.2, help="about this long per size")
    p.add_argument("--min-iters", type=int, default=3, help="before the per-window floor (ops_per_window)")
    p.add_argument("--max-iters", type=int, default=50, help="ops per window, unless the floor needs more")
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from yoloprof.orphan_guard import die_with_parent

    die_with_parent()
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    cuda = False
    try:
        cuda = _use_cuda(args.backend)
        result = sweep(args, cuda)
    except Exception as exc:  # noqa: BLE001 - one line in the record, the scan goes on
        result = AllReduceCeiling(
            backend="nccl" if cuda else "gloo",
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            nccl=args.nccl_preset,
            device="cuda" if cuda else "cpu",
            dtype="float32",
            timing="cuda_event" if cuda else "host",
            points=[],
            status="error",
            error=error_line(exc),
        )
    # Before the teardown, which may block when a peer is gone. On failure every rank writes (atomically,
    # so the file is always whole): torchrun may SIGTERM rank 0 as soon as another rank exits.
    if rank == 0 or result.status != "ok":
        write_json(args.out, result)
    _destroy()
    sys.stdout.flush()
    return 0 if result.status == "ok" else 1


def _destroy() -> None:
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - already failing or finished; the record says what matters
        pass


if __name__ == "__main__":
    sys.exit(main())
