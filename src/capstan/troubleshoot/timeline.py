"""One time axis per workload: the records `capstan describe`, ``/api/v1/timeline`` and the UI's timeline page show.

A `Timeline` holds what is known of one workload of any kind (pipeline run, step, training job, study trial, queue
workload, deployment, tracking run): its state with reason and message, `TimelineItem` s in time order (state
changes, events of the event log, queue decisions, attempts and restarts, log excerpts at failures), resource
`Peak` s against their limits, the tail of its log, the workloads it is tied to (`Related`) and the `Diagnosis` of
`capstan.troubleshoot.classify`. Everything here is pure: the per-kind readers (`capstan.troubleshoot.reads_*`)
gather the records and call these helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from capstan.events.records import WARNING, Event
from capstan.troubleshoot.classify import Diagnosis, format_bytes

__all__ = ["MAX_ITEMS", "ItemKind", "Level", "Peak", "Related", "Timeline", "TimelineItem", "event_items", "merge"]

Level = Literal["info", "warning", "error"]
ItemKind = Literal["state", "event", "queue", "attempt", "restart", "log"]
"""``state``: the workload's own state change (created, started, ended); ``event``: an event-log entry of the
workload; ``queue``: a decision of the workload queue (submitted, admitted, preempted, requeued, why it waits);
``attempt``: an attempt's start or end; ``restart``: a restart or requeue of a job's gang or a replica; ``log``: an
excerpt of the output (the error line of a failed attempt)."""

MAX_ITEMS = 500
"""Items kept by default (the latest)."""

# Warning events that say something failed (shown as errors); other warnings stay warnings.
_ERROR_REASONS = frozenset({"OOMKilled", "Timeout", "Unschedulable", "WorkerFailed", "Exception", "NonZeroExit",
                            "ReplicaCrashed", "CommandNotFound", "WorkerLost", "AdmissionRejected", "RunnerError"})
_RESTART_REASONS = frozenset({"WorkerFailed", "OOMKilled", "Preempted", "NodeLost", "ReplicaRestarted",
                              "RetryScheduled", "Requeued"})


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One point of the time axis: when (epoch ms), what sort (`ItemKind`), where it comes from (``step/RUN/STEP``,
    ``workload/ID``, ``rank 1``...), what it says and how bad it is."""

    at_ms: int
    kind: ItemKind
    source: str
    text: str
    level: Level = "info"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"at_ms": self.at_ms, "kind": self.kind, "source": self.source, "reason": self.reason,
                "text": self.text, "level": self.level}


@dataclass(frozen=True, slots=True)
class Peak:
    """The most of a resource the workload used (``used``; None when not recorded) against its ``limit`` (None when
    it declared none), in the resource's unit (bytes for ``memory``), measured over ``source`` (``attempt 2``)."""

    resource: str
    used: int | None
    limit: int | None
    source: str

    @property
    def fraction(self) -> float | None:
        """``used / limit`` when both are known."""
        if self.used is None or not self.limit:
            return None
        return self.used / self.limit

    def text(self) -> str:
        """``memory: 98.5Mi of 100Mi (98%) in attempt 1``."""
        fmt = format_bytes if self.resource == "memory" else str
        used = "not recorded" if self.used is None else fmt(self.used)
        limit = f" of {fmt(self.limit)}" if self.limit else " (no limit)"
        share = f" ({100 * self.fraction:.0f}%)" if self.fraction is not None else ""
        return f"{self.resource}: {used}{limit}{share} in {self.source}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"resource": self.resource, "used": self.used, "limit": self.limit, "fraction": self.fraction,
                "source": self.source, "text": self.text()}


@dataclass(frozen=True, slots=True)
class Related:
    """Another workload this one is tied to (its queue workload, the job a trial ran, the run a job logs to), as
    ``describe`` names it: ``kind`` and ``id``, and how it is tied (``role``)."""

    kind: str
    id: str
    role: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"kind": self.kind, "id": self.id, "role": self.role}


@dataclass(frozen=True, slots=True)
class Timeline:
    """Everything ``capstan describe KIND/ID`` shows of one workload (see the module docstring)."""

    kind: str
    id: str
    project: str
    state: str
    reason: str
    message: str
    diagnosis: Diagnosis
    items: tuple[TimelineItem, ...] = ()
    peaks: tuple[Peak, ...] = ()
    log_tail: tuple[str, ...] = ()
    log_source: str = ""
    related: tuple[Related, ...] = ()
    created_ms: int | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    truncated: bool = False
    """Older items were left out (more than the limit)."""

    def recent(self, count: int, kinds: Sequence[str] = ("event", "queue", "restart")) -> tuple[TimelineItem, ...]:
        """The last ``count`` items of ``kinds`` (the events ``describe`` lists)."""
        chosen = [item for item in self.items if item.kind in kinds]
        return tuple(chosen[-count:]) if count > 0 else ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the body of ``GET /api/v1/timeline/KIND/ID``)."""
        return {"kind": self.kind, "id": self.id, "project": self.project, "state": self.state,
                "reason": self.reason, "message": self.message, "created_ms": self.created_ms,
                "started_ms": self.started_ms, "ended_ms": self.ended_ms, "diagnosis": self.diagnosis.to_dict(),
                "items": [item.to_dict() for item in self.items], "truncated": self.truncated,
                "peaks": [peak.to_dict() for peak in self.peaks], "log_tail": list(self.log_tail),
                "log_source": self.log_source, "related": [r.to_dict() for r in self.related]}


def level_of(event: Event) -> Level:
    """How bad an event is: ``error`` for a warning that says something failed, ``warning`` for other warnings."""
    if event.type != WARNING:
        return "info"
    reason = event.reason
    if reason in _ERROR_REASONS or reason.endswith(("Failed", "Crashed")):
        return "error"
    return "warning"


def event_items(events: Iterable[Event], *, kind: ItemKind = "event", source: str | None = None) -> list[TimelineItem]:
    """Items of ``events``: restarts and requeues as ``restart`` items, the rest as ``kind``, each from
    ``source`` (by default the event's ``kind/object_id``)."""
    out = []
    for event in events:
        item_kind: ItemKind = "restart" if event.reason in _RESTART_REASONS else kind
        text = event.message or event.reason
        out.append(TimelineItem(event.time, item_kind, source or f"{event.kind}/{event.object_id}", text,
                                level_of(event), event.reason))
    return out


def merge(*groups: Iterable[TimelineItem], limit: int = MAX_ITEMS) -> tuple[tuple[TimelineItem, ...], bool]:
    """The items of every group on one axis (by time; equal times keep their order), the latest ``limit``, and
    whether older ones were left out."""
    items = sorted((item for group in groups for item in group), key=lambda item: item.at_ms)
    if len(items) > limit:
        return tuple(items[-limit:]), True
    return tuple(items), False
