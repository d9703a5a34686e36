"""The shape of the code: no import cycle, no module over 600 lines, no function over 80 lines in
``vlscale/`` (DESIGN.md "Layout"; STYLE.md "Readable first"). Read from the source with ``ast``;
nothing is imported.

Import cycles are checked over ``vlscale``, ``trainer`` and ``models`` and count every import,
function-local ones included: a function-local import defers the cost of a heavy module, not
the dependency, and the cycle this test was written for (``trainer.probe`` <->
``trainer.probe_cuda``) was made of function-local imports only. Imports under
``if TYPE_CHECKING:`` never run and do not count. ``from a.b import c`` depends on ``a.b.c``
when that is a module, else on ``a.b``; a package is its ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vlscale", "trainer", "models")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

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
