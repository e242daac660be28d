"""One rank of DDP under torchrun with yoloprof's comm hook: the NCCL path of a trial, without Ultralytics.

    python -m torch.distributed.run --nproc-per-node=1 --nnodes=1 --master-addr=127.0.0.1 --master-port=P \\
        benchmarks/gpu_nccl_check.py --out ddp.json [--steps 6] [--cpu]

A small model in DistributedDataParallel (small buckets, so a step has several), probes.comm.attach
timing every bucket's AllReduce, a few steps timed with probes.clock.Clock(cuda=True); then
`dist.barrier(device_ids=[...])` and `destroy_process_group()`. Rank 0 writes what it saw and the
problems found to --out (also on failure) and exits 0 only when there are none. --cpu: gloo on CPU,
the same code (a smoke test of this script where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_nccl_check")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--cpu", action="store_true", help="gloo on CPU")
    args = p.parse_args(argv)
    local, rank = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("RANK", "0"))
    got: dict = {"phase": "start", "problems": []}
    problems = got["problems"]
    t0 = time.perf_counter()
    try:
        import torch
        import torch.distributed as dist
        import torch.nn.functional as F
        from torch.nn.parallel import DistributedDataParallel as DDP

        from yoloprof.probes import comm
        from yoloprof.probes.clock import Clock

        cuda = not args.cpu
        got["torch"] = torch.__version__
        if cuda:
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
            try:
                dist.init_process_group("nccl", device_id=device)  # eager NCCL init (torch >= 2.3)
            except TypeError:
                dist.init_process_group("nccl")
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo")
        got.update(phase="init", backend=dist.get_backend(), world_size=dist.get_world_size())
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 2048),
            torch.nn.ReLU(),
            torch.nn.Linear(2048, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        ).to(device)
        grad_bytes = sum(q.numel() * q.element_size() for q in model.parameters() if q.requires_grad)
        ddp = DDP(model, device_ids=[local] if cuda else None, bucket_cap_mb=0.25)
        clock = Clock(cuda=cuda)
        current: list = []
        comm.attach(ddp, clock, lambda b: current.append(b), rank)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        x = torch.randn(16, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (16,), device=device)
        steps = []
        got["phase"] = "steps"
        for i in range(args.steps):
            current = []
            a = clock.mark()
            loss = F.cross_entropy(ddp(x), y)
            b = clock.mark()
            loss.backward()
            c = clock.mark()
            opt.step()
            opt.zero_grad(set_to_none=True)
            d = clock.mark()
            steps.append((a, b, c, d, current))
        clock.synchronize()
        rows = []
        for i, (a, b, c, d, buckets) in enumerate(steps):
            spans = dict(forward_ms=clock.ms(a, b), backward_ms=clock.ms(b, c), optimizer_ms=clock.ms(c, d))
            timed = [
                dict(
                    index=t.index,
                    size_bytes=t.size_bytes,
                    end=t.end is not None,
                    allreduce_ms=clock.ms(t.start, t.end) if t.end is not None else None,
                )
                for t in buckets
            ]
            rows.append(dict(step=i, **spans, buckets=timed))
            for k, v in spans.items():
                if v is None or v < 0:
                    problems.append(f"step {i}: {k} {v}")
            if not timed:
                problems.append(f"step {i}: the comm hook saw no bucket")
            for t in timed:
                if not t["end"]:
                    problems.append(f"step {i} bucket {t['index']}: no end mark")
                elif t["allreduce_ms"] is None or t["allreduce_ms"] < 0:
                    problems.append(f"step {i} bucket {t['index']}: AllReduce {t['allreduce_ms']} ms")
            total = sum(t["size_bytes"] for t in timed)
            if timed and total != grad_bytes:
                problems.append(f"step {i}: buckets hold {total} B, the gradients {grad_bytes} B")
        counts = sorted({len(r["buckets"]) for r in rows})
        if counts and counts[-1] < 2:
            problems.append(f"one bucket a step (cap 0.25 MB, {grad_bytes} B of gradients): expected several")
        got.update(
            steps=len(rows),
            buckets_per_step=counts,
            bucket_bytes=grad_bytes,
            timing=clock.timing,
            device_error=clock.device_error,
            rows=rows,
        )
        got["phase"] = "barrier"
        if cuda:
            dist.barrier(device_ids=[local])
        else:
            dist.barrier()
        got["phase"] = "destroy"
        dist.destroy_process_group()
        got.update(phase="done", destroyed=not dist.is_initialized())
    except Exception as exc:  # noqa: BLE001 - the record says where it stopped
        traceback.print_exc()
        problems.append(f"{got['phase']}: {type(exc).__name__}: {exc}")
    got["wall_s"] = round(time.perf_counter() - t0, 2)
    if rank == 0:
        tmp = Path(args.out).with_name(f".{Path(args.out).name}.tmp")
        tmp.write_text(json.dumps(got, indent=1, default=str) + "\n")
        os.replace(tmp, args.out)
    print(f"gpu_nccl_check: {got['phase']}; " + ("; ".join(problems) if problems else "no problem"), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
