"""What a trial costs beyond its steps: rank pools against a torchrun launch per trial, side by side.

    python benchmarks/trial_cost.py [--rounds 3] [--trials 4] [--batch 16] [--workers 0] [--out DIR]

Runs the same configuration (the CPU default: 2 gloo ranks, the default model, imgsz 128, the built-in data)
as `--trials` trials in one rank pool, then as `--trials` trials with a launch each, and repeats
that pair `--rounds` times, alternating which goes first, so drift of the machine hits both alike.
Prints, per way: the wall time of a round over its trials (start-up and teardown included), the
time of the steps themselves (warm-up and measured, slowest rank), the fixed cost per trial (the
difference) and its share of a trial's wall, and images/s of the measured steps. Then the ratio of
images/s (pools over launches) with a 95% interval from the per-trial figures: equal within the
noise is what the pools must show. Target: fixed cost under 20% of a default trial's wall.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from yoloprof import paths  # noqa: E402
from yoloprof.analysis.intervals import t975  # noqa: E402
from yoloprof.records import Knobs  # noqa: E402
from yoloprof.scan import launch, orchestrate, runner  # noqa: E402
from yoloprof.search import plan  # noqa: E402


def _steps_s(tdir: Path) -> float:
    """Warm-up and measured steps of the slowest rank, in seconds."""
    per_rank = []
    for f in tdir.glob("rank*.jsonl"):
        steps = [json.loads(x) for x in f.read_text().splitlines() if x.startswith('{"kind": "step"')]
        per_rank.append(sum(s["step_ms"] for s in steps) / 1e3)
    return max(per_rank) if per_rank else math.nan


def _round(out: Path, ctx, meta, knobs: Knobs, n: int, reuse: bool, first: int, args) -> dict:
    specs = [
        plan.spec_for(
            knobs,
            first + i,
            ctx.hw,
            model=ctx.model,
            data=ctx.dataset.data,
            imgsz=ctx.imgsz,
            optimizer="SGD",
            warmup=args.warmup,
            steps=args.steps,
        )
        for i in range(n)
    ]
    start = time.monotonic()
    runner.execute(out, specs, meta, launch.HangPolicy(), Console(file=io.StringIO()), reuse=reuse)
    wall = time.monotonic() - start
    results = [json.loads((paths.trial_dir(out, s.trial_id) / "result.json").read_text()) for s in specs]
    bad = [r["trial_id"] for r in results if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"trial_cost: {bad[0]} did not finish; see {paths.trial_dir(out, bad[0])}")
    steps = sum(_steps_s(paths.trial_dir(out, s.trial_id)) for s in specs)
    return {"wall_s": wall, "steps_s": steps, "n": n, "img_per_s": [r["img_per_s"] for r in results]}


def _ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a)/mean(b) with a 95% interval (delta method on the relative standard errors)."""
    ma, mb = statistics.mean(a), statistics.mean(b)
    ra = statistics.stdev(a) / ma / math.sqrt(len(a))
    rb = statistics.stdev(b) / mb / math.sqrt(len(b))
    half = t975(min(len(a), len(b)) - 1) * math.sqrt(ra**2 + rb**2)
    r = ma / mb
    return r, r * (1 - half), r * (1 + half)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="runs/yoloprof/bench-trial-cost")
    args = ap.parse_args()
    console = Console()
    req = orchestrate.ScanRequest(
        device="cpu",
        nproc=2,
        strategy="grid",
        batch=str(args.batch),
        workers=str(args.workers),
        precision="off",
        no_ceilings=True,
    )
    ctx = orchestrate.prepare(req, console)
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    (out / "trials").mkdir(parents=True)
    from yoloprof.records import ScanMeta

    meta = ScanMeta(
        "bench",
        time.time(),
        [],
        ctx.hw.device,
        ctx.hw.world_size,
        ctx.hw.gpus,
        ctx.model,
        ctx.imgsz,
        "SGD",
        args.warmup,
        args.steps,
        ctx.dataset,
        {},
        [],
        [],
        ctx.env,
        [],
    )
    knobs = Knobs(args.batch, args.workers, False, False, "off", "default")
    ways = {"pool": [], "launch": []}
    index = 1
    for r in range(args.rounds):
        order = ("pool", "launch") if r % 2 == 0 else ("launch", "pool")
        for way in order:
            ways[way].append(_round(out, ctx, meta, knobs, args.trials, way == "pool", index, args))
            index += args.trials
            w = ways[way][-1]
            console.print(f"round {r + 1} {way:6s}: {w['n']} trials in {w['wall_s']:.1f} s, steps {w['steps_s']:.1f} s")
    console.print(
        f"\n{knobs}, {ctx.hw.world_size} {ctx.hw.device} ranks, imgsz {ctx.imgsz}, "
        f"{args.warmup} warm-up + {args.steps} measured steps; {args.rounds} rounds x {args.trials} trials each way"
    )
    summary = {}
    for way, rounds in ways.items():
        n = sum(x["n"] for x in rounds)
        wall = sum(x["wall_s"] for x in rounds) / n
        fixed = (sum(x["wall_s"] for x in rounds) - sum(x["steps_s"] for x in rounds)) / n
        ips = [v for x in rounds for v in x["img_per_s"]]
        summary[way] = ips
        console.print(
            f"{way:6s}: wall {wall:5.1f} s a trial, fixed cost {fixed:5.1f} s a trial "
            f"({100 * fixed / wall:4.1f}% of its wall), images/s {statistics.mean(ips):.1f} "
            f"(sd {statistics.stdev(ips):.1f}, {len(ips)} trials)"
        )
    r, lo, hi = _ratio(summary["pool"], summary["launch"])
    same = lo <= 1.0 <= hi
    console.print(
        f"images/s, pool / launch: {r:.3f} (95% interval {lo:.3f}-{hi:.3f}): "
        + ("equal within the noise" if same else "differs beyond the noise")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
