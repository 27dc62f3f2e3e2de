"""What the timeline readers read through: the ports of the composition root (`Sources`), the caller's scope and
sizes (`Scope`), and the read helpers every kind shares (an object's events, a log's last lines, a queue workload
with its explanation).

`capstan.services.Services.timelines` builds the `Sources` from its own adapters, so the CLI (locally) and the
server read the same stores the workloads were recorded in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capstan.clock import Clock
from capstan.errors import ResourceDoesNotExist
from capstan.events.records import Event
from capstan.troubleshoot.timeline import MAX_ITEMS, TimelineItem, event_items

if TYPE_CHECKING:
    from capstan.events.ports import EventLog
    from capstan.k8s.kueue_status import KueueStatus
    from capstan.pipelines.runner import PipelineRunner
    from capstan.queue.explain import Explanation
    from capstan.queue.records import WorkloadRecord
    from capstan.queue.store import QueueStore
    from capstan.serving.ports import DeploymentStore
    from capstan.tracking.ports import TrackingStore
    from capstan.training.ports import JobStore
    from capstan.tuning.ports import StudyStore

__all__ = ["QueueView", "Scope", "Sources", "kueue_of", "object_events", "queue_items", "queue_view",
           "recorded_kueue", "step_kueue_why", "tail_lines"]

EVENT_PAGE = 1000
DEFAULT_TAIL = 40


@dataclass(frozen=True, slots=True)
class Sources:
    """The ports a timeline is read from (see `capstan.services.Services.timelines`). ``home`` holds the files the
    local executors keep (training workers' logs, trial logs, live pipeline logs); ``queue`` and ``pipelines`` are
    built on first use."""

    home: Path
    clock: Clock
    events: EventLog
    tracking: TrackingStore
    jobs: JobStore
    studies: StudyStore
    deployments: DeploymentStore
    queue: Callable[[], QueueStore]
    pipelines: Callable[[], PipelineRunner]


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose workloads may be described and how much to show: ``only_project`` (the server: a workload of another
    project does not exist for the caller; None locally), ``project`` (where trials and deployments are named),
    ``tail`` (log lines kept) and ``limit`` (items kept, the latest)."""

    project: str
    only_project: str | None = None
    tail: int = DEFAULT_TAIL
    limit: int = MAX_ITEMS

    def check(self, what: str, project: str) -> None:
        """`ResourceDoesNotExist` naming ``what`` when ``project`` is not the one the caller may see: the message a
        missing one gets (``job 'x' does not exist``), so an answer never tells that it exists elsewhere."""
        if self.only_project is not None and project != self.only_project:
            raise ResourceDoesNotExist(f"{what} does not exist")


def object_events(events: EventLog, kind: str, object_id: str) -> list[Event]:
    """Every event of one object, oldest first (read page by page; the log is read in id order)."""
    found: list[Event] = []
    since = 0
    while True:
        page = events.list(kind, object_id, since_id=since, limit=EVENT_PAGE)
        found.extend(page)
        if len(page) < EVENT_PAGE:
            return found
        since = page[-1].id


def step_kueue_why(events: EventLog, workload_id: str) -> dict[str, object] | None:
    """``capstan why`` for a pipeline step's attempt (``RUN/STEP``, ``RUN/STEP#N``) that Kueue admits: it is no
    workload of Capstan's queue, so what Kueue last said about its Job's Workload, as the Kubernetes executor recorded
    it (None for an id that names no step, or when Kueue said nothing about it). ``project`` is the step's project,
    for the caller's permission check."""
    from capstan.k8s.kueue_status import explain_text

    step = workload_id.partition("#")[0]
    if "/" not in step:
        return None
    recorded = object_events(events, "step", step)
    found = kueue_of(recorded)
    if found is None:
        return None
    return {"workload": workload_id, "project": recorded[-1].project, "kueue": found.to_dict(),
            "text": explain_text(f"step {step}", found)}


def kueue_of(events: Sequence[Event]) -> KueueStatus | None:
    """What Kueue last said about the object of ``events`` (oldest first), as the Kubernetes executors recorded it
    in their ``Kueue*`` events' ``kueue`` field (`capstan.k8s.kueue_status`); None when Kueue never said anything
    (Capstan's queue admits, or the local backend)."""
    from capstan.k8s.kueue_status import latest

    found: list[Mapping[str, object]] = []
    for event in events:
        data = event.data.get("kueue")
        if isinstance(data, Mapping):
            found.append(data)
    return latest(found)


def recorded_kueue(events: EventLog, kind: str, object_id: str) -> KueueStatus | None:
    """What Kueue last said about one object (``job``/ID, ``step``/RUN/STEP) while it keeps it from running
    (pending, quota reserved, evicted); None when it does not, or never said anything."""
    found = kueue_of(object_events(events, kind, object_id))
    return found if found is not None and found.holds_it else None


def tail_lines(text: str | bytes, count: int) -> tuple[str, ...]:
    """The last ``count`` lines of ``text`` (decoded as UTF-8, bad bytes replaced)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kept: deque[str] = deque(maxlen=max(count, 0))
    kept.extend(line.rstrip("\r") for line in text.rstrip("\n").splitlines())
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class QueueView:
    """A queue workload as the timeline reads it: its record, its events and, while it is pending, the queue's
    explanation (reason, position, blocking quota, hint)."""

    record: WorkloadRecord
    events: tuple[Event, ...]
    why: Explanation | None

    @property
    def preempted_by(self) -> str:
        """Who preempted it last, when recorded."""
        for event in reversed(self.events):
            if event.reason == "Preempted":
                return str(event.data.get("preemptor") or "")
        return ""

    def memory_request(self) -> int | None:
        """The memory one pod asked for, in bytes (None when it asked for none)."""
        from capstan.resources.quantity import MILLI

        for pod_set in self.record.workload.pod_sets:
            milli = pod_set.requests.get("memory")
            if milli:
                return milli // MILLI
        return None

    def queue_text(self) -> tuple[str, str, str]:
        """``(reason, message, hint)`` of the queue while it is pending (the explanation's, with the position),
        else the record's."""
        why = self.why
        if why is None:
            return self.record.reason.value, self.record.message, ""
        where = f" (position {why.position} of {why.queue_length} in {why.cluster_queue})" \
            if why.position is not None else ""
        return why.reason.value, why.message + where, why.hint or ""


def queue_view(sources: Sources, workload_ids: Sequence[str]) -> QueueView | None:
    """The first of ``workload_ids`` the queue knows (None when it knows none), with its events and, while it is
    pending, the queue's explanation."""
    store = sources.queue()
    for workload_id in dict.fromkeys(w for w in workload_ids if w):
        record = store.get_workload(workload_id)
        if record is not None:
            return _view(sources, store, record)
    return None


def _view(sources: Sources, store: QueueStore, record: WorkloadRecord) -> QueueView:
    from capstan.queue.manager import QueueManager
    from capstan.queue.records import PENDING

    why = None
    if record.state == PENDING:
        why = QueueManager(store, clock=sources.clock).why(record.id)
    return QueueView(record, tuple(object_events(sources.events, "workload", record.id)), why)


def queue_items(view: QueueView | None) -> list[TimelineItem]:
    """The queue's decisions about a workload (submitted, admitted, preempted, requeued...) as items."""
    if view is None:
        return []
    return event_items(view.events, kind="queue", source=f"workload/{view.record.id}")
