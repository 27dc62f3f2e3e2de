"""The artifacts package handles bytes only: it reaches the SQL index through the `ArtifactIndex` port and never
imports the store package or SQLAlchemy (docs/decisions/0003a-artifact-index-port.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import capstan.artifacts

FORBIDDEN = ("capstan.store", "sqlalchemy")


def _imports(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_artifacts_package_imports_no_store_and_no_sql() -> None:
    package = Path(capstan.artifacts.__file__).parent
    offenders = {f"{source.name}: {name}" for source in package.glob("*.py") for name in _imports(source)
                 if any(name == bad or name.startswith(f"{bad}.") for bad in FORBIDDEN)}
    assert not offenders
