"""Pipeline runners for tests, taken from the composition root as the CLI and the server take theirs."""

from __future__ import annotations

from capstan.pipelines.runner import PipelineRunner
from capstan.resources.admission import Admission
from capstan.services import Services
from capstan.settings import Settings


def open_runner(settings: Settings, *, admission: Admission | None = None) -> PipelineRunner:
    """The pipeline runner of `Services.open(settings)` (the workload queue admits steps unless ``admission``
    is given); ``runner.close()`` releases the bundle's connections."""
    return Services.open(settings, admission=admission).pipelines.get()
