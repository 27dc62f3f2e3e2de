"""The workload queue as the pipelines' admission port: every pipeline step is a queue workload.

`QueueAdmission` implements `capstan.resources.admission.Admission` over a `QueueManager` persisted in the metadata
store. A step attempt's `ResourceRequest` becomes a workload of one pod set ``main`` of ``request.count`` pods (1
for a step; a gang of N workers for a distributed training job), each with the request's CPU, memory and GPU
(fractions allowed on shareable flavors), in the LocalQueue of the run's project (or the step's ``queue=``), with
the step's ``priority_class=``. Each orchestration round submits what is new and runs one admission cycle; a
`Lease` comes back only for admitted workloads (a gang all at once, never some of its pods, unless the request's
``min_count`` allows a partial admission: then ``Lease.granted`` says how many pods it got), carrying the GPU
placement (``CUDA_VISIBLE_DEVICES`` of each pod and, on MPS flavors, ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``).
Releasing a lease finishes the workload (quota returned, usage recorded for ``capstan usage``); a preempted
workload is requeued by the queue, with backoff, for the step's next attempt.

Workload ids are ``<run_id>/<step>`` for a step's first workload; a later one (a retry after the first finished)
is ``<run_id>/<step>#<attempt>``. A step has at most one active workload, and a new attempt reuses it: after a
preemption, or after a crash of the orchestrator (``capstan pipelines resume``), nothing is submitted twice.

When no configuration was applied with ``capstan queue apply``, the queue holds a generated default: one
ClusterQueue and LocalQueue ``default`` with this machine's CPUs, memory and GPUs (detected, or declared with
``CAPSTAN_GPUS``), priority classes ``low`` / ``normal`` / ``high`` and preemption of lower priorities. It is
stored like an applied configuration (so ``capstan queue status`` and ``capstan why`` see it) and regenerated
when the machine's capacity changes; applying a configuration replaces it for good.

The metadata store is the source of truth: every call works on the manager as the store holds it (rebuilt, or the
previous call's when nobody changed the queue since), while holding a lock shared by this process's threads and,
through the `capstan.queue.locking.QueueLock` the composition root picks, by every process sharing the store (a
file lock in ``$CAPSTAN_HOME`` for SQLite, an advisory lock in the database for PostgreSQL, whose servers may run
on several machines), so two orchestrators never admit against the same free quota. With the SQL store a call is
one transaction: its workload records, usage records and events commit together.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from capstan.clock import Clock, system_clock
from capstan.errors import CapstanError, InvalidState, ResourceDoesNotExist
from capstan.events.records import Event
from capstan.queue.executor import local_queue_yaml
from capstan.queue.locking import ProcessLocalLock, QueueLock, queue_lock_for
from capstan.queue.manager import Backoff, EventSink, QueueManager
from capstan.queue.model import PodSet, QueueConfig, Workload
from capstan.queue.records import ACTIVE_STATES, ADMITTED, EVICTING, PENDING, UsageRecord, WorkloadRecord
from capstan.queue.store import QueueStore
from capstan.resources.admission import Lease, Rejected, ResourceRequest, Verdict, Waiting
from capstan.resources.machine import Capacity, gpu_model_label
from capstan.resources.quantity import MILLI

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from capstan.events.ports import EventLog
    from capstan.settings import Settings

DEFAULT_MARKER = "# capstan: default queue of this machine (generated; `capstan queue apply` replaces it)\n"
"""First line of the generated default configuration; a stored configuration without it was applied by someone."""
DEFAULT_QUEUE = "default"
"""Name of the generated ClusterQueue and LocalQueue, and the LocalQueue used for projects that have none."""
GPU_LABEL = "gpu"
"""Node label a step's ``gpu_flavor`` selects: ``gpu_flavor="a100"`` excludes flavors labelled ``gpu: <other>``."""
SHARE_SLOTS = 100
"""Slots each GPU of the default (shareable) flavor is split into: fractions are placed to the percent."""


def machine_capacity(settings: Settings) -> Capacity:
    """This machine's CPUs and memory, with GPUs declared in ``settings`` (``CAPSTAN_GPUS``) or detected."""
    detected = Capacity.cached()
    if settings.declared_gpus is not None:
        return detected.with_declared_gpus(settings.declared_gpus, settings.declared_gpu_model or "")
    return detected


def default_config(capacity: Capacity) -> str:
    """The generated default queue configuration for ``capacity`` (YAML, starting with `DEFAULT_MARKER`).

    GPUs form one shareable flavor ``local-gpu`` (fractions such as ``0.5`` share a device), labelled
    ``gpu: <model>`` when the model is known so that steps asking for another ``gpu_flavor`` never land there.
    """
    models = {gpu_model_label(model) for _index, model in capacity.gpus}
    label = models.pop() if len(models) == 1 else None
    memory = str(capacity.memory) if capacity.memory > 0 else "1Pi"  # unknown memory: do not limit it
    return DEFAULT_MARKER + local_queue_yaml(cpus=capacity.cpu, memory=memory, gpus=len(capacity.gpus),
                                             shared_slots=SHARE_SLOTS if capacity.gpus else 0, name=DEFAULT_QUEUE,
                                             gpu_label=label)


def step_key(request: ResourceRequest) -> str:
    """What identifies the step a request belongs to: ``<run_id>/<step>`` from its labels, else its key."""
    run, step = request.label("run"), request.label("step")
    return f"{run}/{step}" if run and step else request.key


def _milli(value: float) -> int:
    return math.ceil(value * MILLI - 1e-6)


def describe(request: ResourceRequest) -> str:
    """``1 GPU(s) of flavor 'a100', 2 CPU and 4.0 GiB of memory``: the request in words; a gang reads
    ``2 pods of 1 GPU(s) and 1 CPU each``."""
    parts = []
    if request.gpu > 0:
        parts.append(f"{request.gpu:g} GPU(s)" + (f" of flavor {request.gpu_flavor!r}" if request.gpu_flavor else ""))
    if request.cpu > 0:
        parts.append(f"{request.cpu:g} CPU")
    if request.memory > 0:
        parts.append(f"{request.memory / 2**30:.1f} GiB of memory")
    each = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "nothing"
    return f"{request.count} pods of {each} each" if request.count != 1 else each


class _WriteBehind:
    """A `QueueStore` view for one session: reads see the store plus what the session wrote; writes are kept (the
    last record of each workload, usage changes in order) and written once, by `flush`, in the session's
    transaction."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store
        self._base_config: list[str | None] = []
        self._base_active: list[WorkloadRecord] | None = None
        self._config: tuple[str, int] | None = None
        self._workloads: dict[str, WorkloadRecord] = {}
        self._usage: list[UsageRecord | tuple[str, int]] = []

    def load_config(self) -> str | None:
        """The configuration, as the session left it."""
        if self._config is not None:
            return self._config[0]
        if not self._base_config:
            self._base_config.append(self._store.load_config())
        return self._base_config[0]

    def save_config(self, text: str, applied_at: int) -> None:
        """Keep a new configuration."""
        self._config = (text, applied_at)

    def put_workloads(self, records: Sequence[WorkloadRecord]) -> None:
        """Keep workload records (the last one of each workload wins)."""
        for record in records:
            self._workloads[record.id] = record

    def active_workloads(self) -> list[WorkloadRecord]:
        """Active workloads of the store, as the session changed them."""
        if self._base_active is None:
            self._base_active = self._store.active_workloads()
        merged = {r.id: r for r in self._base_active}
        merged.update(self._workloads)
        return [r for r in merged.values() if r.state in ACTIVE_STATES]

    def get_workload(self, workload_id: str) -> WorkloadRecord | None:
        """One workload, as the session changed it."""
        return self._workloads.get(workload_id) or self._store.get_workload(workload_id)

    def open_usage(self, record: UsageRecord) -> None:
        """Keep a new usage record."""
        self._usage.append(record)

    def close_usage(self, workload_id: str, end: int) -> None:
        """Keep the end of a usage record."""
        self._usage.append((workload_id, end))

    def usage_since(self, since: int) -> list[UsageRecord]:
        """Usage records of the store (what the session changed is not written yet)."""
        return self._store.usage_since(since)

    def snapshot(self, records: Sequence[WorkloadRecord]) -> dict[str, WorkloadRecord]:
        """``records`` by id, each unchanged one as the store returned it (so that the next session, reading the
        same stored record, recognises it by identity instead of comparing it field by field)."""
        base = {r.id: r for r in self._base_active or ()}
        return {r.id: r if r.id in self._workloads else base.get(r.id, r) for r in records}

    def flush(self) -> None:
        """Write what the session changed."""
        if self._config is not None:
            self._store.save_config(*self._config)
        if self._workloads:
            self._store.put_workloads(list(self._workloads.values()))
        for change in self._usage:
            if isinstance(change, UsageRecord):
                self._store.open_usage(change)
            else:
                self._store.close_usage(*change)


class _HeldEvents:
    """`EventSink` that keeps events for the event log to append inside the session's own transaction."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.events: list[Event] = []

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> None:
        """Keep one event."""
        self.events.append(Event(0, time or self._clock(), kind, object_id, type, reason, message, project,
                                 dict(data or {})))


class QueueAdmission:
    """`capstan.resources.admission.Admission` over the workload queue (see the module docstring).

    Args:
        store: where the queue lives (`capstan.queue.sql.SqlQueueStore` over the metadata store).
        capacity: this machine (used for the default configuration and to map GPU indices to devices).
        clock: milliseconds since the epoch.
        events: the event log the queue writes its decisions to; with a store that has transactions (the SQL store)
            each session's events are appended inside that transaction (`EventLog.append_within`).
        lock: held around every call, shared with the other processes of the store (`queue_lock_for`; None: only
            this process's threads are serialised, for an in-memory store).
        backoff: requeue delay after a preemption (default: 10 s, doubling, at most 10 min).
        default: the configuration used while none was applied; ``None`` generates it from ``capacity``, ``""``
            disables it.
    """

    def __init__(self, store: QueueStore, *, capacity: Capacity, clock: Clock = system_clock,
                 events: EventLog | None = None, lock: QueueLock | None = None, backoff: Backoff | None = None,
                 default: str | None = None) -> None:
        self.store = store
        self.capacity = capacity
        self.clock = clock
        self.events = events
        self.backoff = backoff or Backoff()
        self.default = default_config(capacity) if default is None else default
        self._lock = threading.Lock()
        self._queue_lock: QueueLock = lock or ProcessLocalLock()
        self._cached: tuple[QueueManager, str, dict[str, WorkloadRecord]] | None = None
        self._waiting: dict[str, str] = {}  # request key -> workload id, for requests answered `Waiting`
        self._devices = [index for index, _model in capacity.gpus]

    @classmethod
    def open(cls, settings: Settings, engine: Engine, *, clock: Clock = system_clock,
             events: EventLog | None = None, backoff: Backoff | None = None,
             lock: QueueLock | None = None) -> QueueAdmission:
        """The queue of the metadata store behind ``engine``, on this machine as ``settings`` describe it (its
        decisions go to ``events``, by default the event log of the same store; its sessions hold ``lock``, by
        default the one `queue_lock_for` picks for the store)."""
        from capstan.queue.sql import SqlQueueStore
        from capstan.store.events_sql import SqlEventLog

        return cls(SqlQueueStore(engine), capacity=machine_capacity(settings), clock=clock,
                   events=events or SqlEventLog(engine, clock=clock),
                   lock=lock or queue_lock_for(settings, engine), backoff=backoff)

    # -- the manager ------------------------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[QueueManager]:
        """A manager rebuilt from the store, used exclusively (threads and processes) until the block ends.

        With the SQL store the whole session is one transaction: its reads, every record it writes and its events
        commit together (or not at all, when the block raises)."""
        begin: Callable[[], AbstractContextManager[Connection]] | None = getattr(self.store, "transaction", None)
        with self._lock:
            if begin is None:
                with self._queue_lock.hold(None):
                    yield self._manager(self.store, self.events)
                return
            sink = _HeldEvents(self.clock)
            cached, self._cached = self._cached, None
            with self._queue_lock.hold(begin), begin() as conn:  # a lock bound to the transaction opens it first
                pending = _WriteBehind(self.store)
                mgr = self._reuse(cached, pending, sink) or self._manager(pending, sink)
                yield mgr
                pending.flush()
                if sink.events:
                    if self.events is None:
                        raise InvalidState("the queue's store has transactions but the queue has no event log")
                    self.events.append_within(conn, sink.events)
            self._cached = (mgr, mgr.config_text, pending.snapshot(mgr.workloads()))

    def _reuse(self, cached: tuple[QueueManager, str, dict[str, WorkloadRecord]] | None, store: _WriteBehind,
               events: EventSink) -> QueueManager | None:
        """The last session's manager when the store still holds exactly what it left (nobody else changed the
        queue since): rebuilding it from hundreds of records for every round would cost more than the round."""
        if cached is None:
            return None
        mgr, text, records = cached
        if store.load_config() != text or (self.default and text != self.default
                                           and (not text or text.startswith(DEFAULT_MARKER))):
            return None
        active = store.active_workloads()
        if len(active) != len(records) or any(records.get(r.id) is not r and records.get(r.id) != r
                                              for r in active):
            return None
        mgr.store, mgr.events = store, events
        return mgr

    def _manager(self, store: QueueStore, events: EventSink | None) -> QueueManager:
        mgr = QueueManager(store, clock=self.clock, events=events, backoff=self.backoff)
        if self.default and mgr.config_text != self.default and (
                not mgr.config_text or mgr.config_text.startswith(DEFAULT_MARKER)):
            mgr.apply_config(self.default)  # first use, or the machine's capacity changed
        return mgr

    def _local_queue(self, config: QueueConfig, request: ResourceRequest) -> str | Rejected:
        named = request.label("queue")
        if named:
            if config.local_queue(named) is None:
                known = ", ".join(sorted(q.name for q in config.local_queues)) or "none"
                return Rejected(request.key, f"asks for LocalQueue {named!r}, which does not exist (have: {known})")
            return named
        own = next((q.name for q in config.local_queues if q.project == request.project), None)
        if own is not None:
            return own
        if config.local_queue(DEFAULT_QUEUE) is not None:
            return DEFAULT_QUEUE
        return Rejected(request.key, f"cannot be queued: project {request.project!r} has no LocalQueue and there is "
                                     f"no LocalQueue {DEFAULT_QUEUE!r} (add one with `capstan queue apply`)")

    def _workload(self, mgr: QueueManager, request: ResourceRequest, workload_id: str) -> Workload | Rejected:
        """The workload a request becomes, checked against what the queue could ever give it."""
        from capstan.queue.engine import never_fits

        if request.count < 1:
            return Rejected(request.key, f"asks for {request.count} pods; a workload needs at least 1")
        config = mgr.config
        lq_name = self._local_queue(config, request)
        if isinstance(lq_name, Rejected):
            return lq_name
        lq = config.local_queue(lq_name)
        assert lq is not None
        priority_class = request.label("priority_class")
        priority = config.priority_value(priority_class)
        if priority is None:
            known = ", ".join(p.name for p in config.priority_classes) or "none"
            return Rejected(request.key, f"asks for priority class {priority_class!r}, which does not exist "
                                         f"(have: {known})")
        requests = {name: _milli(value) for name, value in (("cpu", request.cpu), ("gpu", request.gpu)) if value > 0}
        if request.memory > 0:
            requests["memory"] = request.memory * MILLI
        selector = {GPU_LABEL: request.gpu_flavor.lower()} if request.gpu_flavor and request.gpu > 0 else {}
        least = request.min_count if request.min_count is not None and request.min_count < request.count else None
        pod_set = PodSet("main", request.count, requests, selector, min_count=least)
        workload = Workload(workload_id, lq.name, lq.cluster_queue, (pod_set,), priority, mgr.clock() / 1000,
                            request.project, "", priority_class)
        why = never_fits(mgr.state, workload)
        if why is not None:
            hint = ""
            if request.gpu > 0 and not self.capacity.gpus and config.local_queue(DEFAULT_QUEUE) is not None \
                    and mgr.config_text.startswith(DEFAULT_MARKER):
                hint = " (this machine has no GPUs; declare some with CAPSTAN_GPUS=N to schedule GPU-shaped work)"
            return Rejected(request.key, f"requests {describe(request)}, which LocalQueue {lq.name} (ClusterQueue "
                                         f"{lq.cluster_queue}) can never admit: {why}{hint}")
        return workload

    @staticmethod
    def _active_by_step(mgr: QueueManager) -> dict[str, WorkloadRecord]:
        out: dict[str, WorkloadRecord] = {}
        for record in mgr.workloads():
            out.setdefault(record.id, record)
            if "#" in record.id:
                out.setdefault(record.id.split("#", 1)[0], record)
        return out

    @staticmethod
    def _new_id(mgr: QueueManager, request: ResourceRequest) -> str:
        base = step_key(request)
        candidates = [base] if base == request.key else [base, request.key]
        candidates += [f"{request.key}.{n}" for n in range(2, 100)]
        for candidate in candidates:
            if mgr.store.get_workload(candidate) is None:
                return candidate
        raise CapstanError(f"no free workload id for {request.key!r}")

    def _lease(self, request: ResourceRequest, record: WorkloadRecord) -> Lease:
        """The lease of an admitted workload: each pod's GPUs (flavor device indices mapped onto this machine's
        devices in order), pod 0's as ``devices``; a gang's ``pod_devices`` has one entry per admitted pod, and
        ``granted`` the number of pods of a partial admission."""
        granted = max(1, request.count)
        if record.admission is not None and record.admission.pod_sets:
            granted = min(granted, record.admission.pod_sets[0].count)
        pods: list[tuple[str, ...]] = [() for _ in range(granted)]
        env = [("CAPSTAN_WORKLOAD_ID", record.id), ("CAPSTAN_RESTART_COUNT", str(record.preemptions))]
        if record.admission is not None:
            for ps in record.admission.pod_sets:
                if not ps.gpus:
                    continue
                for placement in ps.gpus:
                    if placement.pod < len(pods):
                        pods[placement.pod] = tuple(self._devices[d] if d < len(self._devices) else str(d)
                                                    for d in placement.devices)
                first = ps.gpus[0]
                if first.mps_thread_percentage is not None:
                    env.append(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(first.mps_thread_percentage)))
                break
        pod_devices = tuple(pods) if request.count > 1 else ()
        return Lease(request.key, request, pods[0], tuple(env), record.id, pod_devices,
                     granted if granted < max(1, request.count) else None)

    # -- the port ---------------------------------------------------------------------------------------------------
    def check(self, request: ResourceRequest) -> str | None:
        """Why the queue could never admit ``request`` (no LocalQueue, unknown priority class, too big), or None."""
        if request.empty:
            return None
        with self.session() as mgr:
            verdict = self._workload(mgr, request, step_key(request))
        return verdict.message if isinstance(verdict, Rejected) else None

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """`acquire_many` for one request: the lease when admitted, else None."""
        verdict = self.acquire_many([request])[0]
        return verdict if isinstance(verdict, Lease) else None

    def acquire_many(self, requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """Submit the requests that are new, run one admission cycle, and answer each one (see `settle`)."""
        return self.settle((), requests)

    def settle(self, releases: Sequence[tuple[Lease, bool]], requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """One orchestration round in one session (one transaction): give back ``releases`` (each a lease and its
        ``requeue`` flag, as in `release`), submit the requests that are new, run one admission cycle, and answer
        each request.

        A request that asks for nothing is granted without the queue (it holds no quota). A step whose workload is
        still being evicted while nothing runs it any more is acknowledged as evicted (requeued with backoff).
        """
        out: list[Verdict | None] = [Lease(r.key, r) if r.empty else None for r in requests]
        asks = [i for i, r in enumerate(requests) if not r.empty]
        returned = [(lease, requeue) for lease, requeue in releases if lease.workload is not None]
        if not asks and not returned:
            return [v for v in out if v is not None]
        ids: dict[int, str] = {}
        with self.session() as mgr:
            for lease, requeue in returned:
                self._give_back(mgr, lease, requeue)
            active: dict[str, WorkloadRecord] | None = None
            known = self._waiting
            for i in asks:
                request = requests[i]
                record = self._still_active(mgr, known.get(request.key))
                if record is None:
                    if active is None:
                        active = self._active_by_step(mgr)
                    record = active.get(step_key(request)) or active.get(request.key)
                if record is not None:
                    if record.state == EVICTING:
                        mgr.evicted(record.id)
                    ids[i] = record.id
                    continue
                workload = self._workload(mgr, request, self._new_id(mgr, request))
                if isinstance(workload, Rejected):
                    out[i] = workload
                    continue
                try:
                    mgr.submit(workload.id, workload.queue, workload.pod_sets, priority_class=workload.priority_class,
                               project=request.project)
                except CapstanError as exc:
                    out[i] = Rejected(request.key, exc.message)
                    continue
                ids[i] = workload.id
            mgr.cycle()
            for i, workload_id in ids.items():
                record = mgr.get(workload_id)
                key = requests[i].key
                if record.state == ADMITTED:
                    out[i] = self._lease(requests[i], record)
                    known.pop(key, None)
                else:
                    out[i] = Waiting(key, record.reason.value, record.message, record.id)
                    known[key] = record.id
        return [v if v is not None else Waiting(r.key) for v, r in zip(out, requests, strict=True)]

    @staticmethod
    def _still_active(mgr: QueueManager, workload_id: str | None) -> WorkloadRecord | None:
        """The active record of a workload a request waited on last round (None: look it up from scratch)."""
        if workload_id is None:
            return None
        try:
            record = mgr.get(workload_id)
        except ResourceDoesNotExist:
            return None
        return record if record.state in ACTIVE_STATES else None

    def reclaim(self, request: ResourceRequest, *, held_only: bool = False) -> Lease | None:
        """The lease of an attempt left running by a stopped orchestrator: its step's workload if it is still
        admitted (or being preempted: the next `revoked` says so), else a new admission if one fits now (unless
        ``held_only``)."""
        if request.empty:
            return Lease(request.key, request)
        with self.session() as mgr:
            record = self._active_by_step(mgr).get(step_key(request))
            if record is not None and record.state in (ADMITTED, EVICTING):
                return self._lease(request, record)
        return None if held_only else self.try_acquire(request)

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        """The attempt ended: finish its workload (quota returned, usage closed), or, after a preemption
        (``requeue``), acknowledge the eviction so the queue requeues it with backoff. Then run admission."""
        self.settle([(lease, requeue)], ())

    @staticmethod
    def _give_back(mgr: QueueManager, lease: Lease, requeue: bool) -> None:
        try:
            record = mgr.get(lease.workload or "")
        except ResourceDoesNotExist:
            return
        if record.state == EVICTING:
            if requeue:
                mgr.evicted(record.id)
            else:
                mgr.finish(record.id)
        elif record.state == ADMITTED:
            mgr.finish(record.id)
        elif record.state == PENDING and not requeue:
            mgr.cancel(record.id)  # requeued by someone else, but the step is done with it

    def withdraw(self, key: str) -> None:
        """Cancel the active workload of the step whose attempt is ``key`` (``<run>/<step>#<n>``)."""
        base = key.split("#", 1)[0]
        for known in [k for k in self._waiting if k == key or k.split("#", 1)[0] == base]:
            del self._waiting[known]
        with self.session() as mgr:
            doomed = [r.id for r in mgr.workloads()
                      if r.id in (key, base) or r.id.startswith(base + "#")]
            for workload_id in doomed:
                mgr.cancel(workload_id)
            if doomed:
                mgr.cycle()

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        """Leases whose workload is no longer admitted: being preempted (``Evicting``), already requeued, or ended by
        someone else (``capstan queue cancel``)."""
        held = [lease for lease in leases if lease.workload is not None]
        if not held:
            return []
        active = {r.id: r for r in self.store.active_workloads()}
        out = []
        for lease in held:
            record = active.get(lease.workload or "")
            if record is None:
                out.append((lease, f"workload {lease.workload} was ended outside its pipeline"))
            elif record.state != ADMITTED:
                out.append((lease, record.message or f"workload {record.id} is {record.state}"))
        return out
