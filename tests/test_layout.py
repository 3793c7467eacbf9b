"""The shape of the code, measured over `ast` (function-level imports included): commands at the
root, library code in packages, no import cycle at any depth, no library importing a command, no
command importing another, and short functions.

import-linter (`lint-imports`, contracts in pyproject.toml) keeps the layers between packages;
it cannot see the root modules, which is what this file checks.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_AT_ROOT = {"simclr", "loss", "utils"}  # the user's three library files
SKIP = {"tests", "results", "docs", "runs"}
MAX_LINES, MAX_LONG, HARD_MAX = 80, 3, 120  # at most 3 functions (flag tables) over 80 lines, none over 120


def _source_files() -> dict[str, Path]:
    """Module name -> path of every project Python file outside tests/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


FILES = _source_files()
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in FILES.items()}


def _resolve(name: str) -> str | None:
    """The project module an import names (the longest prefix that is one), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in FILES:
            return candidate
    return None


def import_graph(trees: dict[str, ast.Module], files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (functions included)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, tree in trees.items():
        package = module if files[module].name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name)
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in list(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def is_command(module: str) -> bool:
    return "." not in module and module not in LIBRARY_AT_ROOT and FILES[module].parent == ROOT


GRAPH = import_graph(TREES, FILES)


def test_the_cycle_finder_finds_a_cycle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_three_library_files_and_commands_sit_at_the_root():
    at_root = {m for m, p in FILES.items() if p.parent == ROOT}
    assert LIBRARY_AT_ROOT <= at_root
    for module in sorted(at_root - LIBRARY_AT_ROOT):
        text = FILES[module].read_text()
        assert 'if __name__ == "__main__":' in text, f"{module}.py sits at the root but is not a command"


def test_no_import_cycle_at_any_depth():
    assert cycles(GRAPH) == []


def test_no_library_module_imports_a_command_and_no_command_another():
    wrong = [(a, b) for a, targets in GRAPH.items() for b in targets
             if is_command(b) and not a.startswith(("scripts.", "bench."))]
    assert wrong == []


@pytest.mark.parametrize("package", ["attacks", "service", "defenses", "evaluation", "reports", "engine", "models",
                                     "data_aug"])
def test_every_package_has_a_docstring_saying_what_it_holds(package):
    assert ast.get_docstring(TREES[package]), f"{package}/__init__.py has no docstring"


def test_functions_are_short():
    lengths = sorted(((node.end_lineno - node.lineno + 1, f"{module}.{node.name}")
                      for module, tree in TREES.items() for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), reverse=True)
    long = [(n, name) for n, name in lengths if n > MAX_LINES]
    assert len(long) <= MAX_LONG, long
    assert all(n <= HARD_MAX for n, _ in long), long
