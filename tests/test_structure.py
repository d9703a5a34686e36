"""The shape of the code: no import cycle, no module over 600 lines, no function over 80 lines in
``vlscale/`` (DESIGN.md "Layout"; STYLE.md "Readable first"), and no block of six or more lines
repeated inside ``vlscale/costs`` or ``vlscale/cli``. Read from the source with ``ast`` and
``tokenize``; nothing is imported.

Import cycles are checked over ``vlscale``, ``trainer`` and ``models`` and count every import,
function-local ones included: a function-local import defers the cost of a heavy module, not
the dependency, and the cycle this test was written for (``trainer.probe`` <->
``trainer.probe_cuda``) was made of function-local imports only. Imports under
``if TYPE_CHECKING:`` never run and do not count. ``from a.b import c`` depends on ``a.b.c``
when that is a module, else on ``a.b``; a package is its ``__init__``.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vlscale", "trainer", "models")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
BLOCK_LINES = 6
NO_REPEATS = ("vlscale/costs", "vlscale/cli")

# "path::qualified name": why it may stay long. Keep this short; an entry that is no longer too
# long fails the test, so the list only shrinks.
LONG_FUNCTIONS: dict[str, str] = {}


def python_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Dotted names that ``source`` (of ``module``) imports, anywhere but under
    ``if TYPE_CHECKING:``; relative imports resolved against the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(source))
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (the longest known prefix of each name)."""
    files = {module_name(p): p for p in python_files(*PACKAGES)}
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search, iterative)."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path, on_path = [root], {root}
        stack = [iter(sorted(graph[root]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def function_lengths(path: Path) -> dict[str, int]:
    """Qualified name (``Class.method``, ``outer.inner``) -> lines from ``def`` to its end."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return lengths


def long_functions() -> dict[str, int]:
    out = {}
    for path in python_files("vlscale"):
        rel = path.relative_to(REPO).as_posix()
        for name, n in function_lengths(path).items():
            if n > MAX_FUNCTION_LINES:
                out[f"{rel}::{name}"] = n
    return out


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_imports_seen_are_function_local_and_relative_ones_not_type_checking_ones():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import vlscale.plan\n"
        "def f():\n    from vlscale.costs import flops\n"
        "from .models import ModelSpec\n"
        "from . import towers\n"
    )
    names = imported_names(source, "vlscale.specs.presets")
    assert {"vlscale.costs.flops", "vlscale.specs.models", "vlscale.specs.towers"} <= names
    assert "vlscale.plan" not in names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_600_lines(package):
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in python_files(package)
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (lines): {long}"


def test_no_function_over_80_lines_in_vlscale():
    long = long_functions()
    new = {k: n for k, n in long.items() if k not in LONG_FUNCTIONS}
    assert not new, f"split these functions into named steps (lines): {new}"


def test_every_long_function_exception_is_still_needed():
    stale = sorted(set(LONG_FUNCTIONS) - set(long_functions()))
    assert not stale, (
        f"no longer over {MAX_FUNCTION_LINES} lines, remove from LONG_FUNCTIONS: {stale}"
    )


# --- repeated blocks ---------------------------------------------------------------------------
# A block is BLOCK_LINES consecutive lines of code: comments, blank lines, docstrings, imports and
# def / class headers (decorators and signatures: a command's options are declared there, their
# types and defaults once in vlscale/cli/options.py) are not code here. "Same lines" compares the
# tokens; "same shape" also reads every name as N, every string as S and every number as 0, and
# looks inside function bodies only (module-level tables and type aliases are alike by design).
# A window that is a run of like rows (at most 2 distinct lines) or mostly literals and brackets
# (fewer than 4 lines with an operator or keyword) is a table, not a block.
_LAYOUT_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT}
_LAYOUT_TOKENS |= {tokenize.DEDENT, tokenize.ENDMARKER}
_STRING_TOKENS = {tokenize.STRING} | {
    getattr(tokenize, n)
    for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, n)
}
_LITERAL_ONLY = {"N", "S", "0", ",", "(", ")", "[", "]", "{", "}", ":", "."}


def _not_code(tree: ast.Module) -> tuple[set[int], set[int]]:
    """(lines that are not code, lines inside function bodies)."""
    skip, bodies = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            skip.update(range(first, node.body[0].lineno))
            if not isinstance(node, ast.ClassDef):
                bodies.update(range(node.body[0].lineno, node.end_lineno + 1))
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = node.body[0] if node.body else None
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                skip.update(range(doc.lineno, doc.end_lineno + 1))
    return skip, bodies


def code_lines(source: str, shape: bool) -> list[tuple[int, str]]:
    """(line number, its tokens joined) for every line of code; ``shape``: names, strings and
    numbers anonymised, and function bodies only."""
    skip, bodies = _not_code(ast.parse(source))
    rows: dict[int, list[str]] = defaultdict(list)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.start[0]
        if tok.type in _LAYOUT_TOKENS or line in skip or (shape and line not in bodies):
            continue
        text = tok.string
        if shape and tok.type == tokenize.NAME and not keyword.iskeyword(text):
            text = "N"
        elif shape and tok.type == tokenize.NUMBER:
            text = "0"
        elif shape and tok.type in _STRING_TOKENS:
            text = "S"
        rows[line].append(text)
    return [(n, " ".join(t)) for n, t in sorted(rows.items())]


def _is_block(window: list[str]) -> bool:
    substantive = [w for w in window if not set(w.split()) <= _LITERAL_ONLY]
    return len(set(window)) > 2 and len(substantive) >= 4


def repeated_blocks(sources: dict[str, str], shape: bool) -> list[list[str]]:
    """Places ("path:first-last") of every block that occurs twice or more, not overlapping."""
    seen: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for path, source in sources.items():
        lines = code_lines(source, shape)
        for i in range(len(lines) - BLOCK_LINES + 1):
            window = [text for _, text in lines[i : i + BLOCK_LINES]]
            if _is_block(window):
                seen["\n".join(window)].append((path, lines[i][0], lines[i + BLOCK_LINES - 1][0]))
    repeats = []
    for (path, a, b), *others in seen.values():
        apart = [o for o in others if o[0] != path or o[1] > b]
        if apart:
            repeats.append([f"{p}:{x}-{y}" for p, x, y in [(path, a, b), *apart]])
    return repeats


@pytest.mark.parametrize("shape", [False, True], ids=["same-lines", "same-shape"])
def test_no_block_repeats_in_costs_and_cli(shape):
    sources = {
        p.relative_to(REPO).as_posix(): p.read_text()
        for folder in NO_REPEATS
        for p in sorted((REPO / folder).rglob("*.py"))
    }
    repeats = repeated_blocks(sources, shape)
    assert not repeats, f"factor these repeated blocks into one function: {repeats}"


def test_the_repeat_finder_sees_renamed_blocks_and_not_tables():
    body = (
        "    total = {a} + 1\n    if total > 3:\n        total -= 2\n    out = [total] * 2\n"
        "    out.append({a})\n    return sum(out) if out else None\n"
    )
    source = f"def f(x):\n{body.format(a='x')}\n\ndef g(y):\n{body.format(a='y')}"
    assert repeated_blocks({"m.py": source}, shape=False) == []
    assert repeated_blocks({"m.py": source}, shape=True) == [["m.py:2-7", "m.py:11-16"]]
    same = {"a.py": f"def f(x):\n{body.format(a='x')}", "b.py": f"def g(x):\n{body.format(a='x')}"}
    assert repeated_blocks(same, shape=False) == [["a.py:2-7", "b.py:2-7"]]
    table = "ROWS = [\n" + "".join(f"    ('r{i}', {i}),\n" for i in range(9)) + "]\n"
    table += "def h():\n    return [\n" + "".join(f"        {i},\n" for i in range(9)) + "    ]\n"
    assert repeated_blocks({"t.py": table}, shape=True) == []
    assert repeated_blocks({"t.py": table}, shape=False) == []
