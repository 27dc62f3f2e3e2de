"""`TimelineReader`: names a workload as ``KIND/ID`` and reads its timeline.

Kinds (``describe`` and ``/api/v1/timeline`` take these names, their aliases, or any unambiguous start of either):

========================  ==========================  =================================================
kind                      id                          aliases
========================  ==========================  =================================================
``run``                   a tracking run id
``pipeline-run``          a pipeline run id (prefix)  ``pipeline``, ``prun``
``step``                  ``RUN/STEP``
``job``                   a training job id
``trial``                 ``STUDY/NUMBER``
``workload``              a queue workload id         ``wl``
``deployment``            a deployment name           ``deploy``
========================  ==========================  =================================================

Trials and deployments are named within a project (the caller's); the others have ids of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from capstan.errors import InvalidParameterValue
from capstan.troubleshoot.reads_jobs import job_timeline, trial_timeline
from capstan.troubleshoot.reads_other import deployment_timeline, run_timeline, workload_timeline
from capstan.troubleshoot.reads_pipelines import pipeline_run_timeline, step_timeline
from capstan.troubleshoot.sources import Scope, Sources
from capstan.troubleshoot.timeline import Timeline

__all__ = ["ALIASES", "KINDS", "TimelineReader", "parse_ref", "resolve_kind"]

KINDS = ("run", "pipeline-run", "step", "job", "trial", "workload", "deployment")
ALIASES = {"pipeline": "pipeline-run", "prun": "pipeline-run", "wl": "workload", "deploy": "deployment"}
MAX_ID = 1024


def kinds_text() -> str:
    """``run, pipeline-run (pipeline), step, ...``: the kinds with their aliases, for messages and help."""
    out = []
    for kind in KINDS:
        aliases = [a for a, k in ALIASES.items() if k == kind]
        out.append(kind + (f" ({', '.join(aliases)})" if aliases else ""))
    return ", ".join(out)


def resolve_kind(text: str) -> str:
    """The kind ``text`` names: a kind, an alias, or the start of exactly one kind's names."""
    name = text.strip().lower()
    if name in KINDS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    matches = {ALIASES.get(n, n) for n in (*KINDS, *ALIASES) if name and n.startswith(name)}
    if len(matches) == 1:
        return matches.pop()
    if matches:
        raise InvalidParameterValue(f"kind: {text!r} could be {', '.join(sorted(matches))}; give more letters")
    raise InvalidParameterValue(f"kind: unknown kind {text!r} (kinds: {kinds_text()})")


def parse_ref(ref: str) -> tuple[str, str]:
    """``(kind, id)`` of ``KIND/ID`` (the id may hold slashes: ``step/RUN/STEP``)."""
    kind, sep, ident = ref.strip().partition("/")
    if not sep or not ident.strip():
        raise InvalidParameterValue(f"KIND/ID: expected a kind and an id such as job/train-3f2a9c or "
                                    f"step/RUN/STEP, got {ref[:100]!r} (kinds: {kinds_text()})")
    if len(ident) > MAX_ID:
        raise InvalidParameterValue(f"id: at most {MAX_ID} characters, got {len(ident)}")
    return resolve_kind(kind), ident.strip()


@dataclass(frozen=True, slots=True)
class TimelineReader:
    """Reads the timeline of any workload from ``sources`` (built by `capstan.services.Services.timelines`)."""

    sources: Sources

    def timeline(self, kind: str, ident: str, scope: Scope) -> Timeline:
        """The timeline of workload ``ident`` of ``kind`` (a kind, alias or unambiguous start of one), within
        ``scope``. `ResourceDoesNotExist` for an unknown id, `InvalidParameterValue` for a bad kind or id."""
        return _READERS[resolve_kind(kind)](self.sources, scope, ident)

    def describe(self, ref: str, scope: Scope) -> Timeline:
        """The timeline of ``KIND/ID``."""
        kind, ident = parse_ref(ref)
        return self.timeline(kind, ident, scope)


Reader = Callable[[Sources, Scope, str], Timeline]

# The readers import what each kind needs inside their functions: describing a job never loads the pipeline engine.
_READERS: dict[str, Reader] = {
    "run": run_timeline, "pipeline-run": pipeline_run_timeline, "step": step_timeline, "job": job_timeline,
    "trial": trial_timeline, "workload": workload_timeline, "deployment": deployment_timeline,
}
