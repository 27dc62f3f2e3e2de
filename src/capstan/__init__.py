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
    from capstan.settings import Settings
    from capstan.tracking.client import Client
    from capstan.tracking.metric_writer import MetricFlushError
    from capstan.tracking.sdk import (
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
    from capstan.tracking.sdk_models import ModelInfo

__version__ = "0.1.0"

# Public name -> module that defines it. Add a line here (and to __all__) to export more.
_LAZY: dict[str, str] = {
    "Settings": "capstan.settings",
    "CapstanError": "capstan.errors",
    "Client": "capstan.tracking.client",
    "ActiveRun": "capstan.tracking.sdk",
    "ModelInfo": "capstan.tracking.sdk_models",
    "MetricFlushError": "capstan.tracking.metric_writer",
    "PyFuncModel": "capstan.models.pyfunc",
    "configure": "capstan.tracking.sdk",
    "get_settings": "capstan.tracking.sdk",
    "set_experiment": "capstan.tracking.sdk",
    "start_run": "capstan.tracking.sdk",
    "active_run": "capstan.tracking.sdk",
    "end_run": "capstan.tracking.sdk",
    "flush": "capstan.tracking.sdk",
    "log_param": "capstan.tracking.sdk",
    "log_params": "capstan.tracking.sdk",
    "log_metric": "capstan.tracking.sdk",
    "log_metrics": "capstan.tracking.sdk",
    "set_tag": "capstan.tracking.sdk",
    "set_tags": "capstan.tracking.sdk",
    "log_artifact": "capstan.tracking.sdk",
    "log_artifacts": "capstan.tracking.sdk",
    "log_text": "capstan.tracking.sdk",
    "log_dict": "capstan.tracking.sdk",
    "log_model": "capstan.tracking.sdk",
    "load_model": "capstan.tracking.sdk",
    "register_model": "capstan.tracking.sdk",
    "step": "capstan.pipelines.dsl",
    "pipeline": "capstan.pipelines.dsl",
    "command_step": "capstan.pipelines.dsl",
    "chunks": "capstan.pipelines.dsl",
    "current_chunk": "capstan.pipelines.dsl",
    "Chunk": "capstan.pipelines.dsl",
    "Resources": "capstan.pipelines.dsl",
    "Backoff": "capstan.pipelines.state",
}

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
    "set_experiment",
    "set_tag",
    "set_tags",
    "start_run",
    "step",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capstan' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
