"""Which lines of a Python source run only on a CUDA device: an `ast` reading of one source, numbered as
coverage numbers statements, so that benchmarks/cuda_coverage.py can set them against the lines the suite ran.
The rules below are also part of cuda_coverage.py's --help.

## The rules (what counts as CUDA-only)

A *CUDA test* is an expression that is true only on CUDA (positive) or false only on CUDA (negative):
- `X == "cuda"` (either side; also inside a chained comparison) is positive, `X != "cuda"` negative.
  `X in ("cuda", "gpu")` is not a CUDA test (it is how a request is parsed, on any machine).
- A CUDA *flag* used as a truth value is positive: a Name or Attribute called `cuda`, or
  `use_cuda` / `is_cuda` / `on_cuda` / `with_cuda` / `has_cuda` / `want_cuda` (any leading
  underscores): `if cuda:`, `if self.cuda and ...`, `if use_cuda:`. Names that only *mention* CUDA
  are data, not flags, and are not CUDA tests: `r.driver_cuda`, `r.torch_cuda`,
  `cuda_visible_devices`, `cuda_indices` (tuned on the tree: `elif r.driver_cuda:` in the doctor runs
  on a machine without a GPU).
- A local name that its scope only ever assigns a positive CUDA test is a flag there too:
  `n, gpu = ..., hw.device == "cuda"` ... `if gpu:` (a parameter of the same name shadows it).
- `<...>backend == "nccl"` is positive, `!=` negative: NCCL runs on CUDA devices only
  (`if args.backend == "nccl": torch.cuda.set_device(...)`). Other `== "nccl"` tests are not CUDA
  tests: `knob == "nccl"` names the NCCL-presets knob, which is planned on any machine.
- A call of `torch.cuda.is_available()` (any `<...>.cuda.is_available()`), or of a function with a
  flag name (`_cuda()`, `_use_cuda(backend)`), is positive.
- `not T` swaps positive and negative. `A and B` is positive when any operand is, negative when all
  are; `A or B` is positive only when all operands are, negative when any is. So
  `if self.cuda and not self.sync:` is CUDA-only, `if cuda or x:` is not, and
  `if not self.cuda or err is not None: return` leaves the rest of its block CUDA-only.

The CUDA-only statements:
(a) The body of an `if` / `elif` whose test is positive. For a negative test the `else` branch (an
    `elif` chain below it included); and when the body of a negative `if` always leaves the block
    (its last statement is a return / raise / continue / break, or an `if` / `with` / `try` whose
    every way out does), every statement after it in the same block:
    `if not self.cuda: return Mark(...)`, `if not torch.cuda.is_available(): return []`.
(b) The whole body of a function whose name contains `cuda` (`_cuda_event`, `_cuda_sync`), except
    the flag-named predicates (`_cuda`, `_use_cuda`: they decide whether CUDA is there, on any
    machine) and the names of functions that describe CUDA rather than run on it (names containing
    version / error / available / visible / index / count: `cuda_version`, `torch_cuda_error`).
    The `def` line itself runs at import and is not counted.
(c) The marker comment `# cuda-only` (a comment of its own or one after another on the line, e.g.
    `# fmt: skip  # cuda-only`, `# cuda-only: reached only through torch.cuda events`)
    for code the heuristics miss, such as code reached only through `torch.cuda` objects: on a
    `def` line the function's body; on an `if` / `elif` line that branch's body; on an `else:` line
    that else branch; on any other statement (any of its lines; for a compound statement its header
    lines) the whole statement.
(d) A conditional expression whose test is a CUDA test, `a if cuda_test else b`: the line of the
    statement holding it (coverage measures lines, so this line runs on CPU too; its figures are
    printed apart, as rule "ifexp", so the branch rules can be read on their own).
Inside a CUDA-only region everything is CUDA-only (nested functions, loops, conditional expressions).

Lines are coverage's statement lines (`coverage.parser.PythonParser`: the first line of a multi-line
statement, no docstrings, `# pragma: no cover` excluded), so the counts and coverage's measured lines
are the same kind of number.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from typing import Iterable, Optional

MARKER = re.compile(r"#\s*cuda-only(?![\w-])", re.IGNORECASE)
FLAG = re.compile(r"^_*(?:(?:use|uses|using|is|on|with|has|want|wants)_)?cuda$", re.IGNORECASE)
ABOUT_CUDA = re.compile(r"version|error|available|visible|index|indices|count", re.IGNORECASE)
POS, NEG = "pos", "neg"
RULES = ("if", "else", "rest", "def", "marker", "ifexp")


# -- the finder -----------------------------------------------------------------------------------
def is_flag_name(name: Optional[str]) -> bool:
    return bool(name) and bool(FLAG.match(name))


def is_cuda_function(name: str) -> bool:
    """Rule (b): a function that runs on CUDA, by its name."""
    return "cuda" in name.lower() and not is_flag_name(name) and not ABOUT_CUDA.search(name)


def _name(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_cuda_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "cuda"


def _is_nccl_backend(a: ast.AST, b: ast.AST) -> bool:
    """`<...>backend == "nccl"`: the NCCL process-group backend runs on CUDA devices only."""
    return any(
        isinstance(x, ast.Constant) and x.value == "nccl" and (_name(y) or "").lower().endswith("backend")
        for x, y in ((a, b), (b, a))
    )


def polarity(test: ast.AST, flags: frozenset = frozenset()) -> Optional[str]:
    """POS: the expression is true only on CUDA; NEG: false only on CUDA; None: neither.
    flags: local names known to hold a CUDA test (`gpu = hw.device == "cuda"`)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = polarity(test.operand, flags)
        return {POS: NEG, NEG: POS}.get(inner) if inner else None
    if isinstance(test, ast.BoolOp):
        parts = [polarity(v, flags) for v in test.values]
        if isinstance(test.op, ast.And):
            return POS if POS in parts else (NEG if all(p == NEG for p in parts) else None)
        return NEG if NEG in parts else (POS if all(p == POS for p in parts) else None)
    if isinstance(test, ast.Compare):
        operands = [test.left, *test.comparators]
        found = None
        for op, a, b in zip(test.ops, operands, operands[1:]):
            if _is_cuda_str(a) or _is_cuda_str(b) or _is_nccl_backend(a, b):
                if isinstance(op, ast.Eq):
                    return POS  # a chain is a conjunction: one `== "cuda"` link makes it CUDA-only
                if isinstance(op, ast.NotEq) and len(test.ops) == 1:
                    found = NEG
        return found
    if isinstance(test, ast.Name) and test.id in flags:
        return POS
    if isinstance(test, (ast.Name, ast.Attribute)):
        return POS if is_flag_name(_name(test)) else None
    if isinstance(test, ast.Call):
        f = test.func
        if isinstance(f, ast.Attribute) and f.attr == "is_available" and _name(f.value) == "cuda":
            return POS
        return POS if is_flag_name(_name(f)) else None
    if isinstance(test, ast.NamedExpr):
        return polarity(test.value, flags)
    return None


def local_flags(body: list[ast.stmt], outer: frozenset = frozenset()) -> frozenset:
    """The names a scope only ever assigns a positive CUDA test (`n, gpu = ..., hw.device == "cuda"`):
    they are CUDA flags in that scope (nested functions and classes are scopes of their own)."""
    seen: dict[str, bool] = {}

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for t in targets:
                    pairs = [(t, child.value)]
                    if isinstance(t, (ast.Tuple, ast.List)):
                        v = child.value
                        same = isinstance(v, (ast.Tuple, ast.List)) and len(v.elts) == len(t.elts)
                        pairs = list(zip(t.elts, v.elts)) if same else [(e, None) for e in t.elts]
                    for target, value in pairs:
                        if isinstance(target, ast.Name):
                            pos = (
                                value is not None
                                and not isinstance(child, ast.AugAssign)
                                and polarity(value, outer) == POS
                            )
                            seen[target.id] = seen.get(target.id, True) and pos
            elif isinstance(child, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.comprehension)):
                for t in [child.target] if hasattr(child, "target") else [i.optional_vars for i in child.items]:
                    for n in ast.walk(t) if t is not None else ():
                        if isinstance(n, ast.Name):
                            seen[n.id] = False
            visit(child)

    for st in body:
        visit(ast.Module(body=[st], type_ignores=[]))
    return frozenset(n for n, ok in seen.items() if ok) | (outer - {n for n, ok in seen.items() if not ok})


def marker_lines(source: str) -> set[int]:
    """Lines whose comment carries `# cuda-only`."""
    out = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and MARKER.search(tok.string):
                out.add(tok.start[0])
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _leaves(stmts: list[ast.stmt]) -> bool:
    """Does this block always leave the enclosing block (return, raise, continue, break)?"""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, (ast.Return, ast.Raise, ast.Continue, ast.Break)):
        return True
    if isinstance(last, ast.If):
        return _leaves(last.body) and _leaves(last.orelse)
    if isinstance(last, (ast.With, ast.AsyncWith)):
        return _leaves(last.body)
    if isinstance(last, ast.Try):
        if last.finalbody and _leaves(last.finalbody):
            return True
        body = _leaves(last.orelse) if last.orelse else _leaves(last.body)
        return body and all(_leaves(h.body) for h in last.handlers)
    return False


def _header(st: ast.stmt) -> range:
    """The lines of a compound statement before its body (the def / if / for line(s))."""
    body = getattr(st, "body", None)
    if isinstance(body, list) and body:
        return range(st.lineno, max(body[0].lineno, st.lineno + 1))
    return range(st.lineno, st.end_lineno + 1)


def _span(st: ast.AST) -> range:
    return range(st.lineno, (st.end_lineno or st.lineno) + 1)


def _sub_blocks(st: ast.stmt) -> list[list[ast.stmt]]:
    out = []
    for attr in ("body", "orelse", "finalbody"):
        block = getattr(st, attr, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            out.append(block)
    for h in getattr(st, "handlers", []) or []:
        out.append(h.body)
    for case in getattr(st, "cases", []) or []:
        out.append(case.body)
    return out


def _expressions(st: ast.stmt) -> Iterable[ast.AST]:
    """The expressions of one statement, not those of the statements nested in it."""
    for name, value in ast.iter_fields(st):
        if name in ("body", "orelse", "finalbody", "handlers", "cases"):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, ast.AST) and not isinstance(v, ast.stmt):
                yield from ast.walk(v)


class _Finder:
    def __init__(self, source: str):
        self.lines = source.splitlines()
        self.markers = marker_lines(source)
        self.rule: dict[int, str] = {}  # raw line -> the rule that made it CUDA-only (first one wins)
        self.flags: frozenset = frozenset()  # local names holding a CUDA test, in the scope being read

    def scope(self, st: ast.AST, body: list[ast.stmt]) -> None:
        """A function's or class's body, with the flags of its own scope."""
        saved = self.flags
        args = getattr(st, "args", None)
        params = {a.arg for a in ast.walk(args) if isinstance(a, ast.arg)} if args is not None else set()
        self.flags = local_flags(body, saved - params)
        try:
            self.block(body)
        finally:
            self.flags = saved

    def run(self, tree: ast.Module) -> None:
        self.flags = local_flags(tree.body)
        self.block(tree.body)

    def mark(self, stmts: Iterable[ast.AST], rule: str) -> None:
        for st in stmts:
            for line in _span(st):
                self.rule.setdefault(line, rule)

    def marked(self, lines: Iterable[int]) -> bool:
        return any(line in self.markers for line in lines)

    def _else_marked(self, st: ast.If) -> bool:
        """`else:  # cuda-only` (an `elif` is an If of its own, with its own line)."""
        if not st.orelse or (
            len(st.orelse) == 1
            and isinstance(st.orelse[0], ast.If)
            and self.lines[st.orelse[0].lineno - 1].lstrip().startswith("elif")
        ):
            return False
        for line in range(st.body[-1].end_lineno + 1, st.orelse[0].lineno):
            if self.lines[line - 1].lstrip().startswith("else") and line in self.markers:
                return True
        return False

    def block(self, stmts: list[ast.stmt]) -> None:
        for i, st in enumerate(stmts):
            if isinstance(st, ast.If):
                p = POS if self.marked(_header(st)) else polarity(st.test, self.flags)
                self.ifexps(st)
                if p == POS:
                    self.mark(st.body, "marker" if self.marked(_header(st)) else "if")
                    self.block(st.orelse) if not self._else_marked(st) else self.mark(st.orelse, "marker")
                elif p == NEG:
                    self.block(st.body)
                    self.mark(st.orelse, "else")
                    if _leaves(st.body):
                        self.mark(stmts[i + 1 :], "rest")
                        return
                else:
                    self.block(st.body)
                    self.block(st.orelse) if not self._else_marked(st) else self.mark(st.orelse, "marker")
            elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if self.marked(_header(st)):
                    self.mark(st.body, "marker")
                elif is_cuda_function(st.name):
                    self.mark(st.body, "def")
                else:
                    self.ifexps(st)
                    self.scope(st, st.body)
            elif isinstance(st, ast.ClassDef):
                self.ifexps(st)
                self.scope(st, st.body)
            elif self.marked(_header(st)):
                self.mark([st], "marker")
            else:
                self.ifexps(st)
                for sub in _sub_blocks(st):
                    self.block(sub)

    def ifexps(self, st: ast.stmt) -> None:
        for node in _expressions(st):
            if isinstance(node, ast.IfExp) and polarity(node.test, self.flags):
                self.rule.setdefault(node.lineno, "ifexp")


def statement_parser(source: str):
    """coverage's own view of the file: its statement lines and the first line of each line."""
    from coverage.config import DEFAULT_EXCLUDE
    from coverage.parser import PythonParser

    parser = PythonParser(text=source, exclude="|".join(f"(?:{r})" for r in DEFAULT_EXCLUDE))
    parser.parse_source()
    return parser


def find_cuda_lines(source: str) -> dict[int, str]:
    """The CUDA-only statement lines of one file (coverage's numbering) -> the rule that found each."""
    if not source.strip():
        return {}
    finder = _Finder(source)
    finder.run(ast.parse(source))
    parser = statement_parser(source)
    out: dict[int, str] = {}
    for line in sorted(finder.rule):
        first = parser.first_line(line)
        if first in parser.statements:
            # A statement's own rule beats the ifexp of one of its continuation lines.
            if out.get(first) in (None, "ifexp"):
                out[first] = finder.rule.get(first, finder.rule[line])
    return out
