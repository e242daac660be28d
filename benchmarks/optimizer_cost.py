"""What an optimizer step costs: SGD, AdamW and MuSGD on the same model and batch, side by side.

    python benchmarks/optimizer_cost.py [--model yolo26n.yaml] [--imgsz 128] [--batch 8] [--rounds 2]
        [--steps 20] [--warmup 5] [--nbs N] [--optimizers SGD,AdamW,MuSGD] [--gpu 0] [--out DIR]

Why: without --optimizer a scan's trials run Ultralytics' `auto`, resolved for the planned run, and a long run
gets MuSGD, which orthogonalises every conv filter's update (5 Newton-Schulz iterations in bfloat16) on each
optimizer step. This shows what that step costs against SGD's and AdamW's on one device.

How: compute-mode trials (yoloprof.scan.ceilings.compute_specs: one rank, one real batch already on the
device, no data loading; Ultralytics' own loss, backward and optimizer_step), one per optimizer, interleaved
A B C A B C over --rounds so drift of the machine hits every optimizer alike. AdamW and MuSGD are built through
Ultralytics' auto (TrialSpec.optimizer_iterations), as a default scan's trials build them, SGD by name; each
trial's ranks read back what was built. nbs defaults to the batch (no gradient accumulation), so every
measured step steps the optimizer and gives a sample.

Prints per optimizer: optimizer_ms (the mean over the measured steps that stepped the optimizer), step_ms
(the mean over every measured step), each with a 95% interval (batch means: blocks of consecutive steps within
a run, pooled over the rounds, Student's t), and the optimizer's cost per training step at Ultralytics' nbs 64
(optimizer_ms / round(64 / batch), the steps that only accumulate costing none); then each optimizer against
SGD as ratios with 95% intervals. A markdown table for README.md comes last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yoloprof import paths  # noqa: E402
from yoloprof.analysis.intervals import MIN_BLOCK_STEPS, t975  # noqa: E402
from yoloprof.analysis.optimizer import MUSGD_PAST  # noqa: E402

# An auto pick is built through auto with iterations on its side of the threshold (TrialSpec.optimizer_iterations)
THROUGH_AUTO = {"AdamW": 1, "MuSGD": MUSGD_PAST + 1}


# -- pure helpers (tests/test_benchmarks_parse.py) -------------------------------------------------------------
def block_means(series: Sequence[Sequence[float]], block: int = MIN_BLOCK_STEPS) -> list[float]:
    """Means of consecutive blocks of `block` values within each run's series (a run's leftover values that fill
    no block are left out), pooled over the runs: nearly independent values for an interval."""
    out = []
    for xs in series:
        for i in range(len(xs) // block):
            chunk = xs[i * block : (i + 1) * block]
            out.append(sum(chunk) / len(chunk))
    return out


@dataclasses.dataclass
class Mean:
    mean: float
    se: float  # standard error of the mean, from the block means
    df: int  # degrees of freedom of that standard error (blocks - 1)
    n: int  # values behind the mean

    @property
    def half(self) -> float:
        return t975(self.df) * self.se

    def text(self, fmt: str = ".1f") -> str:
        if not math.isfinite(self.half):
            return f"{self.mean:{fmt}} (no interval)"
        return f"{self.mean:{fmt}} ({self.mean - self.half:{fmt}}-{self.mean + self.half:{fmt}})"


def mean_of(series: Sequence[Sequence[float]], block: int = MIN_BLOCK_STEPS) -> Optional[Mean]:
    """The mean of every value of every run, with the standard error of the pooled block means."""
    values = [x for xs in series for x in xs]
    if not values:
        return None
    blocks = block_means(series, block)
    if len(blocks) < 2:
        return Mean(sum(values) / len(values), math.inf, 0, len(values))
    m = sum(blocks) / len(blocks)
    sd = math.sqrt(sum((b - m) ** 2 for b in blocks) / (len(blocks) - 1))
    return Mean(sum(values) / len(values), sd / math.sqrt(len(blocks)), len(blocks) - 1, len(values))


def ratio(a: Mean, b: Mean) -> tuple[float, float, float]:
    """a / b with a 95% interval (delta method on the two relative standard errors, the smaller df)."""
    r = a.mean / b.mean
    rel = math.sqrt((a.se / a.mean) ** 2 + (b.se / b.mean) ** 2)
    half = t975(min(a.df, b.df)) * rel
    return r, r * (1 - half), r * (1 + half)


def per_training_step(optimizer_ms: float, batch: int, nbs: int = 64) -> float:
    """An optimizer step's cost spread over the steps Ultralytics takes between two of them at nbs 64."""
    return optimizer_ms / max(round(nbs / batch), 1)


# -- the measurement ----------------------------------------------------------------------------------------
def _run(spec, out: Path) -> tuple[list[float], list[float], str]:
    """(optimizer_ms of the measured steps that stepped, step_ms of every measured step, the optimizer built)."""
    from yoloprof.analysis import aggregate
    from yoloprof.scan import launch

    tdir = out / spec.trial_id
    if tdir.exists():
        shutil.rmtree(tdir)
    launch.run_trial(spec, tdir, cache_dir=paths.cache_dir())
    ranks = aggregate.read_ranks(tdir)
    if not ranks or ranks[0].end is None or ranks[0].end.status != "ok":
        end = ranks[0].end if ranks else None
        raise SystemExit(
            f"optimizer_cost: {spec.trial_id} did not finish ({end.error if end else 'no record'}); see {tdir}"
        )
    r = ranks[0]
    steady = [s for s in r.steps if not s.warmup and not s.epoch_boundary]
    opt = [s.optimizer_ms for s in steady if s.optimizer_stepped and s.optimizer_ms is not None]
    return opt, [s.step_ms for s in steady], r.info.optimizer_effective or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="measured steps per trial")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--nbs", type=int, help="nominal batch size (default: --batch, so every step steps the optimizer)")
    ap.add_argument("--optimizers", default="SGD,AdamW,MuSGD")
    ap.add_argument("--gpu", type=int, help="a CUDA device (default: CPU)")
    ap.add_argument("--amp", action="store_true", help="fp16 AMP on a GPU (default fp32)")
    ap.add_argument("--out", default="runs/yoloprof/bench-optimizer-cost")
    args = ap.parse_args()

    from yoloprof.scan import launch

    os.environ.update(launch.offline_env(paths.cache_dir()))
    from yoloprof.data.dataset import SyntheticSpec, ensure
    from yoloprof.scan import ceilings
    from yoloprof.search import plan

    data = str(ensure(paths.cache_dir(), SyntheticSpec()))
    device = "cuda" if args.gpu is not None else "cpu"
    hw = plan.Hardware(
        device, 1, [args.gpu] if args.gpu is not None else [], os.cpu_count() or 1, 1 if args.gpu is not None else 0
    )
    nbs = args.nbs or args.batch
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    base = {}
    for name in names:
        (spec,) = ceilings.compute_specs(
            hw,
            [args.batch],
            [bool(args.amp and device == "cuda")],
            model=args.model,
            data=data,
            imgsz=args.imgsz,
            optimizer=name,
            warmup=args.warmup,
            steps=args.steps,
        )
        base[name] = dataclasses.replace(spec, overrides={"nbs": nbs}, optimizer_iterations=THROUGH_AUTO.get(name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opt_ms = {n: [] for n in names}
    step_ms = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:  # A B C, A B C: drift hits every optimizer alike
            spec = dataclasses.replace(base[name], trial_id=f"{name.lower()}-r{r + 1}")
            o, s, built = _run(spec, out)
            if built.lower() != name.lower():
                raise SystemExit(f"optimizer_cost: {spec.trial_id} built {built}, not {name}")
            opt_ms[name].append(o)
            step_ms[name].append(s)
            print(
                f"round {r + 1} {name:6s}: optimizer {sum(o) / len(o):7.1f} ms over {len(o)} steps, "
                f"step {sum(s) / len(s):7.1f} ms over {len(s)} steps (built {built})",
                flush=True,
            )

    print(
        f"\n{args.model}, imgsz {args.imgsz}, batch {args.batch}, nbs {nbs} (accumulate "
        f"{max(round(nbs / args.batch), 1)}), {device}{' AMP' if args.amp and device == 'cuda' else ' fp32'}, "
        f"1 rank, compute mode; {args.rounds} rounds x {args.warmup} warm-up + {args.steps} measured steps, "
        f"interleaved {' '.join(names)}"
    )
    stats = {n: (mean_of(opt_ms[n]), mean_of(step_ms[n])) for n in names}
    rows = [
        "| optimizer | optimizer_ms per optimizer step (95%) | step_ms (95%) | optimizer share of the step | "
        "per training step at nbs 64 |",
        "|---|---|---|---|---|",
    ]
    for n, (o, s) in stats.items():
        share = f"{100 * o.mean / s.mean:.0f}%" if o and s else "n/a"
        amort = f"{per_training_step(o.mean, args.batch):.1f} ms" if o else "n/a"
        rows.append(f"| {n} | {o.text() if o else 'n/a'} | {s.text() if s else 'n/a'} | {share} | {amort} |")
    ref = "SGD" if "SGD" in stats else names[0]
    ratios = []
    for n, (o, s) in stats.items():
        if n == ref or not (o and s and stats[ref][0] and stats[ref][1]):
            continue
        ro, lo, hi = ratio(o, stats[ref][0])
        rs, slo, shi = ratio(s, stats[ref][1])
        ratios.append(
            f"{n}/{ref}: optimizer_ms {ro:.2f}x (95% {lo:.2f}-{hi:.2f}), step_ms {rs:.2f}x (95% {slo:.2f}-{shi:.2f})"
        )
    print("\n".join(rows))
    print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
