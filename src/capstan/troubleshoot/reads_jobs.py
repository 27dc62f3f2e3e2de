"""Timelines of training jobs and study trials.

A job's timeline holds its attempts (each start of the gang and how it ended: the first failing rank and its exit
code), its restarts and preemptions (events of kind ``job``), the queue's decisions about its workload
(``job/ID``) and the error line of each failed attempt's failing rank; its log tail is that rank's standard error
(its standard output when it wrote nothing there). Its peaks are each ended attempt's peak resident memory (the
runner reads every rank's from the kernel when it reaps the process) against the spec's per-worker ``memory``: the
largest rank's peak, or with several processes per worker the largest worker's sum of its processes' peaks; the OOM
diagnosis of a failed attempt names that peak against the limit.

A trial's timeline holds its own start and end, the queue's decisions about its workload, and its log (a function or
script trial's ``trial-N.log``); a trial run as a training job shows that job's attempts and logs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.troubleshoot.classify import Facts, Phase, classify, error_line, format_duration
from capstan.troubleshoot.sources import (
    QueueView,
    Scope,
    Sources,
    kueue_of,
    object_events,
    queue_items,
    queue_view,
    tail_lines,
)
from capstan.troubleshoot.timeline import Peak, Related, Timeline, TimelineItem, event_items, merge

if TYPE_CHECKING:
    from capstan.k8s.kueue_status import KueueStatus
    from capstan.training.ports import JobAttempt, JobRecord
    from capstan.training.spec import TrainingJobSpec
    from capstan.tuning.ports import StudyRecord, TrialRecord

__all__ = ["job_timeline", "trial_log_path", "trial_timeline"]

_JOB_PHASES: dict[str, Phase] = {"Pending": "pending", "Running": "running", "Restarting": "failed",
                                 "Succeeded": "succeeded", "Failed": "failed", "Cancelled": "cancelled"}
_TRIAL_PHASES: dict[str, Phase] = {"WAITING": "pending", "RUNNING": "running", "COMPLETE": "succeeded",
                                   "PRUNED": "succeeded", "FAILED": "failed"}
_FAILURES = frozenset({"WorkerFailed", "OOMKilled", "NodeLost"})
MAX_LOGS_READ = 3


def job_timeline(sources: Sources, scope: Scope, job_id: str) -> Timeline:
    """The timeline of training job ``job_id``."""
    record = sources.jobs.get(job_id)
    if record is None:
        raise ResourceDoesNotExist(f"job {job_id!r} does not exist")
    scope.check(f"job {job_id!r}", record.project)
    attempts = sources.jobs.attempts(job_id)
    source = f"job/{job_id}"
    view = queue_view(sources, [record.workload or "", f"job/{job_id}"])
    failing = [a for a in attempts if a.reason in _FAILURES]
    logs = {a.number: _rank_log(sources.home, job_id, a, max(scope.tail, 200)) for a in failing[-MAX_LOGS_READ:]}
    last = attempts[-1] if attempts else None
    if last is not None and last.number not in logs:
        logs[last.number] = _rank_log(sources.home, job_id, last, max(scope.tail, 200))
    phase = _JOB_PHASES.get(record.state, "pending")
    events = object_events(sources.events, "job", job_id)
    kueue = kueue_of(events) if phase == "pending" else None  # Kueue mode: why Kueue keeps its Job suspended
    items = [TimelineItem(record.created_ms, "state", source, f"job submitted by {record.user or 'unknown'}: "
                          f"{record.spec.workers} worker(s) x {record.spec.nproc_per_worker} process(es) of "
                          f"{record.spec.entry}", "info", "Submitted"),
             *_attempt_items(attempts, logs, source, record.spec),
             *event_items(events, source=source),
             *queue_items(view)]
    merged, truncated = merge(items, limit=scope.limit)
    tail, log_source = logs.get(last.number, ((), "")) if last is not None else ((), "")
    facts = _job_facts(record, attempts, phase, view, tail, kueue if kueue is not None and kueue.holds_it else None)
    peaks = tuple(p for p in (_attempt_peak(a, record.spec) for a in attempts) if p is not None)[-5:]
    if not peaks and record.spec.memory:
        peaks = (Peak("memory", None, record.spec.memory, "each worker (no attempt has ended yet)"),)
    related = [Related("workload", view.record.id, "queue workload")] if view is not None else []
    if record.run_id:
        related.append(Related("run", record.run_id, "tracking run"))
    return Timeline("job", job_id, record.project, record.state, record.reason, record.message, classify(facts),
                    merged, peaks, tail[-scope.tail:] if scope.tail else (), log_source, tuple(related),
                    created_ms=record.created_ms, started_ms=record.started_ms, ended_ms=record.ended_ms,
                    truncated=truncated)


def _attempt_peak(attempt: JobAttempt, spec: TrainingJobSpec) -> Peak | None:
    """The attempt's peak memory against the per-worker limit: the largest rank's, or with several processes per
    worker the largest worker's sum; None when the attempt recorded none."""
    from capstan.training.job_views import worker_peak

    if attempt.peak_memory is None:
        return None
    limit = spec.memory or None
    if spec.nproc_per_worker > 1:
        found = worker_peak(attempt.rank_peak_memory, spec.nproc_per_worker)
        if found is not None:
            return Peak("memory", found[1], limit, f"attempt {attempt.number}, worker {found[0]} (sum of its "
                                                   f"{spec.nproc_per_worker} processes)")
    return Peak("memory", attempt.peak_memory, limit, f"attempt {attempt.number}, rank {attempt.peak_rank}")


def _rank_log(home: Path, job_id: str, attempt: JobAttempt, count: int) -> tuple[tuple[str, ...], str]:
    """The last lines of the failing rank's standard error (its standard output when it wrote nothing there), or
    of rank 0's standard output when no rank failed; with where they come from."""
    from capstan.training.logs import read_logs

    rank = attempt.rank if attempt.rank is not None else 0
    try:
        lines = read_logs(home, job_id, attempt=attempt.number)
    except CapstanError:
        return (), ""
    mine = [line for line in lines if line.rank == rank]
    order = ("err", "out") if attempt.rank is not None else ("out", "err")
    for stream in order:
        chosen = [line.text for line in mine if line.stream == stream]
        if any(text.strip() for text in chosen):
            worker = next(line.worker for line in mine if line.stream == stream)
            name = "stderr" if stream == "err" else "stdout"
            where = f"attempt {attempt.number}, worker {worker}, rank {rank} ({name})"
            return tail_lines("\n".join(chosen), count), where
    return (), ""


def _job_facts(record: JobRecord, attempts: list[JobAttempt], phase: Phase, view: QueueView | None,
               tail: tuple[str, ...], kueue: KueueStatus | None = None) -> Facts:
    from capstan.training.job_views import attempt_json

    failed = next((a for a in reversed(attempts) if a.reason in _FAILURES), None)
    last = attempts[-1] if attempts else None
    exit_code = failed.exit_code if failed is not None and phase == "failed" else None
    preempted = [a for a in attempts if a.reason == "Preempted"]
    lost = None
    if preempted and preempted[-1].ended_ms is not None:
        lost = preempted[-1].ended_ms - preempted[-1].started_ms
    queue_reason = queue_message = queue_hint = preempted_by = ""
    if phase == "pending" and kueue is not None:  # Kueue admits it: Kueue's reason, not Capstan's queue's
        queue_reason, queue_message, queue_hint = kueue.reason, kueue.summary, kueue.hint
        preempted_by = kueue.preemptor.text() if kueue.preemptor is not None else ""
    elif phase == "pending" and view is not None:
        queue_reason, queue_message, queue_hint = view.queue_text()
    elif phase == "pending" and record.reason not in ("", "Preempted", "NodeLost"):
        queue_reason, queue_message = record.reason, record.message
    earlier = tuple(f"attempt {a.number}: {attempt_json(a)['summary']}" for a in attempts
                    if a is not last and a.reason not in (None, "Succeeded"))
    reason, message = record.reason, record.message
    if phase == "failed" and failed is not None and record.reason in ("", "Restarting"):
        reason, message = str(failed.reason), failed.message
    measured = failed if phase == "failed" and failed is not None else last
    peak = _attempt_peak(measured, record.spec) if measured is not None else None
    return Facts("job", phase, reason, message, exit_code=exit_code,
                 oom_killed=failed is not None and failed.reason == "OOMKilled", log_tail=tail,
                 peak_memory=peak.used if peak is not None else None, memory_limit=record.spec.memory or None,
                 queue_reason=queue_reason, queue_message=queue_message,
                 queue_hint=queue_hint, preemptions=record.preemptions,
                 preempted_by=preempted_by or (view.preempted_by if view is not None else ""), lost_ms=lost,
                 earlier=earlier)


def _attempt_items(attempts: list[JobAttempt], logs: dict[int, tuple[tuple[str, ...], str]],
                   source: str, spec: TrainingJobSpec) -> list[TimelineItem]:
    from capstan.training.job_views import attempt_json, peak_text

    items = []
    for a in attempts:
        if a.ended_ms is None:  # its start is the Started event
            continue
        ran = format_duration(max(0, a.ended_ms - a.started_ms))
        bad = a.reason in _FAILURES
        data = attempt_json(a)
        peak = peak_text(data, spec.to_dict())
        text = f"attempt {a.number} ended after {ran}: {data['summary']}" + \
            (f"; peak memory {peak}" if peak != "-" else "")
        items.append(TimelineItem(a.ended_ms, "attempt", source, text[:500],
                                  "error" if bad else "warning" if a.reason == "Preempted" else "info",
                                  a.reason or "Ended"))
        lines, where = logs.get(a.number, ((), ""))
        line = error_line(lines) if bad else ""
        if line:
            items.append(TimelineItem(a.ended_ms, "log", source, f"{where}: {line}", "error", "LogExcerpt"))
    return items


# -- trials --------------------------------------------------------------------------------------------------------
def trial_log_path(home: Path, project: str, study: str, number: int) -> Path:
    """Where a function or script trial's output is kept (the study controller writes it there)."""
    return home / "studies" / project / study / f"trial-{number}.log"


def trial_timeline(sources: Sources, scope: Scope, ident: str) -> Timeline:
    """The timeline of trial ``STUDY/NUMBER`` of a study in the scope's project."""
    name, _, number_text = ident.rpartition("/")
    if not name or not number_text.isdigit():
        raise InvalidParameterValue(f"id: a trial is named STUDY/NUMBER (e.g. trial/digits-mlp/3), got {ident!r}")
    number = int(number_text)
    study = sources.studies.get(scope.project, name)
    if study is None:
        raise ResourceDoesNotExist(f"study {name!r} does not exist in project {scope.project!r}")
    trials = sources.studies.trials(scope.project, name)
    trial = next((t for t in trials if t.number == number), None)
    if trial is None:
        numbers = ", ".join(str(t.number) for t in trials[:20]) or "none yet"
        raise ResourceDoesNotExist(f"study {name!r} has no trial {number} (trials: {numbers})")
    return _trial(sources, scope, study, trial)


def _trial(sources: Sources, scope: Scope, study: StudyRecord, trial: TrialRecord) -> Timeline:
    source = f"trial/{study.name}/{trial.number}"
    phase = _TRIAL_PHASES.get(trial.state, "pending")
    job_id = trial.workload[len("job/"):] if trial.workload and trial.workload.startswith("job/") else None
    job = None
    if job_id is not None and sources.jobs.get(job_id) is not None:
        job = job_timeline(sources, dataclasses.replace(scope, only_project=None), job_id)
    view = queue_view(sources, [trial.workload]) if trial.workload and job is None else None
    items = [TimelineItem(trial.started_ms, "state", source, f"trial {trial.number} created ("
                          f"{trial.attempts} start(s))", "info", "Created")]
    if trial.ended_ms is not None:
        value = f", value {trial.value:g}" if trial.value is not None else ""
        what = f"trial {trial.number} {trial.state}{value}" + (f": {trial.message}" if trial.message else "")
        items.append(TimelineItem(trial.ended_ms, "state", source, what[:500],
                                  "error" if trial.state == "FAILED" else "info", trial.state.capitalize()))
    items.extend(queue_items(view))
    if job is not None:
        items.extend(job.items)
        tail, log_source = job.log_tail, job.log_source
    else:
        path = trial_log_path(sources.home, study.project, study.name, trial.number)
        try:
            tail = tail_lines(path.read_bytes(), max(scope.tail, 200))
        except OSError:
            tail = ()
        log_source = f"trial {trial.number} output" if tail else ""
    if trial.state == "FAILED" and tail:
        line = error_line(tail)
        if line:
            items.append(TimelineItem(trial.ended_ms or trial.started_ms, "log", source, f"{log_source}: {line}",
                                      "error", "LogExcerpt"))
    merged, truncated = merge(items, limit=scope.limit)
    diagnosis = classify(_trial_facts(trial, phase, view, tail))
    if job is not None and phase in ("failed", "pending"):
        diagnosis = job.diagnosis
    related = [Related("job", job_id, "training job")] if job is not None and job_id else []
    if view is not None:
        related.append(Related("workload", view.record.id, "queue workload"))
    if trial.run_id:
        related.append(Related("run", trial.run_id, "tracking run"))
    return Timeline("trial", f"{study.name}/{trial.number}", study.project, trial.state, "", trial.message,
                    diagnosis, merged, job.peaks if job is not None else (), tail[-scope.tail:] if scope.tail else (),
                    log_source, tuple(related), created_ms=trial.started_ms, ended_ms=trial.ended_ms,
                    truncated=truncated)


def _trial_facts(trial: TrialRecord, phase: Phase, view: QueueView | None, tail: tuple[str, ...]) -> Facts:
    queue_reason = queue_message = queue_hint = ""
    if phase == "pending" and view is not None:
        queue_reason, queue_message, queue_hint = view.queue_text()
    reason = "Pruned" if trial.state == "PRUNED" else ""
    earlier = (f"started {trial.attempts} times (re-run after its controller stopped)",) if trial.attempts > 1 else ()
    return Facts("trial", phase, reason, trial.message, log_tail=tail, queue_reason=queue_reason,
                 queue_message=queue_message, queue_hint=queue_hint,
                 preempted_by=view.preempted_by if view is not None else "", earlier=earlier)
