"""``import capstan``: the public names resolve, and importing the package loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

import capstan

HEAVY = ("sqlalchemy", "httpx", "numpy", "sklearn", "pandas", "fastapi", "pydantic", "alembic", "rich", "yaml")


def test_every_public_name_resolves() -> None:
    for name in capstan.__all__:
        assert getattr(capstan, name) is not None, name
    assert set(capstan.__all__) <= set(dir(capstan))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = capstan.nope


def test_import_capstan_loads_no_heavy_library() -> None:
    code = ("import sys, capstan; "
            f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_using_the_fluent_api_still_loads_no_numpy_or_server_code() -> None:
    code = ("import sys, capstan; capstan.start_run; capstan.Client; "
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'sklearn', 'fastapi'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
