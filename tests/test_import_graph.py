"""scmflow's modules import one another without a cycle, and only at module level in the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scmflow"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The scmflow modules `path` names in its import statements (TYPE_CHECKING ones too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return {name for name in out if name in known}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imports(path, known) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of module names, or [] when there is none."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        if name in stack:
            return [*stack[stack.index(name) :], name]
        if name in done:
            return []
        stack.append(name)
        for other in sorted(edges[name]):
            cycle = visit(other)
            if cycle:
                return cycle
        stack.pop()
        done.add(name)
        return []

    for name in sorted(edges):
        cycle = visit(name)
        if cycle:
            return cycle
    return []


def test_no_module_of_scmflow_is_part_of_an_import_cycle() -> None:
    assert find_cycle(graph()) == []


def test_the_core_never_imports_the_cli() -> None:
    core = {name: deps for name, deps in graph().items() if not name.startswith("scmflow.cli")}
    assert {name for name, deps in core.items() if any(d.startswith("scmflow.cli") for d in deps)} == set()


def test_the_cli_imports_only_at_module_level() -> None:
    for path in (PACKAGE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = [
            node.lineno
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        assert nested == [], path
