"""The queue manager: the stateful side of the queue, persisted behind a `QueueStore`.

It owns the `ClusterState` and `PendingQueues` the engine reads, turns the engine's decisions into state
changes, records them (workload records, usage records for showback, the shared event log), and applies new
configurations without losing queued workloads. Time comes from an injected `Clock` (milliseconds).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from capstan.queue.config import load_yaml, parse_config
from capstan.queue.engine import never_fits, schedule
from capstan.queue.lost import lost_work_text
from capstan.queue.model import Admission, Admit, Pending, PodSet, Preempt, QueueConfig, Reason, Workload
from capstan.queue.pending import PendingQueues
from capstan.queue.records import (
    ADMITTED,
    CANCELLED,
    EVICTING,
    FINISHED,
    PENDING,
    UsageRecord,
    WorkloadRecord,
)
from capstan.queue.state import ClusterState, Topology
from capstan.queue.store import QueueStore

if TYPE_CHECKING:
    from capstan.queue.explain import Explanation
    from capstan.queue.status import QueueStatus


@functools.lru_cache(maxsize=8)
def _parsed(text: str) -> QueueConfig:
    # Managers are rebuilt from the store for every locked session (the pipelines' admission, the server):
    # parsing the same YAML once keeps that cheap. QueueConfig is immutable, so sharing it is safe.
    return parse_config(load_yaml(text))


class EventSink(Protocol):
    """The slice of `capstan.events.ports.EventLog` the queue writes to."""

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> object:
        """Append one event."""
        ...


class MetricsSink(Protocol):
    """What the manager reports to (see `capstan.queue.metrics.QueueMetrics`)."""

    def admitted(self, cluster_queue: str, wait_s: float) -> None:
        """A workload was admitted after waiting ``wait_s`` seconds."""
        ...

    def preempted(self, cluster_queue: str) -> None:
        """A workload of ``cluster_queue`` was preempted."""
        ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Requeue delay after an eviction: ``base_s * factor**(n-1)``, capped at ``max_s``."""

    base_s: float = 10.0
    factor: float = 2.0
    max_s: float = 600.0

    def delay_ms(self, evictions: int) -> int:
        """Delay in milliseconds before the ``evictions``-th requeue."""
        return int(1000 * min(self.max_s, self.base_s * self.factor ** max(0, evictions - 1)))


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one `QueueManager.cycle` changed."""

    admitted: tuple[WorkloadRecord, ...]
    preempting: tuple[WorkloadRecord, ...]
    pending: tuple[Pending, ...]


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What applying a configuration did to existing workloads."""

    kept: int
    evicted: tuple[str, ...]
    orphaned: tuple[str, ...]


class QueueManager:
    """Submit, admit, finish, cancel and explain workloads against the configured queues."""

    def __init__(self, store: QueueStore, *, clock: Clock = system_clock, events: EventSink | None = None,
                 metrics: MetricsSink | None = None, backoff: Backoff = Backoff()) -> None:
        self.store = store
        self.clock = clock
        self.events = events
        self.metrics = metrics
        self.backoff = backoff
        text = store.load_config()
        self.config_text = text or ""
        self.config = _parsed(text) if text else QueueConfig()
        self._records: dict[str, WorkloadRecord] = {}
        self._seq = 0
        self._rebuild(store.active_workloads())

    # ----------------------------------------------------------------------------------------------- state
    def _rebuild(self, records: Iterable[WorkloadRecord]) -> None:
        self.topology = Topology(self.config)
        self.state = ClusterState(self.topology)
        self.pending = PendingQueues()
        self._records = {}
        for r in sorted(records, key=lambda r: r.seq):
            self._seq = max(self._seq, r.seq)
            self._records[r.id] = r
            if r.state in (ADMITTED, EVICTING) and r.admission is not None:
                self.state.admit(r.admission)
                if r.checkpointed_at is not None:
                    self.state.record_checkpoint(r.id, r.checkpointed_at / 1000)
                if r.state == EVICTING:
                    self.state.mark_evicting(r.id)
            elif r.state == PENDING and r.requeue_at is None and r.workload.cluster_queue in self.topology.cq_nodes:
                self.pending.push(r.workload, seq=r.seq)

    def _save(self, *records: WorkloadRecord) -> None:
        for r in records:
            self._records[r.id] = r
        self.store.put_workloads(records)

    def _event(self, record: WorkloadRecord, reason: str, message: str, *, warning: bool = False,
               data: Mapping[str, object] | None = None) -> None:
        if self.events is not None:
            self.events.append("workload", record.id, reason, message, type="Warning" if warning else "Normal",
                               project=record.workload.project, data=dict(data or {}), time=self.clock())

    # ------------------------------------------------------------------------------------------ config
    def apply_config(self, text: str) -> ApplyReport:
        """Validate and apply a configuration; queued workloads are kept (re-resolved to their new queues).

        Admitted workloads whose ClusterQueue disappeared are evicted and requeued; pending workloads whose
        LocalQueue disappeared stay pending with reason ``Inactive`` until a configuration brings it back.
        """
        config = _parsed(text)
        if not config.cluster_queues:
            raise InvalidParameterValue("the configuration defines no clusterQueues, so no workload could ever be "
                                        "admitted; nothing was applied")
        now = self.clock()
        old = list(self._records.values())
        self.config = config
        self.config_text = text
        self.store.save_config(text, now)
        evicted: list[str] = []
        orphaned: list[str] = []
        updated: list[WorkloadRecord] = []
        for r in old:
            lq = config.local_queue(r.workload.queue)
            cq = lq.cluster_queue if lq is not None else r.workload.cluster_queue
            workload = replace(r.workload, cluster_queue=cq)
            if r.state in (ADMITTED, EVICTING) and (lq is None or r.admission is None
                                                    or r.admission.cluster_queue != cq):
                self.store.close_usage(r.id, now)
                r = replace(r, workload=workload, state=PENDING, reason=Reason.EVICTED, admission=None,
                            message="its ClusterQueue was removed by a configuration change", requeue_at=None)
                evicted.append(r.id)
                self._event(r, Reason.EVICTED.value, r.message, warning=True)
            elif r.state in (ADMITTED, EVICTING) and r.admission is not None:
                r = replace(r, workload=workload, admission=replace(r.admission, workload=workload))
            else:
                r = replace(r, workload=workload)
            if r.state == PENDING and lq is None:
                r = replace(r, reason=Reason.INACTIVE, message=f"LocalQueue {r.workload.queue} does not exist")
                orphaned.append(r.id)
            updated.append(r)
        self._rebuild(updated)
        self._save(*updated)
        moved = set(evicted) | set(orphaned)  # a workload can be both: its ClusterQueue and LocalQueue went away
        return ApplyReport(sum(1 for r in updated if r.id not in moved), tuple(evicted), tuple(orphaned))

    def unserved_projects(self, projects: Iterable[str]) -> list[str]:
        """Those of ``projects`` whose pipelines would find no LocalQueue: none of their own, and no ``default``
        LocalQueue to fall back to (the pipelines' rule, see `capstan.queue.admission`)."""
        if self.config.local_queue("default") is not None:
            return []
        served = {q.project for q in self.config.local_queues}
        return sorted({p for p in projects if p} - served)

    # ------------------------------------------------------------------------------------------ workloads
    def submit(self, workload_id: str, local_queue: str, pod_sets: Iterable[PodSet], *, priority_class: str | None
               = None, project: str | None = None, user: str = "", active: bool = True,
               min_run_seconds: float = 0.0, checkpoint_interval_seconds: float = 0.0) -> WorkloadRecord:
        """Queue a new workload; rejected at once when it could never fit any queue it may use.

        ``min_run_seconds``: once admitted it is not preempted before it has run this long.
        ``checkpoint_interval_seconds``: how often it saves (the queue's estimate of its last save until it
        reports one with `record_checkpoint`).
        """
        if not workload_id:
            raise InvalidParameterValue("workload id must not be empty")
        existing = self._records.get(workload_id) or self.store.get_workload(workload_id)
        if existing is not None:
            from capstan.errors import ResourceAlreadyExists

            raise ResourceAlreadyExists(f"workload {workload_id!r} already exists ({existing.state})")
        lq = self.config.local_queue(local_queue)
        if lq is None:
            known = ", ".join(sorted(q.name for q in self.config.local_queues)) or "none; run `capstan queue apply`"
            raise ResourceDoesNotExist(f"LocalQueue {local_queue!r} does not exist (have: {known})")
        priority = self.config.priority_value(priority_class)
        if priority is None:
            raise InvalidParameterValue(f"priority class {priority_class!r} does not exist")
        sets = tuple(pod_sets)
        if not sets or any(ps.count < 1 for ps in sets):
            raise InvalidParameterValue("a workload needs at least one pod set with count >= 1")
        for ps in sets:
            if ps.min_count is not None and not 1 <= ps.min_count <= ps.count:
                raise InvalidParameterValue(f"pod set {ps.name!r}: min_count must be 1..{ps.count}, "
                                            f"got {ps.min_count}")
        for value, what in ((min_run_seconds, "min_run_seconds"),
                            (checkpoint_interval_seconds, "checkpoint_interval_seconds")):
            if not 0 <= value < float("inf"):
                raise InvalidParameterValue(f"{what} must be a number of seconds >= 0, got {value!r}")
        now = self.clock()
        workload = Workload(workload_id, local_queue, lq.cluster_queue, sets, priority, now / 1000,
                            project or lq.project, user, priority_class or self.config.default_priority_class,
                            active, min_run_seconds, checkpoint_interval_seconds)
        why = never_fits(self.state, workload)
        if why is not None:
            raise InvalidParameterValue(f"workload {workload_id!r} can never be admitted by ClusterQueue "
                                        f"{lq.cluster_queue}: {why}")
        self._seq += 1
        record = WorkloadRecord(workload, PENDING, Reason.WAITING_FOR_QUOTA if active else Reason.INACTIVE,
                                "queued", now, seq=self._seq)
        self.pending.push(workload, seq=self._seq)
        self._save(record)
        self._event(record, "Submitted", f"queued in {local_queue} (ClusterQueue {lq.cluster_queue})")
        return record

    def get(self, workload_id: str) -> WorkloadRecord:
        """A workload record in any state."""
        record = self._records.get(workload_id) or self.store.get_workload(workload_id)
        if record is None:
            raise ResourceDoesNotExist(f"workload {workload_id!r} does not exist")
        return record

    def workloads(self, state: str | None = None) -> list[WorkloadRecord]:
        """Active workloads (pending, admitted, evicting), optionally of one state, in submission order."""
        records = sorted(self._records.values(), key=lambda r: r.seq)
        return [r for r in records if state is None or r.state == state]

    def finish(self, workload_id: str) -> WorkloadRecord:
        """An admitted workload ended: return its quota."""
        return self._end(workload_id, FINISHED, "Finished", "finished; quota returned")

    def cancel(self, workload_id: str) -> WorkloadRecord:
        """Withdraw a workload, pending or running."""
        return self._end(workload_id, CANCELLED, "Cancelled", "cancelled")

    def _end(self, workload_id: str, state: str, reason: str, message: str) -> WorkloadRecord:
        record = self.get(workload_id)
        if record.state not in (PENDING, ADMITTED, EVICTING):
            raise InvalidState(f"workload {workload_id!r} is already {record.state}")
        if state == FINISHED and record.state == PENDING:
            raise InvalidState(f"workload {workload_id!r} is pending, not running; cancel it instead")
        now = self.clock()
        if record.id in self.state.admissions:
            self.state.release(record.id)
            self.store.close_usage(record.id, now)
        self.pending.remove(record.id)
        done = replace(record, state=state, finished_at=now, message=message, requeue_at=None)
        self._save(done)
        del self._records[record.id]
        self._event(done, reason, message)
        return done

    def record_checkpoint(self, workload_id: str, at: int | None = None, *, step: int | None = None
                          ) -> WorkloadRecord:
        """A running workload saved a checkpoint (at ``at`` ms, default now; of training step ``step`` when given):
        work before it is not lost to a preemption, and victim searches prefer workloads that saved recently.

        A save older than the one already recorded changes nothing. `InvalidState` unless the workload is
        admitted (a pending, evicting or ended workload has no running work to save)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise InvalidParameterValue(f"step: {step!r} must be a whole number >= 0")
        record = self.get(workload_id)
        if record.state != ADMITTED:
            raise InvalidState(f"workload {workload_id!r} is {record.state}, not running")
        when = self.clock() if at is None else at
        if record.checkpointed_at is not None and when < record.checkpointed_at:
            return record
        self.state.record_checkpoint(record.id, when / 1000)
        new = replace(record, checkpointed_at=when, checkpoint_step=step)
        self._save(new)
        return new

    def evictions(self) -> list[WorkloadRecord]:
        """Admitted workloads that must be stopped (preempted); the executor calls `evicted` once they are."""
        return [r for r in self._records.values() if r.state == EVICTING]

    def evicted(self, workload_id: str) -> WorkloadRecord:
        """A preempted workload has stopped: return its quota and requeue it after a backoff."""
        record = self.get(workload_id)
        if record.state != EVICTING:
            raise InvalidState(f"workload {workload_id!r} is {record.state}, not being evicted")
        now = self.clock()
        self.state.release(record.id)
        self.store.close_usage(record.id, now)
        delay = self.backoff.delay_ms(record.preemptions)
        requeued = replace(record, state=PENDING, reason=Reason.PREEMPTED, admission=None, checkpointed_at=None,
                           checkpoint_step=None, requeue_at=now + delay,
                           message=f"{record.message}; requeued after {delay / 1000:g}s backoff")
        self._save(requeued)
        self._event(requeued, "Requeued", requeued.message)
        return requeued

    def _release_backoffs(self, now: int) -> None:
        ready = [r for r in self._records.values()
                 if r.state == PENDING and r.requeue_at is not None and r.requeue_at <= now]
        for r in ready:
            r2 = replace(r, requeue_at=None)
            self._records[r.id] = r2
            if r2.workload.cluster_queue in self.topology.cq_nodes:
                self.pending.push(r2.workload, seq=r2.seq)

    # -------------------------------------------------------------------------------------------- cycle
    def cycle(self) -> CycleReport:
        """Run one admission cycle and apply its decisions."""
        now = self.clock()
        self._release_backoffs(now)
        result = schedule(self.state, self.pending, now / 1000)
        self.pending.mark_blocked(result.blocked)
        admitted: list[WorkloadRecord] = []
        preempting: list[WorkloadRecord] = []
        changed: list[WorkloadRecord] = []
        for d in result.decisions:
            if isinstance(d, Admit):
                record = self._records[d.workload.id]
                admission = Admission(record.workload, d.cluster_queue, d.pod_sets, d.usage, now / 1000)
                self.pending.remove(record.id)
                self.state.admit(admission)
                flavors = sorted({f for ps in d.pod_sets for f in ps.flavors.values()})
                new = replace(record, state=ADMITTED, reason=Reason.ADMITTED, admission=admission, admitted_at=now,
                              message=f"admitted by ClusterQueue {d.cluster_queue} on {', '.join(flavors)}"
                                      + (" (borrowing)" if d.borrowing else "") + _partial_note(record, d))
                self.store.open_usage(UsageRecord(record.id, record.workload.project, record.workload.user,
                                                  record.workload.queue, d.cluster_queue, d.usage, now))
                admitted.append(new)
                changed.append(new)
                self._event(new, "Admitted", new.message)
                if self.metrics is not None:
                    self.metrics.admitted(d.cluster_queue, (now - record.submitted_at) / 1000)
            elif isinstance(d, Preempt):
                record = self._records[d.victim]
                lost = self.state.lost_work(self.state.admissions[record.id], now / 1000)
                self.state.mark_evicting(record.id)
                new = replace(record, state=EVICTING, reason=Reason.PREEMPTED, preemptions=record.preemptions + 1,
                              lost_gpu_seconds=lost)
                saved = self.state.last_checkpoint(self.state.admissions[record.id], now / 1000)
                new = replace(new, message=f"preempted by {d.preemptor} ({d.reason}); "
                                           f"{lost_work_text(new, saved, now / 1000)}")
                preempting.append(new)
                changed.append(new)
                self._event(new, "Preempted", new.message, warning=True, data={"preemptor": d.preemptor})
                if self.metrics is not None:
                    self.metrics.preempted(d.cluster_queue)
            else:
                waiting = self._records.get(d.workload)
                if waiting is not None and (waiting.reason is not d.reason or waiting.message != d.message):
                    new = replace(waiting, reason=d.reason, message=d.message)
                    changed.append(new)
                    if waiting.reason is not d.reason:
                        self._event(new, d.reason.value, d.message)
        self._save(*changed)
        return CycleReport(tuple(admitted), tuple(preempting), result.pending)

    def why(self, workload_id: str) -> Explanation:
        """The one-screen explanation of a workload's state (see `capstan.queue.explain`)."""
        from capstan.queue.explain import explain

        return explain(self.state, self.pending, self.get(workload_id), self.clock() / 1000)

    def status(self) -> list[QueueStatus]:
        """Per-ClusterQueue quota and counts."""
        from capstan.queue.status import queue_status

        return queue_status(self.state, self.pending, self.workloads())

    def run_until_stable(self, max_cycles: int = 100, *, on_evict: Callable[[WorkloadRecord], None] | None = None,
                         ) -> list[CycleReport]:
        """Run cycles until one changes nothing; ``on_evict`` (e.g. stopping a process) runs per preemption."""
        reports = []
        for _ in range(max_cycles):
            report = self.cycle()
            reports.append(report)
            if on_evict is not None:
                for r in report.preempting:
                    on_evict(r)
            if not report.admitted and not report.preempting:
                break
        return reports




def _partial_note(record: WorkloadRecord, admit: Admit) -> str:
    """What a partial admission (``min_count``) gave, for the admitted workload's message."""
    parts = [f"{got.count} of {asked.count} pods in pod set {asked.name} (minCount {asked.min_count})"
             for asked, got in zip(record.workload.pod_sets, admit.pod_sets, strict=True) if got.count < asked.count]
    return f"; partial admission: {', '.join(parts)}" if parts else ""
