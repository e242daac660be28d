"""No import circles between the project's modules: each stage imports only downward (records, analysis,
search, probes, reports, then the scan and the CLI above them). Every import counts, those inside functions
too (a deferred import hides a circle; it does not remove it); only `if TYPE_CHECKING:` blocks, which never
run, are left out. Static (ast): nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "yoloprof": "yoloprof",
    "probes": "yoloprof.probes",
    "reports": "yoloprof.reports",
}  # folder -> the name it installs as


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `name` imports: `from a.b import c` is a.b.c where that is a module, else a.b."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in ast.walk(node)
    }
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    found.add(full)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_a_circle_and_a_deferred_import():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(g) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    src = ROOT / "yoloprof" / "scan" / "auto.py"
    assert "yoloprof.scan.ceiling_runs" in imports(src, "yoloprof.scan.auto", set(modules()))


def test_no_import_circle_between_the_projects_modules():
    g = graph()
    assert len(g) > 100 and "yoloprof.cli" in g and "yoloprof.probes.page_cache" in g
    assert circles(g) == []


def test_no_module_imports_the_folders_by_their_repository_names():
    """probes/ and reports/ install as yoloprof.probes and yoloprof.reports: `import probes...` would work
    only from the repository's root, and would load a user's own `probes/` from theirs."""
    bad = []
    extra = {str(p.relative_to(ROOT)): p for d in ("tests", "benchmarks") for p in (ROOT / d).glob("*.py")}
    for name, path in {**modules(), **extra}.items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            bad += [f"{name}: {m}" for m in mods if m.split(".")[0] in ("probes", "reports")]
    assert bad == []
