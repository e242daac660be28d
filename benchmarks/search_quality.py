"""Does `--strategy auto` find what the full grid finds, in a fraction of its time?

    python benchmarks/search_quality.py [--out runs/yoloprof/bench-search] [--budget 5m] [-- SCAN ARGS]

SCAN ARGS go to the auto scan (say `-- --batch 8,16,32,64,128` for a wider space); the grid then
runs every combination of the space auto recorded.

Runs, on this machine, the default auto scan (ceilings, search, repeats) and then the grid over the
same space (every combination of the values auto may try, without ceilings), then prints:
- whether auto's recommended configuration is in the grid's tied group (the configurations not
  beyond the noise of the grid's fastest), or within 3% of the grid's fastest as the grid measured
  it, and the ratio of best images/s (auto's recommendation as the grid measured it, over the
  grid's fastest);
- the ratio of wall times, auto over grid (target: at most 1/3).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yoloprof import pipeline  # noqa: E402

BIN = Path(sys.executable).parent / "yoloprof"


def _scan(out: Path, *args: str) -> float:
    if out.exists():
        shutil.rmtree(out)
    start = time.monotonic()
    proc = subprocess.run([str(BIN), "scan", "--device", "cpu", "--nproc", "2", "--out", str(out), *args])
    if proc.returncode != 0:
        raise SystemExit(f"search_quality: the scan into {out} exited {proc.returncode}")
    return time.monotonic() - start


def _show(values: list) -> str:
    return ",".join({True: "on", False: "off"}.get(v, str(v)) if isinstance(v, bool) else str(v) for v in values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/yoloprof/bench-search")
    ap.add_argument("--budget", default=None, help="auto's --budget (its default when not given)")
    ap.add_argument("scan_args", nargs="*", help="more arguments for the auto scan (after --)")
    args = ap.parse_args()
    root = Path(args.out)
    auto_dir, grid_dir = root / "auto", root / "grid"
    auto_s = _scan(auto_dir, *(["--budget", args.budget] if args.budget else []), *args.scan_args)
    auto = pipeline.collect(auto_dir)
    space = json.loads((auto_dir / "scan.json").read_text())["axes"]  # the space auto searched
    lists = []
    for knob, flag in (("batch", "--batch"), ("workers", "--workers"), ("cache", "--cache")):
        lists += [flag, _show(space[knob])]
    grid_s = _scan(grid_dir, "--strategy", "grid", "--no-ceilings", "--no-defaults", *lists)
    grid = pipeline.collect(grid_dir)
    pick = next(r for r in auto.results if r.trial_id == auto.ranking.best_trial_id)
    by_knobs = {(r.knobs, r.world_size): r for r in grid.results if r.status == "ok"}
    fastest = next(r for r in grid.results if r.trial_id == grid.ranking.fastest_trial_id)
    twin = by_knobs.get((pick.knobs, pick.world_size))
    tied = set(grid.ranking.tied or [grid.ranking.fastest_trial_id])
    print(f"\nspace: {', '.join(f'{k} {_show(v)}' for k, v in space.items())}")
    print(
        f"auto: {len(auto.results)} trials in {auto_s / 60:.1f} min; recommends {pick.trial_id} "
        f"({pick.img_per_s:.1f} img/s in the auto scan)"
    )
    print(
        f"grid: {len(grid.results)} trials in {grid_s / 60:.1f} min; fastest {fastest.trial_id} "
        f"({fastest.img_per_s:.1f} img/s); tied with it: {', '.join(sorted(tied))}"
    )
    if twin is None:
        print("auto's recommendation is not in the grid (outside the space?)")
        return 1
    ratio = twin.img_per_s / fastest.img_per_s
    in_tied = twin.trial_id in tied
    print(
        f"best images/s, auto's pick as the grid measured it / grid's fastest: {ratio:.3f} "
        f"({'in the grid tied group' if in_tied else 'not in the tied group'}"
        f"{', within 3%' if ratio >= 0.97 else ''})"
    )
    print(f"wall time, auto / grid: {auto_s / grid_s:.2f} (target <= 0.33)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
