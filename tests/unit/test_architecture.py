"""Architecture rules that import-linter cannot express (the import contracts themselves are in pyproject.toml
and run by `.ci/run` as ``lint-imports``; `test_import_contracts_hold` runs them here too)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "capstan"


def _reads_of_capstan_variables(tree: ast.AST) -> list[int]:
    """Line numbers where ``os.environ`` / ``os.getenv`` is read with a ``CAPSTAN_*`` literal."""
    lines = []
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            if func in {"os.getenv", "os.environ.get", "environ.get", "getenv", "os.environ.pop"}:
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in {"os.environ", "environ"}:
            if isinstance(node.ctx, ast.Load):
                key = node.slice
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) in {"os.environ", "environ"}
                                                   for c in node.comparators):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("CAPSTAN_"):
            lines.append(node.lineno)
    return lines


def test_only_settings_reads_capstan_variables() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "settings.py" and path.parent == SRC:
            continue
        for line in _reads_of_capstan_variables(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(SRC.parent)}:{line}")
    assert offenders == [], "CAPSTAN_* is read outside Settings.from_env: " + ", ".join(offenders)


def test_the_scanner_finds_each_way_of_reading() -> None:
    source = "\n".join([
        "import os",
        "a = os.environ.get('CAPSTAN_X')",
        "b = os.getenv('CAPSTAN_Y')",
        "c = os.environ['CAPSTAN_Z']",
        "d = 'CAPSTAN_W' in os.environ",
        "os.environ['CAPSTAN_SET'] = '1'",  # writing a child's environment is not reading
        "e = os.environ.get('HOME')",
    ])
    assert _reads_of_capstan_variables(ast.parse(source)) == [2, 3, 4, 5]


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (it comes with the test extra)")
    done = subprocess.run([lint], capture_output=True, text=True, cwd=SRC.parents[1], timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
