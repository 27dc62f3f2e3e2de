"""``import capstan``: the public names resolve, and importing the package loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module
from types import ModuleType

import pytest

import capstan

HEAVY = ("sqlalchemy", "httpx", "numpy", "sklearn", "pandas", "fastapi", "pydantic", "alembic", "rich", "yaml")


def test_public_names_are_listed_once_sorted_and_public() -> None:
    names = capstan.__all__
    assert names == sorted(set(names)), "capstan.__all__ must be sorted and free of duplicates"
    assert [n for n in names if n.startswith("_") and n != "__version__"] == []
    # Every lazily exported name is in __all__ and every name in __all__ (but the version) is lazily exported:
    # a name on only one side is either unreachable through `from capstan import *` or not importable at all.
    assert set(capstan._LAZY) == set(names) - {"__version__"}
    assert isinstance(capstan.__version__, str) and capstan.__version__


@pytest.mark.parametrize("name", [n for n in capstan.__all__ if n != "__version__"])
def test_every_public_name_is_the_object_its_module_defines(name: str) -> None:
    value = getattr(capstan, name)
    defined_in = import_module(capstan._LAZY[name])
    assert value is getattr(defined_in, name)
    # The export is the real thing, not a re-export of something else that happens to share its name.
    assert getattr(value, "__module__", None) == defined_in.__name__ or not callable(value), name
    if isinstance(value, ModuleType):  # a namespace of helpers (capstan.tune): the submodule of that name
        assert value.__name__ == f"{defined_in.__name__}.{name}"
    else:
        assert getattr(value, "__name__", name) == name
    assert name in dir(capstan)


def test_unknown_and_private_names_are_attribute_errors() -> None:
    for missing in ("nope", "_nope", "_LAZY_", "tracking_sql"):
        with pytest.raises(AttributeError, match=f"no attribute {missing!r}"):
            getattr(capstan, missing)


def test_star_import_in_a_fresh_interpreter_binds_every_public_name() -> None:
    # ``from capstan import *`` goes through ``__all__`` and the lazy ``__getattr__`` on a cold module.
    code = ("ns = {}; exec('from capstan import *', ns); ns.pop('__builtins__'); "
            "import capstan; print(sorted(ns) == sorted(capstan.__all__)); "
            "print(all(ns[n] is getattr(capstan, n) for n in capstan.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "True"], result.stdout + result.stderr


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
