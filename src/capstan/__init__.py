"""Capstan: pipelines, a workload queue, experiment tracking, a model registry and serving in one package.

Tracking in three lines::

    import capstan

    with capstan.start_run(experiment="quickstart", params={"C": 1.0}) as run:
        capstan.log_metric("accuracy", 0.93)

Everything here is imported lazily (module ``__getattr__``), so ``import capstan`` stays fast: heavy libraries
(SQLAlchemy, httpx, numpy, scikit-learn) load only when a call needs them. Settings are read from ``CAPSTAN_*``
environment variables on first use, or passed with `configure` / ``Client(settings=...)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capstan.errors import CapstanError
    from capstan.models.pyfunc import PyFuncModel
    from capstan.pipelines.dsl import Chunk, Resources, chunks, command_step, current_chunk, pipeline, step
    from capstan.pipelines.state import Backoff
    from capstan.sdk.client import Client
    from capstan.sdk.fluent import (
        ActiveRun,
        active_run,
        configure,
        end_run,
        flush,
        get_settings,
        load_model,
        log_artifact,
        log_artifacts,
        log_dict,
        log_metric,
        log_metrics,
        log_model,
        log_param,
        log_params,
        log_text,
        register_model,
        set_experiment,
        set_tag,
        set_tags,
        start_run,
    )
    from capstan.sdk.fluent_models import ModelInfo
    from capstan.sdk.metric_writer import MetricFlushError
    from capstan.sdk.training import TrainingJob
    from capstan.settings import Settings
    from capstan.tuning import tune
    from capstan.tuning.sdk import Study
    from capstan.tuning.trial import report, should_prune

__version__ = "0.1.0"

# Public name -> module that defines it. Add a line here (and to __all__) to export more.
_LAZY: dict[str, str] = {
    "Settings": "capstan.settings",
    "CapstanError": "capstan.errors",
    "Client": "capstan.sdk.client",
    "ActiveRun": "capstan.sdk.fluent",
    "ModelInfo": "capstan.sdk.fluent_models",
    "MetricFlushError": "capstan.sdk.metric_writer",
    "PyFuncModel": "capstan.models.pyfunc",
    "configure": "capstan.sdk.fluent",
    "get_settings": "capstan.sdk.fluent",
    "set_experiment": "capstan.sdk.fluent",
    "start_run": "capstan.sdk.fluent",
    "active_run": "capstan.sdk.fluent",
    "end_run": "capstan.sdk.fluent",
    "flush": "capstan.sdk.fluent",
    "log_param": "capstan.sdk.fluent",
    "log_params": "capstan.sdk.fluent",
    "log_metric": "capstan.sdk.fluent",
    "log_metrics": "capstan.sdk.fluent",
    "set_tag": "capstan.sdk.fluent",
    "set_tags": "capstan.sdk.fluent",
    "log_artifact": "capstan.sdk.fluent",
    "log_artifacts": "capstan.sdk.fluent",
    "log_text": "capstan.sdk.fluent",
    "log_dict": "capstan.sdk.fluent",
    "log_model": "capstan.sdk.fluent",
    "load_model": "capstan.sdk.fluent",
    "register_model": "capstan.sdk.fluent",
    "step": "capstan.pipelines.dsl",
    "pipeline": "capstan.pipelines.dsl",
    "command_step": "capstan.pipelines.dsl",
    "chunks": "capstan.pipelines.dsl",
    "current_chunk": "capstan.pipelines.dsl",
    "Chunk": "capstan.pipelines.dsl",
    "Resources": "capstan.pipelines.dsl",
    "Backoff": "capstan.pipelines.state",
    "TrainingJob": "capstan.sdk.training",
    "Study": "capstan.tuning.sdk",
    "report": "capstan.tuning.trial",
    "should_prune": "capstan.tuning.trial",
    "tune": "capstan.tuning",
}
# Public submodules reachable as attributes (``capstan.checkpoint.save(...)`` after ``import capstan``).
_SUBMODULES = frozenset({"checkpoint"})

__all__ = [
    "ActiveRun",
    "Backoff",
    "CapstanError",
    "Chunk",
    "Client",
    "MetricFlushError",
    "ModelInfo",
    "PyFuncModel",
    "Resources",
    "Settings",
    "Study",
    "TrainingJob",
    "__version__",
    "active_run",
    "chunks",
    "command_step",
    "configure",
    "current_chunk",
    "end_run",
    "flush",
    "get_settings",
    "load_model",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_text",
    "pipeline",
    "register_model",
    "report",
    "set_experiment",
    "set_tag",
    "set_tags",
    "should_prune",
    "start_run",
    "step",
    "tune",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"capstan.{name}")  # the import system binds it as an attribute of the package
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capstan' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
