"""How much of the CUDA-only code does the test suite execute? Run on demand (no GPU needed):

    .venv/bin/python benchmarks/cuda_coverage.py [--pytest-args "-q -x tests/test_step_probe.py"] [--list] [--json F]
    .venv/bin/python benchmarks/cuda_coverage.py --from-data F.coverage [--list] [--json F]   # no re-run
    .venv/bin/python benchmarks/cuda_coverage.py --find-only [--list] [--json F]              # the lines alone

1. Finds the CUDA-only lines of the product code (yoloprof/, probes/, reports/; not tests/, not
   benchmarks/) with `ast`: the statements that run only when the work is on a CUDA device.
2. Runs pytest (default: the whole `tests` folder) under coverage, subprocesses included, and
   prints per file how many CUDA-only lines ran and which never did, then the total:
   `CUDA-only lines executed by the suite: 123 of 150 (82%)`.

Exit status: pytest's (the figures are printed either way), 0 with --from-data / --find-only.

## Subprocesses

Ranks and probes run as `python -m torch.distributed.run ... -m yoloprof.worker`, `-m probes....`: they
are measured through coverage 7.10+'s `[run] patch = subprocess` (coverage's own `a1_coverage.pth`,
installed with coverage, starts measuring in any Python child that inherits COVERAGE_PROCESS_CONFIG),
`patch = _exit` (the pooled rank ends with `os._exit`), `sigterm = true` (torchrun stops ranks with
SIGTERM) and `concurrency = thread, multiprocessing` (DataLoader workers). Every process writes its own
data file (`parallel = true`) into a temporary folder, combined afterwards. A process that dies by
SIGKILL (a hang test's kill, the orphan guard) leaves nothing: its lines count as not executed.
The run prints how many processes wrote data, and how many CUDA-only lines only subprocesses ran.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # cuda_lines beside this file, however it was started or loaded
    sys.path.insert(0, str(HERE))

import cuda_lines  # noqa: E402  (the finder; its docstring holds the rules)
from cuda_lines import RULES, find_cuda_lines, statement_parser  # noqa: E402

ROOT = HERE.parent
PRODUCT_DIRS = ("yoloprof", "probes", "reports")
DEFAULT_PYTEST_ARGS = "-q tests"


# -- 1. the product files' CUDA-only lines (the finder is cuda_lines.py) --------------------------
def product_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for d in PRODUCT_DIRS for p in (root / d).rglob("*.py"))


def find_tree(root: Path = ROOT) -> dict[str, dict[int, str]]:
    """Every product file with CUDA-only lines: relative path -> {line: rule}."""
    out = {}
    for path in product_files(root):
        found = find_cuda_lines(path.read_text())
        if found:
            out[path.relative_to(root).as_posix()] = found
    return out


def ranges(lines: Iterable[int], statements: Optional[Iterable[int]] = None) -> str:
    """`12-15, 20`: runs of consecutive statements (non-statement lines between them do not break a run)."""
    lines = sorted(set(lines))
    order = sorted(set(statements) | set(lines)) if statements is not None else None
    pos = {s: i for i, s in enumerate(order)} if order else None
    out, start, prev = [], None, None
    for line in lines:
        adjacent = prev is not None and (pos[line] == pos[prev] + 1 if pos else line == prev + 1)
        if not adjacent:
            if start is not None:
                out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = line
        prev = line
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


# -- 2. the intersection --------------------------------------------------------------------------
@dataclass
class FileFigures:
    path: str
    lines: dict[int, str]  # CUDA-only line -> rule
    executed: set[int] = field(default_factory=set)  # the CUDA-only lines that ran
    only_in_subprocesses: set[int] = field(default_factory=set)

    @property
    def total(self) -> int:
        return len(self.lines)

    @property
    def missing(self) -> list[int]:
        return sorted(set(self.lines) - self.executed)


def intersect(
    cuda: dict[str, dict[int, str]], executed: dict[str, set[int]], main_process: Optional[dict[str, set[int]]] = None
) -> list[FileFigures]:
    """Per file: its CUDA-only lines and which of them the suite ran. `executed` holds every line any
    process ran (coverage's numbering); `main_process`, when given, the pytest process's own lines."""
    out = []
    for path in sorted(cuda):
        ran = set(cuda[path]) & executed.get(path, set())
        sub = ran - main_process.get(path, set()) if main_process is not None else set()
        out.append(FileFigures(path, cuda[path], ran, sub))
    return out


def percent(n: int, total: int) -> str:
    return f"{100.0 * n / total:.0f}%" if total else "n/a"


def totals(figures: list[FileFigures]) -> tuple[int, int]:
    return sum(len(f.executed) for f in figures), sum(f.total for f in figures)


def by_rule(figures: list[FileFigures]) -> dict[str, tuple[int, int]]:
    out = {}
    for rule in RULES:
        lines = [(f, n) for f in figures for n, r in f.lines.items() if r == rule]
        if lines:
            out[rule] = (sum(n in f.executed for f, n in lines), len(lines))
    return out


def summary_line(figures: list[FileFigures]) -> str:
    done, total = totals(figures)
    return f"CUDA-only lines executed by the suite: {done} of {total} ({percent(done, total)})"


# -- running the suite under coverage ------------------------------------------------------------
def rcfile_text(data_file: Path, root: Path = ROOT) -> str:
    source = "\n".join(f"    {root / d}" for d in PRODUCT_DIRS)
    return (
        f"[run]\ndata_file = {data_file}\nparallel = True\nsource =\n{source}\n"
        "concurrency =\n    thread\n    multiprocessing\npatch =\n    subprocess\n    _exit\nsigterm = True\n"
        # Children that run no product code (torchrun's launcher, bash, `python -c`) must not print
        # warnings into the output a test reads.
        "disable_warnings =\n    no-data-collected\n    module-not-measured\n    module-not-imported\n"
        "    already-imported\n"
    )


def relative(path: str, root: Path = ROOT) -> Optional[str]:
    """A measured file -> its path in this tree (data from another checkout matches by its tail)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        pass
    parts = p.parts
    for i, part in enumerate(parts):
        if part in PRODUCT_DIRS and (root.joinpath(*parts[i:])).is_file():
            return "/".join(parts[i:])
    return None


def read_lines(data_file: Path, root: Path = ROOT) -> dict[str, set[int]]:
    """The raw lines a coverage data file holds, per product file (relative path)."""
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    out: dict[str, set[int]] = {}
    for f in data.measured_files():
        rel = relative(f, root)  # Python files only: Jinja measures its templates under their own names
        if rel is not None and rel.endswith(".py") and rel.split("/")[0] in PRODUCT_DIRS:
            out.setdefault(rel, set()).update(data.lines(f) or ())
    return out


def normalise(raw: dict[str, set[int]], root: Path = ROOT) -> dict[str, set[int]]:
    """Measured lines -> statement first lines, as coverage's own report maps them."""
    out = {}
    for rel, lines in raw.items():
        if not (root / rel).read_text().strip():
            continue
        parser = statement_parser((root / rel).read_text())
        out[rel] = parser.first_lines(lines)
    return out


@dataclass
class SuiteRun:
    data_file: Path
    pytest_rc: int
    processes: int  # data files written: the pytest process and every measured subprocess
    main_lines: Optional[dict[str, set[int]]]  # the pytest process's own lines


def run_suite(pytest_args: list[str], workdir: Path, root: Path = ROOT) -> SuiteRun:
    """pytest under coverage, its subprocesses measured too; the data combined in workdir."""
    import coverage

    data_file = workdir / ".coverage"
    rc = workdir / "coveragerc"
    rc.write_text(rcfile_text(data_file, root))
    cmd = [sys.executable, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest", *pytest_args]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=root)
    pytest_rc = proc.wait()
    parts = sorted(workdir.glob(".coverage.*"))
    main = [p for p in parts if f".pid{proc.pid}." in p.name]
    main_lines = None
    if main:
        main_lines = {}
        for p in main:
            for rel, lines in read_lines(p, root).items():
                main_lines.setdefault(rel, set()).update(lines)
        main_lines = normalise(main_lines, root)
    cov = coverage.Coverage(config_file=str(rc))
    if parts:
        cov.combine(keep=False)
        cov.save()
    else:
        print("no process wrote coverage data: every CUDA-only line counts as not executed", flush=True)
    return SuiteRun(data_file, pytest_rc, len(parts), main_lines)


# -- output --------------------------------------------------------------------------------------
def print_found(cuda: dict[str, dict[int, str]], show_list: bool, root: Path = ROOT) -> None:
    width = max((len(p) for p in cuda), default=10)
    print("CUDA-only lines per file:")
    for path, lines in cuda.items():
        print(f"  {path:<{width}} {len(lines):>4}")
        if show_list:
            stmts = statement_parser((root / path).read_text()).statements
            for rule in RULES:
                mine = [n for n, r in lines.items() if r == rule]
                if mine:
                    print(f"      {rule:<6} {path}:{ranges(mine, stmts)}")
    print(f"  {'total':<{width}} {sum(len(v) for v in cuda.values()):>4} in {len(cuda)} files")


def print_figures(figures: list[FileFigures], show_list: bool, root: Path = ROOT) -> None:
    width = max((len(f.path) for f in figures), default=10)
    print(f"\n  {'file':<{width}} {'ran':>4} {'of':>4} {'':>5}  never executed")
    for f in figures:
        stmts = statement_parser((root / f.path).read_text()).statements
        print(
            f"  {f.path:<{width}} {len(f.executed):>4} {f.total:>4} {percent(len(f.executed), f.total):>5}  "
            f"{ranges(f.missing, stmts)}".rstrip()
        )
        if show_list and f.only_in_subprocesses:
            print(f"  {'':<{width}} only in subprocesses: {ranges(f.only_in_subprocesses, stmts)}")
    rules = by_rule(figures)
    print("  by rule: " + ", ".join(f"{r} {a}/{b}" for r, (a, b) in rules.items()))
    done, total = (sum(rules[r][i] for r in rules if r != "ifexp") for i in (0, 1))
    print(
        f"  branches and functions alone (rules a-c, no conditional expressions): {done} of {total} "
        f"({percent(done, total)})"
    )


def to_json(
    cuda: dict[str, dict[int, str]], figures: Optional[list[FileFigures]], meta: dict, root: Path = ROOT
) -> dict:
    files = {}
    fig = {f.path: f for f in figures or []}
    for path, lines in cuda.items():
        stmts = statement_parser((root / path).read_text()).statements
        entry = {
            "count": len(lines),
            "lines": sorted(lines),
            "ranges": ranges(lines, stmts),
            "rules": {str(n): r for n, r in sorted(lines.items())},
        }
        if path in fig:
            f = fig[path]
            entry.update(
                executed=sorted(f.executed),
                missing=sorted(f.missing),
                missing_ranges=ranges(f.missing, stmts),
                only_in_subprocesses=sorted(f.only_in_subprocesses),
            )
        files[path] = entry
    out = {"meta": meta, "files": files, "cuda_only_lines": sum(len(v) for v in cuda.values())}
    if figures is not None:
        done, total = totals(figures)
        rules = {r: {"executed": a, "total": b} for r, (a, b) in by_rule(figures).items()}
        out.update(executed=done, total=total, by_rule=rules)
    return out


def description() -> str:
    """This docstring with the finder's rules in their place, as one page."""
    rules = cuda_lines.__doc__[cuda_lines.__doc__.index("## The rules") :]
    return __doc__.replace("## Subprocesses", rules + "\n## Subprocesses", 1)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="benchmarks/cuda_coverage.py",
        description=description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--pytest-args", default=DEFAULT_PYTEST_ARGS, help=f"one string (default {DEFAULT_PYTEST_ARGS!r})")
    ap.add_argument("--from-data", type=Path, help="a combined .coverage data file to read instead of running pytest")
    ap.add_argument("--save-data", type=Path, help="keep the combined .coverage data file here (for --from-data)")
    ap.add_argument("--find-only", action="store_true", help="only find and print the CUDA-only lines")
    ap.add_argument("--list", action="store_true", help="print the CUDA-only lines as path:line ranges, per rule")
    ap.add_argument("--json", type=Path, help="write the lines (and the figures) here")
    args = ap.parse_args(argv)

    cuda = find_tree()
    print_found(cuda, args.list)
    meta: dict = {"root": str(ROOT)}
    figures, rc = None, 0
    if not args.find_only:
        if args.from_data:
            executed = normalise(read_lines(args.from_data))
            main_lines = None
            meta.update(from_data=str(args.from_data))
        else:
            with tempfile.TemporaryDirectory(prefix="cuda-coverage-") as tmp:
                run = run_suite(shlex.split(args.pytest_args), Path(tmp))
                if args.save_data:  # first: a long run's data outlives any failure below
                    args.save_data.parent.mkdir(parents=True, exist_ok=True)
                    args.save_data.write_bytes(run.data_file.read_bytes())
                executed = normalise(read_lines(run.data_file))
                main_lines, rc = run.main_lines, run.pytest_rc
            meta.update(pytest_args=args.pytest_args, pytest_rc=rc, processes_measured=run.processes)
            print(
                f"\npytest exit status {rc}; {run.processes} processes wrote coverage data "
                f"(the pytest process and {max(run.processes - 1, 0)} subprocesses)"
            )
        figures = intersect(cuda, executed, main_lines)
        print_figures(figures, args.list)
        if main_lines is not None:
            sub = sum(len(f.only_in_subprocesses) for f in figures)
            meta.update(only_in_subprocesses=sub)
            print(f"  CUDA-only lines that only subprocesses ran: {sub}")
        print(summary_line(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(cuda, figures, meta), indent=1) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
