"""Finding a pipeline from a reference: ``path/to/file.py[:func]`` or ``package.module:func``.

A file is imported under its own name when that name resolves to the same file (so classes pickled by its steps
can be loaded again anywhere the file is importable), under a private name otherwise. Import failures become one
line naming ``file:line``; nothing is stored before a pipeline has been imported and built.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from capstan.pipelines.dsl import Pipeline, PipelineDefinitionError, where
from capstan.pipelines.execution import import_module_file

_MTIMES: dict[str, float] = {}


def module_name_for(file: Path) -> str:
    """The module name a pipeline file is imported under."""
    stem = file.stem
    if stem.isidentifier():
        existing = sys.modules.get(stem)
        origin = getattr(existing, "__file__", None) if existing is not None else None
        if existing is None or (origin and os.path.abspath(origin) == str(file)):
            import importlib.util

            folder = str(file.parent)
            added = folder not in sys.path
            if added:
                sys.path.insert(0, folder)
            try:
                spec = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin and os.path.abspath(spec.origin) == str(file):
                return stem
            if added:
                sys.path.remove(folder)
    import hashlib

    tag = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    return f"_capstan_pipeline_{stem if stem.isidentifier() else 'file'}_{tag}"


def _import_place(exc: BaseException, file: str) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return where(exc.filename, exc.lineno or 0)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and f.filename != __file__ and "capstan/pipelines/execution" not in
              f.filename.replace(os.sep, "/")]
    if frames:
        return where(frames[-1].filename, frames[-1].lineno or 0)
    return where(file, 1)


def import_pipeline_module(target: str) -> tuple[Any, str | None]:
    """Import the module a reference names; returns (module, file or None)."""
    path = Path(target)
    looks_like_file = target.endswith(".py") or os.sep in target or path.exists()
    if looks_like_file:
        file = path.expanduser().resolve()
        if file.is_dir():
            scripts = sorted(p.name for p in file.glob("*.py"))[:5]
            example = f"{target.rstrip(os.sep)}{os.sep}{scripts[0] if scripts else 'pipeline.py'}"
            raise PipelineDefinitionError(
                f"{target!r} is a directory, not a pipeline file; name the file, e.g. {example}"
                + (f" (Python files here: {', '.join(scripts)})" if scripts else " (it holds no .py files)"))
        if not file.is_file():
            raise PipelineDefinitionError(f"pipeline file {target!r} does not exist")
        name = module_name_for(file)
        mtime = file.stat().st_mtime
        if name in sys.modules and _MTIMES.get(name) not in (None, mtime):
            sys.modules.pop(name, None)  # the file changed since it was imported: load the new version
        try:
            module = import_module_file(name, str(file))
        except PipelineDefinitionError:
            raise
        except BaseException as exc:  # any import failure, even SystemExit, is one line
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PipelineDefinitionError(
                f"{_import_place(exc, str(file))}: cannot import pipeline file {target}: "
                f"{type(exc).__name__}: {exc}") from None
        _MTIMES[name] = mtime
        return module, str(file)
    try:
        return importlib.import_module(target), None
    except BaseException as exc:  # as above
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PipelineDefinitionError(f"{_import_place(exc, target)}: cannot import pipeline module {target}: "
                                      f"{type(exc).__name__}: {exc}") from None


def load_pipeline(ref: str) -> tuple[Pipeline, str]:
    """The pipeline a reference names and the canonical reference to store (absolute file path + attribute)."""
    target, sep, func = ref.rpartition(":")
    if not sep or (len(target) == 1 and target.isalpha()):
        target, func = ref, ""
    module, file = import_pipeline_module(target)
    if func:
        obj = getattr(module, func, None)
        if obj is None:
            raise PipelineDefinitionError(f"{target}: has no attribute {func!r} (pipelines here: "
                                          f"{', '.join(_pipelines(module)) or 'none'})")
        if not isinstance(obj, Pipeline):
            raise PipelineDefinitionError(f"{target}: {func!r} is not a @pipeline function")
        return obj, f"{file or target}:{func}"
    found = _pipelines(module)
    if len(found) == 1:
        name = next(iter(found))
        return found[name], f"{file or target}:{name}"
    if not found:
        raise PipelineDefinitionError(f"{target}: defines no @pipeline function")
    raise PipelineDefinitionError(f"{target}: defines several pipelines ({', '.join(found)}); name one as "
                                  f"{target}:FUNC")


def _pipelines(module: Any) -> dict[str, Pipeline]:
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, Pipeline)}


def ref_for(pipe: Pipeline) -> str:
    """A reference for a pipeline object that was imported normally (used when a pipeline is called directly)."""
    module = sys.modules.get(getattr(pipe.fn, "__module__", ""), None)
    attr = next((name for name, obj in vars(module).items() if obj is pipe), pipe.fn.__name__) if module else \
        pipe.fn.__name__
    file = getattr(module, "__file__", None) if module is not None else None
    if file:
        return f"{os.path.abspath(file)}:{attr}"
    return f"{pipe.fn.__module__}:{attr}"
