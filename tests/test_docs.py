"""The README and docs/: the site builds with no broken link or anchor, the README's links land on a page
and a heading, and every flag the pages name exists (yoloprof's own, a benchmark's, or one of the other
tools' named below). A renamed flag or a moved section fails here, not in a reader's hands."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Flags of the other tools the pages show: torchrun, pip, pytest (and pytest-xdist), sbatch/srun, docker, mkdocs, ruff.
OTHERS = {
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--index-url",
    "--no-index",
    "--no-deps",
    "--target",
    "--durations",
    "--dist",
    "--cpus-per-task",
    "--ntasks-per-node",
    "--gpus-per-node",
    "--time",
    "--job-name",
    "--partition",
    "--account",
    "--exclusive",
    "--kill-on-bad-exit",
    "--nodes",
    "--ipc",
    "--shm-size",
    "--gpus",
    "--strict",
    "--fix",
    "--check",
}


def _options(p: argparse.ArgumentParser) -> set[str]:
    out = set()
    for a in p._actions:
        out.update(s for s in a.option_strings if s.startswith("--"))
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out |= _options(sub)
    return out


def known_flags() -> set[str]:
    from yoloprof import flags as cli_flags, slurm, train

    flags = _options(cli_flags.parser()) | _options(train.parser()) | _options(slurm.parser())
    for script in (ROOT / "benchmarks").glob("*.py"):  # the benchmarks' own argparse flags, as written
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", script.read_text()))
    return flags | OTHERS


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text).strip("-")


def anchors(page: Path) -> set[str]:
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            out.add(slug(line.lstrip("#")))
    return out


def test_every_flag_the_readme_and_docs_name_exists():
    known = known_flags()
    unknown = {}
    for page in [ROOT / "README.md", *PAGES]:
        for flag in set(FLAG.findall(page.read_text())) - known:
            unknown.setdefault(flag, []).append(page.name)
    assert not unknown, f"flags named in the docs that no parser has: {unknown}"


def test_the_readme_links_land_on_a_file_and_a_heading():
    text = (ROOT / "README.md").read_text()
    links = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "#"))]
    assert len(links) >= 20  # the front door points at the pages
    for target in links:
        path, _, anchor = target.partition("#")
        assert (ROOT / path).is_file(), target
        if anchor:
            assert anchor in anchors(ROOT / path), f"{target}: no heading with that anchor"
    linked = {Path(t.partition("#")[0]).name for t in links}
    assert {p.name for p in PAGES} - {"index.md"} <= linked, "a docs page the README does not link"


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300
    assert "make scan" in "\n".join(lines) and "make test" in "\n".join(lines)
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().splitlines()[-1] == "make test"  # CI runs exactly the README's test command


def test_the_slug_rule_matches_mkdocs():
    assert slug(" Checked against plain training") == "checked-against-plain-training"
    assert slug(" Training with the recommended configuration: `yoloprof train`") == (
        "training-with-the-recommended-configuration-yoloprof-train"
    )


def test_the_site_builds_strict(tmp_path):
    """mkdocs comes with the test extras; strict: a link to a missing page or anchor is an error."""
    exe = Path(sys.executable).parent / "mkdocs"
    out = subprocess.run(
        [str(exe) if exe.exists() else "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "prediction" / "index.html").is_file()
