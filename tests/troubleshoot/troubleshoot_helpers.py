"""Helpers of the troubleshooting tests: the scripts folder, the failed run's record, reading a timeline the way
`capstan describe` does locally."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capstan.services import Services
from capstan.settings import Settings
from capstan.troubleshoot.sources import Scope
from capstan.troubleshoot.timeline import Timeline

SCRIPTS = Path(__file__).parent / "scripts"


@dataclass(frozen=True)
class FailedRun:
    """The pipeline run of ``scripts/failing_flow.py`` under ``settings``' home."""

    settings: Settings
    run_id: str


def describe(services: Services, ref: str, *, project: str = "default", tail: int = 40) -> Timeline:
    """The timeline of ``KIND/ID`` as the local CLI reads it (the project names trials and deployments)."""
    return services.timelines().describe(ref, Scope(project=project, tail=tail))
