"""Packages by capability (issue 10): ``governance`` is policy and its tables, importing no service, door or
capability package; the capability packages (``retention``, ``export``) and the command line are handed their
services, never importing the composition root at run time; only the command line imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mosaic"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported by ``path`` when it runs (imports under ``if TYPE_CHECKING:`` left out)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "mosaic" or name.startswith("mosaic.")}


MODULES = {_module_name(path): _runtime_imports(path) for path in sorted(SOURCE.rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _importers(forbidden: str, packages: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {name}" for module, names in MODULES.items()
                  if any(_within(module, package) for package in packages)
                  for name in names if _within(name, forbidden))


@pytest.mark.parametrize("forbidden", ["mosaic.app", "mosaic.services", "mosaic.retention", "mosaic.export",
                                       "mosaic.cli", "mosaic.web", "mosaic.http", "mosaic.dicomweb", "mosaic.dimse"])
def test_governance_imports_no_service_door_or_capability(forbidden: str) -> None:
    assert _importers(forbidden, ("mosaic.governance",)) == []


def test_the_capability_packages_are_handed_their_services() -> None:
    assert _importers("mosaic.app", ("mosaic.retention", "mosaic.export", "mosaic.jobs")) == []


def test_only_the_command_line_imports_the_command_line() -> None:
    outside = [line for line in _importers("mosaic.cli", ("mosaic",)) if not _within(line.split()[0], "mosaic.cli")]
    assert outside == []


def test_the_old_homes_are_gone() -> None:
    assert not [name for name in MODULES if _within(name, "mosaic.workflow") or name.startswith("mosaic.cli_")]
    assert "mosaic.web.retention_routes" not in MODULES and "mosaic.web.export_routes" not in MODULES
