"""Capstan pipelines: plain-Python DAGs with a durable local orchestrator.

Write steps with `step` (or `command_step`), wire them in a `pipeline` function, fan out with ``step.map`` and
`chunks`, and run with ``capstan run FILE`` or by calling the pipeline. This package imports only the standard
library up front; the orchestrator, stores and executors load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capstan.pipelines.dsl import (
    Chunk,
    Chunks,
    Pipeline,
    PipelineDefinitionError,
    Resources,
    Step,
    StepOutput,
    chunks,
    command_step,
    current_chunk,
    pipeline,
    step,
)
from capstan.pipelines.state import Backoff, RunStatus, StepState

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner, RunResult

__all__ = [
    "Backoff",
    "Chunk",
    "Chunks",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineRunner",
    "Resources",
    "RunResult",
    "RunStatus",
    "Step",
    "StepOutput",
    "StepState",
    "chunks",
    "command_step",
    "current_chunk",
    "pipeline",
    "quickstart_prep",
    "step",
]


def __getattr__(name: str) -> Any:
    if name in ("PipelineRunner", "RunResult"):
        from capstan.pipelines import runner

        return getattr(runner, name)
    if name == "quickstart_prep":
        from capstan.pipelines.quickstart import quickstart_prep

        return quickstart_prep
    raise AttributeError(f"module 'capstan.pipelines' has no attribute {name!r}")
