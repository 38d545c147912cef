"""The shape of the code a new door has to fit into (docs/architecture.md, "Who may import whom").

`make lint` checks the layers with import-linter (`.importlinter`); these tests check two things it cannot say
as directly: only the command line reaches for the composition root (type hints included, so no router or job
handler can quietly take the whole node again), and no modules import each other in a circle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SOURCE = Path(__file__).resolve().parent.parent / "src" / "mosaic"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Every module an import statement anywhere in ``tree`` names (in functions and ``TYPE_CHECKING`` too)."""
    package = module.split(".")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_only_the_command_line_imports_the_composition_root() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = _module_name(path)
        if module == "mosaic.app" or module == "mosaic.cli" or module.startswith("mosaic.cli."):
            continue
        imported = _imported_modules(ast.parse(path.read_text(encoding="utf-8")), module)
        if "mosaic.app" in imported or any(name.startswith("mosaic.app.") for name in imported):
            offenders.append(module)
    assert offenders == [], f"modules that take the whole node instead of the services they use: {offenders}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            if children:
                child = children.pop()
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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


def test_no_modules_import_each_other_in_a_circle() -> None:
    imports = grimp.build_graph("mosaic", exclude_type_checking_imports=True, cache_dir=None)
    graph = {module: set(imports.find_modules_directly_imported_by(module)) for module in imports.modules}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    """The check above can fail: a two-module and a three-module circle are reported, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
