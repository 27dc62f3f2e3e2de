"""Timelines of queue workloads, deployments and tracking runs.

- A **workload** (``workload/ID``): the queue's record and every decision it made about it (submitted, admitted,
  preempted, requeued, why it waits), the queue's explanation while it is pending, and what it belongs to (a
  pipeline step ``RUN/STEP``, a job ``job/ID``, a deployment replica ``deployment/PROJECT/NAME/REPLICA``).
- A **deployment** (``deployment/NAME`` in the project): its events (applies, promotions, autoscaling, replica crashes
  with the replica's last output), each replica's state and restarts, the queue's view of replicas still waiting,
  and the peak memory of its replica processes (ended ones from their exit events, running ones from their rows)
  against the per-replica memory request.
- A **tracking run** (``run/ID``): its start, end and status events; a run a training job logs to takes the job's
  diagnosis and log.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from capstan.errors import CapstanError, ResourceDoesNotExist
from capstan.resources.quantity import MILLI
from capstan.troubleshoot.classify import Diagnosis, Facts, Phase, classify
from capstan.troubleshoot.sources import (
    QueueView,
    Scope,
    Sources,
    object_events,
    queue_items,
    queue_view,
    tail_lines,
)
from capstan.troubleshoot.timeline import Peak, Related, Timeline, TimelineItem, event_items, merge

if TYPE_CHECKING:
    from capstan.events.records import Event
    from capstan.serving.ports import DeploymentRecord, ReplicaRecord

__all__ = ["deployment_timeline", "run_timeline", "workload_owner", "workload_timeline"]

_WORKLOAD_PHASES: dict[str, Phase] = {"Pending": "pending", "Admitted": "running", "Evicting": "running",
                                      "Finished": "succeeded", "Cancelled": "cancelled"}
_RUN_PHASES: dict[str, Phase] = {"RUNNING": "running", "SCHEDULED": "pending", "FINISHED": "succeeded",
                                 "FAILED": "failed", "KILLED": "cancelled"}
_CRASHES = frozenset({"ReplicaCrashed", "ModelLoadFailed"})
_DEPLOYMENT_PHASES: dict[str, Phase] = {"ready": "running", "scaled-to-zero": "running", "starting": "running"}
_CHANGES = frozenset({"Created", "Applied", "Promoted", "RolledBack", "Scaled"})


def workload_owner(workload_id: str) -> Related | None:
    """What a queue workload belongs to, from its id: a job, a deployment or a pipeline step."""
    if workload_id.startswith("job/"):
        return Related("job", workload_id[len("job/"):], "owner")
    if workload_id.startswith("deployment/"):
        parts = workload_id.split("/")
        return Related("deployment", parts[2], "owner") if len(parts) >= 3 else None
    run, sep, step = workload_id.partition("/")
    if sep and step and all(ch in "0123456789abcdef" for ch in run) and len(run) >= 8:
        return Related("step", f"{run}/{step.split('#', 1)[0]}", "owner")
    return None


def workload_timeline(sources: Sources, scope: Scope, workload_id: str) -> Timeline:
    """The timeline of queue workload ``workload_id``."""
    view = queue_view(sources, [workload_id])
    if view is None:
        raise ResourceDoesNotExist(f"workload {workload_id!r} does not exist")
    record = view.record
    scope.check(f"workload {workload_id!r}", record.workload.project)
    source = f"workload/{record.id}"
    items = queue_items(view)
    if not any(item.reason == "Submitted" for item in items) and record.submitted_at:
        items.insert(0, TimelineItem(record.submitted_at, "state", source, f"queued in {record.workload.queue}",
                                     "info", "Submitted"))
    phase = _WORKLOAD_PHASES.get(record.state, "pending")
    queue_reason, queue_message, queue_hint = view.queue_text() if phase == "pending" else ("", "", "")
    facts = Facts("workload", phase, record.reason.value, record.message, queue_reason=queue_reason,
                  queue_message=queue_message, queue_hint=queue_hint, preemptions=record.preemptions,
                  preempted_by=view.preempted_by)
    merged, truncated = merge(items, limit=scope.limit)
    limit = view.memory_request()
    peaks = (Peak("memory", None, limit, "each pod (the request)"),) if limit else ()
    owner = workload_owner(record.id)
    diagnosis = classify(facts)
    if phase in ("succeeded", "cancelled") and owner is not None:
        diagnosis = _owner_diagnosis(sources, scope, owner, record.workload.project) or diagnosis
    return Timeline("workload", record.id, record.workload.project, record.state, record.reason.value,
                    record.message, diagnosis, merged, peaks, related=(owner,) if owner else (),
                    created_ms=record.submitted_at, started_ms=record.admitted_at, ended_ms=record.finished_at,
                    truncated=truncated)


def _owner_diagnosis(sources: Sources, scope: Scope, owner: Related, project: str) -> Diagnosis | None:
    """How the work of an ended workload went (its quota was returned either way): its owner's diagnosis, when the
    owner can be read."""
    from capstan.troubleshoot.reads_jobs import job_timeline
    from capstan.troubleshoot.reads_pipelines import step_timeline

    readers = {"job": job_timeline, "step": step_timeline, "deployment": deployment_timeline}
    try:
        return readers[owner.kind](sources, dataclasses.replace(scope, project=project), owner.id).diagnosis
    except CapstanError:  # the owner is gone (deleted, garbage-collected): the queue's record is all there is
        return None


# -- deployments ---------------------------------------------------------------------------------------------------
def deployment_timeline(sources: Sources, scope: Scope, name: str) -> Timeline:
    """The timeline of deployment ``name`` of the scope's project."""
    record = sources.deployments.get(scope.project, name)
    if record is None:
        raise ResourceDoesNotExist(f"deployment {name!r} does not exist in project {scope.project!r}")
    replicas = sources.deployments.replicas(scope.project, name)
    source = f"deployment/{name}"
    events = object_events(sources.events, "deployment", f"{record.project}/{name}")
    items = event_items(events, source=source)
    if not any(e.reason == "Created" for e in events):
        items.insert(0, TimelineItem(record.created_ms, "state", source, f"deployment created: "
                                     f"{record.spec.model.uri}", "info", "Created"))
    waiting = [r for r in replicas if r.state == "pending"]
    views = [v for v in (queue_view(sources, [_replica_workload(record, r)]) for r in waiting) if v is not None]
    for view in views:
        items.extend(queue_items(view))
    for replica in replicas:
        items.append(TimelineItem(replica.updated_ms, "state", f"replica/{replica.id}",
                                  f"replica {replica.id} ({replica.role}, {replica.model_version}) {replica.state}"
                                  + (f": {replica.message}" if replica.message else ""),
                                  "error" if replica.state == "failed" else "info", replica.state.capitalize()))
    state, phase, crash = _deployment_state(record, replicas, events)
    tail = tail_lines(str(crash.data.get("output") or ""), scope.tail) if crash is not None else ()
    memory = record.spec.resources.memory_milli
    limit = memory // MILLI if memory else None
    facts = _deployment_facts(record, replicas, phase, crash, tail, views, limit)
    merged, truncated = merge(items, limit=scope.limit)
    peaks = _replica_peaks(replicas, events, limit)
    related = tuple(Related("workload", v.record.id, "replica workload") for v in views)
    return Timeline("deployment", name, record.project, state, crash.reason if crash is not None else "",
                    facts.message, classify(facts), merged, peaks, tail,
                    f"output of replica {crash.data.get('replica')}" if tail and crash is not None else "", related,
                    created_ms=record.created_ms, truncated=truncated)


def _replica_peaks(replicas: tuple[ReplicaRecord, ...], events: list[Event], limit: int | None) -> tuple[Peak, ...]:
    """The peak memory of the replica processes that ended (from their exit events) and of those running (from
    their rows), the last five, against the per-replica request; the request alone when none was measured."""
    peaks = [Peak("memory", used, limit, f"replica {e.data.get('replica')}, {e.reason}")
             for e in events if e.reason in _CRASHES and isinstance(used := e.data.get("peak_memory"), int)]
    peaks += [Peak("memory", r.peak_memory, limit, f"replica {r.id} ({r.state})") for r in replicas
              if r.peak_memory is not None]
    if not peaks and limit:
        return (Peak("memory", None, limit, "each replica (the request)"),)
    return tuple(peaks[-5:])


def _replica_workload(record: DeploymentRecord, replica: ReplicaRecord) -> str:
    return f"deployment/{record.project}/{record.name}/{replica.id}"


def _deployment_state(record: DeploymentRecord, replicas: tuple[ReplicaRecord, ...],
                      events: list[Event]) -> tuple[str, Phase, Event | None]:
    """The deployment's state as ``capstan deployments status`` names it, the phase, and the crash that explains it
    when no replica is ready and one crashed since the last change (a crash loop waiting for its restart)."""
    from capstan.serving.manage import deployment_state

    state = deployment_state(record, list(replicas))
    changed = max((e.time for e in events if e.reason in _CHANGES), default=0)
    crash = next((e for e in reversed(events) if e.reason in _CRASHES and e.time >= changed), None)
    if state == "failed" or (state in ("starting", "pending") and crash is not None):
        restarts = sum(r.restarts for r in replicas)
        return (f"{state} (crash loop, {restarts} restart(s))" if state != "failed" else state), "failed", crash
    return state, _DEPLOYMENT_PHASES.get(state, "pending"), None


def _deployment_facts(record: DeploymentRecord, replicas: tuple[ReplicaRecord, ...], phase: Phase,
                      crash: Event | None, tail: tuple[str, ...], views: list[QueueView],
                      memory_limit: int | None = None) -> Facts:
    restarts = sum(r.restarts for r in replicas)
    if phase == "failed" and crash is not None:
        code = crash.data.get("exit_code")
        peak = crash.data.get("peak_memory")
        return Facts("deployment", "failed", crash.reason, crash.message,
                     exit_code=code if isinstance(code, int) and code >= 0 else None, log_tail=tail,
                     earlier=(f"{restarts} replica restart(s)",) if restarts else (),
                     peak_memory=peak if isinstance(peak, int) else None, memory_limit=memory_limit)
    if phase == "failed":
        failed = next((r for r in replicas if r.state == "failed"), None)
        return Facts("deployment", "failed", "ReplicaFailed", failed.message if failed else "its replicas fail")
    if phase == "pending":
        if views:
            view = views[0]
            reason, message, hint = view.queue_text()
            return Facts("deployment", "pending", "", "replicas wait for the queue", queue_reason=reason,
                         queue_message=message, queue_hint=hint)
        pending = next((r for r in replicas if r.state == "pending"), None)
        return Facts("deployment", "pending", "", pending.message if pending else "no replica started yet")
    if not replicas and record.desired_replicas == 0:
        return Facts("deployment", "running", "", "scaled to zero; the first request starts a replica")
    ready = sum(1 for r in replicas if r.state == "ready")
    return Facts("deployment", "running", "", f"{ready} replica(s) ready, {record.desired_replicas} desired, "
                                              f"revision {record.revision}")


# -- tracking runs -------------------------------------------------------------------------------------------------
def run_timeline(sources: Sources, scope: Scope, run_id: str) -> Timeline:
    """The timeline of tracking run ``run_id``; a run a training job logs to takes the job's diagnosis and log."""
    try:
        run = sources.tracking.get_run(run_id)
    except ResourceDoesNotExist:
        raise ResourceDoesNotExist(f"run {run_id!r} does not exist") from None
    info = run.info
    project = sources.tracking.get_experiment(info.experiment_id).project
    scope.check(f"run {run_id!r}", project)
    source = f"run/{info.run_id}"
    items = event_items(object_events(sources.events, "run", info.run_id), source=source)
    if info.start_time is not None and not any(i.reason in ("RunCreated", "RunStarted") for i in items):
        items.insert(0, TimelineItem(info.start_time, "state", source, f"run {info.run_name} started", "info",
                                     "Started"))
    phase = _RUN_PHASES.get(info.status, "pending")
    tags = run.data.tags
    related: list[Related] = []
    diagnosis = classify(Facts("run", phase, "", f"status {info.status}"))
    tail: tuple[str, ...] = ()
    log_source = ""
    job_id = tags.get("capstan.job.id")
    if job_id:
        related.append(Related("job", job_id, "the job that logs to it"))
        try:
            job = _job(sources, scope, job_id)
        except CapstanError:
            job = None
        if job is not None:
            diagnosis, tail, log_source = job.diagnosis, job.log_tail, job.log_source
            items.extend(i for i in job.items if i.kind in ("attempt", "restart", "log"))
    elif phase == "failed":
        diagnosis = classify(Facts("run", "failed", "RunFailed", "the program that logged to it marked it FAILED"))
    if tags.get("capstan.study") and tags.get("capstan.trial.number"):
        related.append(Related("trial", f"{tags['capstan.study']}/{tags['capstan.trial.number']}", "trial"))
    merged, truncated = merge(items, limit=scope.limit)
    return Timeline("run", info.run_id, project, info.status, "", "", diagnosis, merged, (), tail, log_source,
                    tuple(related), started_ms=info.start_time, ended_ms=info.end_time, truncated=truncated)


def _job(sources: Sources, scope: Scope, job_id: str) -> Timeline:
    from capstan.troubleshoot.reads_jobs import job_timeline

    return job_timeline(sources, scope, job_id)
