"""Timelines of pipeline runs and steps, read from the pipeline store, the event log, the step logs and the queue.

A step's timeline holds its attempts (start, end, exit code, peak memory, duration), its events, the queue's
decisions about each attempt's workload (``RUN/STEP``, then ``RUN/STEP#N`` for later attempts) and the error line
of each failed attempt's log; its memory peaks are measured per attempt by the worker and its limit is what the
workload asked the queue for. A run's timeline holds the run's events and each step's start and end; its diagnosis
is the one of the step that failed first (or of a step that waits for the queue while nothing runs).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.troubleshoot.classify import Diagnosis, Facts, Phase, classify, error_line, format_duration
from capstan.troubleshoot.sources import (
    QueueView,
    Scope,
    Sources,
    kueue_of,
    object_events,
    queue_items,
    queue_view,
    recorded_kueue,
    tail_lines,
)
from capstan.troubleshoot.timeline import Level, Peak, Related, Timeline, TimelineItem, event_items, merge

if TYPE_CHECKING:
    from capstan.k8s.kueue_status import KueueStatus
    from capstan.pipelines.runner import PipelineRunner
    from capstan.pipelines.storage import AttemptRecord, RunRecord, StepRecord

__all__ = ["pipeline_run_timeline", "step_timeline"]

_PHASES: dict[str, Phase] = {"pending": "pending", "queued": "pending", "running": "running",
                             "retrying": "failed", "succeeded": "succeeded", "cached": "succeeded",
                             "failed": "failed", "skipped": "failed", "cancelled": "cancelled"}
_RUN_PHASES: dict[str, Phase] = {"pending": "pending", "running": "running", "succeeded": "succeeded",
                                 "failed": "failed", "cancelled": "cancelled"}
MAX_LOGS_READ = 3
_NAMED_STEP = re.compile(r"step '([^']+)' failed")
"""Failed attempts whose logs are read for their error line (the latest ones)."""


def _run_of(runner: PipelineRunner, scope: Scope, text: str) -> RunRecord:
    store = runner.store
    run = store.get_run(store.resolve_run_id(text))
    scope.check(f"pipeline run {text!r}", run.project)
    return run


def step_timeline(sources: Sources, scope: Scope, ident: str) -> Timeline:
    """The timeline of step ``RUN/STEP`` (``RUN`` may be a unique prefix of the run id)."""
    run_part, _, step_id = ident.partition("/")
    if not run_part or not step_id:
        raise InvalidParameterValue(f"id: a step is named RUN/STEP (e.g. step/3f2a9c/train), got {ident!r}")
    runner = sources.pipelines()
    run = _run_of(runner, scope, run_part)
    steps = {s.step_id: s for s in runner.store.steps(run.id, run.project)}
    step = steps.get(step_id)
    if step is None:
        known = ", ".join(sorted(steps)[:20])
        raise ResourceDoesNotExist(f"pipeline run {run.id} has no step {step_id!r} (steps: {known})")
    return _step(sources, scope, runner, run, step)


def _step(sources: Sources, scope: Scope, runner: PipelineRunner, run: RunRecord, step: StepRecord) -> Timeline:
    from capstan.pipelines.logs import read_log

    attempts = runner.store.attempts(run.id, step.step_id)
    events = object_events(sources.events, "step", f"{run.id}/{step.step_id}")
    base = f"{run.id}/{step.step_id}"
    hinted = [str(e.data["workload"]) for e in events if e.data.get("workload")]
    candidates = [*reversed(hinted), *(f"{base}#{a.attempt}" for a in reversed(attempts)), base]
    views = _views(sources, candidates)
    current = views[0] if views else None
    limit = current.memory_request() if current is not None else None
    logs: dict[int, tuple[str, ...]] = {}
    for attempt in [a for a in attempts if a.state == "failed"][-MAX_LOGS_READ:] + attempts[-1:]:
        if attempt.attempt not in logs:
            try:
                logs[attempt.attempt] = tail_lines(read_log(runner, attempt), max(scope.tail, 200))
            except (CapstanError, OSError):  # the uploaded log is gone (garbage-collected): shown without it
                logs[attempt.attempt] = ()
    last = attempts[-1] if attempts else None
    phase = _PHASES.get(step.state, "pending")
    kueue = kueue_of(events)  # Kueue mode: a started attempt whose Job Kueue keeps suspended is pending
    if kueue is not None and kueue.holds_it and step.state in ("queued", "running"):
        phase = "pending"
    else:
        kueue = None
    facts = _step_facts(step, attempts, phase, current, limit, logs.get(last.attempt, ()) if last else (), kueue)
    items = [*_step_state_items(step, f"step/{base}"), *_attempt_items(attempts, logs, f"step/{base}"),
             *event_items(events, source=f"step/{base}")]
    for view in views:
        items.extend(queue_items(view))
    merged, truncated = merge(items, limit=scope.limit)
    peaks = tuple(Peak("memory", a.peak_memory, limit, f"attempt {a.attempt}") for a in attempts
                  if a.peak_memory is not None)[-5:]
    if not peaks and limit:
        peaks = (Peak("memory", None, limit, "each attempt"),)
    related = (Related("pipeline-run", run.id, "run"),
               *(Related("workload", v.record.id, "queue workload") for v in views))
    tail = logs.get(last.attempt, ()) if last else ()
    return Timeline("step", base, run.project, step.state, step.reason, step.message, classify(facts), merged,
                    peaks, tail[-scope.tail:] if scope.tail else (),
                    f"attempt {last.attempt} of step {step.step_id}" if last else "", related,
                    created_ms=run.created_at, started_ms=step.started_at, ended_ms=step.finished_at,
                    truncated=truncated)


def _views(sources: Sources, candidates: list[str]) -> list[QueueView]:
    """The queue workloads of a step's attempts, the latest first."""
    views: list[QueueView] = []
    seen: set[str] = set()
    for workload_id in dict.fromkeys(candidates):
        view = queue_view(sources, [workload_id])
        if view is not None and view.record.id not in seen:
            seen.add(view.record.id)
            views.append(view)
    return views


def _step_facts(step: StepRecord, attempts: list[AttemptRecord], phase: Phase, view: QueueView | None,
                limit: int | None, tail: tuple[str, ...], kueue: KueueStatus | None = None) -> Facts:
    last = attempts[-1] if attempts else None
    earlier = tuple(f"attempt {a.attempt}: {a.reason}: {a.message}" for a in attempts[:-1]
                    if a.state == "failed" or a.reason)
    preempted = [a for a in attempts if a.reason == "Preempted"]
    reason, message = step.reason, step.message
    if phase == "failed" and last is not None and last.state == "failed" and step.state == "retrying":
        reason, message = last.reason, last.message
    if step.state == "skipped":
        reason = "UpstreamFailed"
    queue_reason = queue_message = queue_hint = preempted_by = ""
    if kueue is not None:  # Kueue admits it (CAPSTAN_KUBE_ADMISSION=kueue): Kueue's reason
        queue_reason, queue_message, queue_hint = kueue.reason, kueue.summary, kueue.hint
        preempted_by = kueue.preemptor.text() if kueue.preemptor is not None else ""
        if kueue.preemptor is not None:
            reason = "Preempted"
    elif phase == "pending" and view is not None and view.why is not None:
        queue_reason, queue_message, queue_hint = view.queue_text()
    elif phase == "pending" and step.state == "queued" and step.reason:
        queue_reason, queue_message = step.reason, step.message
    lost = preempted[-1].duration_ms if preempted else None
    if lost is None and preempted and preempted[-1].finished_at is not None:
        lost = preempted[-1].finished_at - preempted[-1].started_at
    return Facts("step", phase, reason, message,
                 exit_code=last.exit_code if last is not None and last.state == "failed" else None,
                 log_tail=tail, peak_memory=last.peak_memory if last is not None else None, memory_limit=limit,
                 queue_reason=queue_reason, queue_message=queue_message, queue_hint=queue_hint,
                 preemptions=len(preempted),
                 preempted_by=preempted_by or (view.preempted_by if view is not None else ""),
                 lost_ms=lost, earlier=earlier)


def _step_state_items(step: StepRecord, source: str) -> list[TimelineItem]:
    items = []
    if step.started_at is not None:
        items.append(TimelineItem(step.started_at, "state", source, f"step {step.step_id} started", "info",
                                  "Started"))
    if step.finished_at is not None:
        what = f"step {step.step_id} {step.state}" + (f": {step.reason}: {step.message}" if step.reason else "")
        level: Level = "error" if step.state == "failed" else \
            "warning" if step.state in ("skipped", "cancelled") else "info"
        items.append(TimelineItem(step.finished_at, "state", source, what[:500], level, step.state.capitalize()))
    return items


def _attempt_items(attempts: list[AttemptRecord], logs: dict[int, tuple[str, ...]],
                   source: str) -> list[TimelineItem]:
    items = []
    for a in attempts:
        if a.finished_at is None:  # its start is the StepStarted event
            continue
        parts = [f"attempt {a.attempt} {a.state}"]
        if a.reason:
            parts.append(f"{a.reason}: {a.message}" if a.message else a.reason)
        facts = []
        if a.exit_code not in (None, 0):
            facts.append(f"exit code {a.exit_code}")
        if a.duration_ms is not None:
            facts.append(format_duration(a.duration_ms))
        if a.peak_memory is not None:
            from capstan.troubleshoot.classify import format_bytes

            facts.append(f"peak memory {format_bytes(a.peak_memory)}")
        text = ": ".join(parts) + (f" ({', '.join(facts)})" if facts else "")
        failed = a.state == "failed"
        items.append(TimelineItem(a.finished_at, "attempt", source, text[:500], "error" if failed else "info",
                                  a.reason or a.state.capitalize()))
        line = error_line(logs.get(a.attempt, ())) if failed else ""
        if line:
            items.append(TimelineItem(a.finished_at, "log", source, f"attempt {a.attempt} log: {line}", "error",
                                      "LogExcerpt"))
    return items


# -- runs ----------------------------------------------------------------------------------------------------------
def pipeline_run_timeline(sources: Sources, scope: Scope, ident: str) -> Timeline:
    """The timeline of pipeline run ``ident`` (a unique prefix of its id is enough)."""
    runner = sources.pipelines()
    run = _run_of(runner, scope, ident)
    steps = runner.store.steps(run.id, run.project)
    attempts = runner.store.attempts(run.id)
    source = f"pipeline-run/{run.id}"
    items = [TimelineItem(run.created_at, "state", source, f"run of {run.name} created ({run.source})", "info",
                         "Created"),
             *event_items(object_events(sources.events, "pipeline-run", run.id), source=source)]
    for step in steps:
        if step.parent is None or step.state in ("failed", "retrying"):
            items.extend(_step_state_items(step, f"step/{run.id}/{step.step_id}"))
    phase = _RUN_PHASES.get(run.status, "pending")
    culprit = _culprit(run, steps, phase) or _held_by_kueue(sources, run, steps, phase)
    related: list[Related] = []
    peaks = _top_peaks(attempts)
    tail: tuple[str, ...] = ()
    log_source = ""
    if culprit is not None:
        sub = _step(sources, scope, runner, run, culprit)
        items.extend(i for i in sub.items if i.kind != "state")
        others = [s.step_id for s in steps if s.state == "failed" and s is not culprit]
        diagnosis = _prefixed(sub.diagnosis, culprit.step_id, others)
        tail, log_source, peaks = sub.log_tail, sub.log_source, sub.peaks or peaks
        related.append(Related("step", f"{run.id}/{culprit.step_id}", "failed step" if phase == "failed"
                               else "waiting step"))
    else:
        diagnosis = classify(_run_facts(run, steps, phase))
    merged, truncated = merge(items, limit=scope.limit)
    return Timeline("pipeline-run", run.id, run.project, run.status, "", run.message, diagnosis, merged, peaks,
                    tail, log_source, tuple(related), created_ms=run.created_at, started_ms=run.started_at,
                    ended_ms=run.finished_at, truncated=truncated)


def _culprit(run: RunRecord, steps: list[StepRecord], phase: Phase) -> StepRecord | None:
    """The step whose cause is the run's: the one its message names (``step 'x' failed``), else the first to fail;
    while nothing runs, a step the queue holds back."""
    if phase == "failed":
        failed = [s for s in steps if s.state == "failed"]
        named = _NAMED_STEP.search(run.message)
        chosen = next((s for s in failed if named and s.step_id == named.group(1)), None)
        return chosen or (min(failed, key=lambda s: (s.finished_at or 0, s.step_id)) if failed else None)
    if phase in ("pending", "running") and not any(s.state == "running" for s in steps):
        return next((s for s in steps if s.state == "queued" and s.reason), None)
    return None


def _held_by_kueue(sources: Sources, run: RunRecord, steps: list[StepRecord], phase: Phase) -> StepRecord | None:
    """In Kueue mode, while every running step's Job is one Kueue keeps suspended: the first of them (the run waits
    for Kueue, though its steps' attempts have started)."""
    if phase not in ("pending", "running"):
        return None
    running = [s for s in steps if s.state == "running" and s.parent is None]
    held = [s for s in running if recorded_kueue(sources.events, "step", f"{run.id}/{s.step_id}") is not None]
    return held[0] if held and len(held) == len(running) else None


def _run_facts(run: RunRecord, steps: list[StepRecord], phase: Phase) -> Facts:
    done = sum(1 for s in steps if s.state in ("succeeded", "cached"))
    running = sum(1 for s in steps if s.state == "running")
    cached = sum(1 for s in steps if s.state == "cached")
    if phase == "running":
        message = f"{running} step(s) running, {done} of {len(steps)} done"
    elif phase == "succeeded":
        message = f"{len(steps)} step(s), {cached} from the cache"
    else:
        message = run.message
    return Facts("pipeline-run", phase, "Cancelled" if phase == "cancelled" else "", message)


def _prefixed(diagnosis: Diagnosis, step_id: str, others: list[str]) -> Diagnosis:
    also = (f"other failed steps: {', '.join(others[:10])}" + (" ..." if len(others) > 10 else ""),) if others else ()
    return dataclasses.replace(diagnosis, summary=f"step {step_id}: {diagnosis.summary}",
                               evidence=(*diagnosis.evidence, *also))


def _top_peaks(attempts: list[AttemptRecord]) -> tuple[Peak, ...]:
    """The highest memory peak of each step (its last attempt with one), the five highest."""
    by_step: dict[str, AttemptRecord] = {}
    for a in attempts:
        if a.peak_memory is not None:
            by_step[a.step_id] = a
    top = sorted(by_step.values(), key=lambda a: -(a.peak_memory or 0))[:5]
    return tuple(Peak("memory", a.peak_memory, None, f"step {a.step_id} attempt {a.attempt}") for a in top)
