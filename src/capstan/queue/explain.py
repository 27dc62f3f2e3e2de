""""Why is my workload pending?": a one-screen explanation computed from the live state (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from capstan.queue.assign import BORROW, FIT, assign
from capstan.queue.engine import blocking_numbers, describe_failure, failure_reason, holders, scratch_of, try_workload
from capstan.queue.lost import at_risk_text
from capstan.queue.model import (
    Blocking,
    ClusterQueue,
    Pending,
    PodSet,
    Preempt,
    QueueingStrategy,
    Reason,
    ResourceGroup,
    Workload,
)
from capstan.queue.pending import PendingQueues
from capstan.queue.records import ADMITTED, EVICTING, PENDING, WorkloadRecord, pod_set_counts
from capstan.queue.state import ClusterState
from capstan.resources.quantity import GPU_RESOURCES, MILLI, format_quantity


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything `capstan why` prints about one workload."""

    workload: str
    state: str
    local_queue: str
    cluster_queue: str
    priority: int
    position: int | None
    queue_length: int
    reason: Reason
    message: str
    blocking: tuple[Blocking, ...] = ()
    holders: tuple[str, ...] = ()
    hint: str | None = None
    placement: tuple[str, ...] = ()
    pod_sets: tuple[Mapping[str, object], ...] = ()
    work: str | None = None  # running: its last save and what a preemption would lose; preempted: what it lost

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"workload": self.workload, "state": self.state, "local_queue": self.local_queue,
                "cluster_queue": self.cluster_queue, "priority": self.priority, "position": self.position,
                "queue_length": self.queue_length, "reason": self.reason.value, "message": self.message,
                "blocking": [{"flavor": b.flavor, "resource": b.resource, "requested": b.requested / MILLI,
                              "cluster_queue_used": b.cq_used / MILLI, "cluster_queue_nominal": b.cq_nominal / MILLI,
                              "available": b.available / MILLI, "cohort": b.cohort} for b in self.blocking],
                "holders": list(self.holders), "hint": self.hint, "placement": list(self.placement),
                "pod_sets": [dict(p) for p in self.pod_sets], "work": self.work}

    def render(self) -> str:
        """The one-screen text."""
        lines = [f"Workload:  {self.workload}",
                 f"State:     {self.state}",
                 f"Queue:     {self.local_queue} -> ClusterQueue {self.cluster_queue} (priority {self.priority})"]
        if self.position is not None:
            lines.append(f"Position:  {self.position} of {self.queue_length}")
        lines.append(f"Reason:    {self.reason.value}")
        if self.message:
            lines.append(f"Detail:    {self.message}")
        for p in self.placement:
            lines.append(f"Placement: {p}")
        if self.work:
            lines.append(f"Work:      {self.work}")
        if self.holders:
            lines.append("Held by:   " + self.holders[0])
            lines.extend(f"           {h}" for h in self.holders[1:])
        if self.hint:
            lines.append(f"Hint:      {self.hint}")
        return "\n".join(lines)


def explain(state: ClusterState, pending: PendingQueues, record: WorkloadRecord, now: float = 0.0) -> Explanation:
    """Explain one workload from the live state and queues; ``now`` (seconds) is the engine's clock."""
    explanation = _explain(state, pending, record, now)
    admission = state.admissions.get(record.id)
    if record.state == ADMITTED and admission is not None:
        return replace(explanation, work=at_risk_text(record, state.last_checkpoint(admission, now), now))
    if record.preemptions and "lost " not in explanation.message:
        times = "once" if record.preemptions == 1 else f"{record.preemptions} times"
        return replace(explanation, work=f"preempted {times}; the last preemption lost "
                                         f"{record.lost_gpu_seconds / 3600:.2f} GPU-hours")
    return explanation


def _explain(state: ClusterState, pending: PendingQueues, record: WorkloadRecord, now: float) -> Explanation:
    wl = record.workload

    def mk(position: int | None, length: int, reason: Reason, message: str, *, blocking: tuple[Blocking, ...] = (),
           holders_: tuple[str, ...] = (), hint_: str | None = None, placement: tuple[str, ...] = ()) -> Explanation:
        return Explanation(wl.id, record.state, wl.queue, wl.cluster_queue, wl.priority, position, length, reason,
                           message, blocking, holders_, hint_, placement, tuple(pod_set_counts(record)))
    if record.state in (ADMITTED, EVICTING) and record.admission is not None:
        placement = []
        asked = {ps.name: ps for ps in wl.pod_sets}
        for ps in record.admission.pod_sets:
            flavors = ", ".join(f"{r}={f}" for r, f in sorted(ps.flavors.items()))
            want = asked.get(ps.name)
            if want is not None and ps.count < want.count:
                pods = f"{ps.count} pods of {want.count} asked (partial admission, minCount {want.min_count})"
            else:
                pods = "1 pod" if ps.count == 1 else f"{ps.count} pods (a gang, admitted together)"
            placement.append(f"{ps.name}, {pods}: {flavors}")
            for g in ps.gpus:
                extra = f", CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={g.mps_thread_percentage}" \
                    if g.mps_thread_percentage is not None else ""
                per_device = " on each device" if len(g.devices) > 1 else ""
                placement.append(f"  pod {g.pod}: CUDA_VISIBLE_DEVICES={g.cuda_visible_devices} "
                                 f"({format_quantity(g.share, 'gpu')} GPU{per_device}{extra})")
        reason = Reason.ADMITTED if record.state == ADMITTED else Reason.PREEMPTED
        return mk(None, 0, reason, record.message, placement=tuple(placement))
    if record.state != PENDING:
        return mk(None, 0, record.reason, record.message)
    topo = state.topology
    cq = topo.cluster_queues.get(wl.cluster_queue)
    lq = topo.local_queues.get(wl.queue)
    if cq is None or lq is None:
        return mk(None, 0, Reason.INACTIVE, record.message or f"LocalQueue {wl.queue} does not exist",
                  hint_="apply a configuration that defines this LocalQueue")
    queue = pending.queue(cq.name)
    length = 0 if queue is None else len(queue)
    if record.requeue_at is not None:
        return mk(None, length, record.reason, record.message, hint_="it re-enters the queue when its backoff ends")
    position = pending.position(wl.id) if wl.id in pending else None
    if not wl.active or cq.stopped or lq.stopped:
        what = "the workload is deactivated" if not wl.active else (
            f"ClusterQueue {cq.name} is stopped" if cq.stopped else f"LocalQueue {lq.name} is stopped")
        return mk(position, length, Reason.INACTIVE, what)
    head = queue.head() if queue is not None else None
    scratch = scratch_of(state, now)
    attempt, made = try_workload(state, scratch, wl)
    if cq.queueing_strategy is QueueingStrategy.STRICT_FIFO and head is not None and head.id != wl.id:
        own = "it would fit now" if made else describe_failure(state, scratch.usage, cq, attempt, wl)
        return mk(position, length, Reason.BLOCKED_BY_HEAD_OF_QUEUE,
                  f"StrictFIFO: waits behind the head {head.id}; {own}", hint_=f"head of queue: {head.id}")
    if made:
        last = made[-1]
        if isinstance(last, Pending):
            names, message = _evictions(state, cq, made, last.message)
            return mk(position, length, Reason.WAITING_FOR_PREEMPTION, message, holders_=names,
                      hint_="admitted once these workloads have stopped and returned their quota; each one's "
                            "executor reports the stop (`capstan queue list --state Evicting` shows them)")
        return mk(position, length, record.reason, "fits now; it is admitted at the next admission cycle")
    reason = failure_reason(attempt)
    return mk(position, length, reason, describe_failure(state, scratch.usage, cq, attempt, wl),
              blocking=blocking_numbers(state, scratch.usage, cq, attempt, wl),
              holders_=holders(state, cq, attempt.blocking), hint_=hint(state, cq, wl, reason, now))


def _evictions(state: ClusterState, cq: ClusterQueue, made: Sequence[object],
               message: str) -> tuple[tuple[str, ...], str]:
    """The workloads a preemptor waits for: the victims it would evict now, else those being evicted in its cohort
    tree (whose quota it is counting on), with a message naming them."""
    victims = tuple(d.victim for d in made if isinstance(d, Preempt))
    if victims:
        return victims, message
    topo = state.topology
    root = topo.cq_nodes[cq.name].root
    evicting = tuple(sorted(wid for wid in state.evicting
                            if (adm := state.admissions.get(wid)) is not None
                            and topo.cq_nodes[adm.cluster_queue].root is root))
    if not evicting:
        return (), message
    return evicting, f"waiting for {', '.join(evicting)} to be evicted (preempted; not stopped yet)"


def hint(state: ClusterState, cq: ClusterQueue, wl: Workload, reason: Reason, now: float = 0.0) -> str | None:
    """A concrete way out: a fractional flavor that fits now, or the priority that would get it admitted."""
    fractional = _fractional_hint(state, cq, wl)
    if fractional is not None:
        return fractional
    if reason is Reason.NO_FITTING_FLAVOR:
        return "no flavor of this ClusterQueue can hold the request as it is; change the request or the queue"
    needed = _priority_needed(state, cq, wl, now)
    if needed is not None:
        return f"would be admitted if priority >= {needed}"
    if not cq.preemption.enabled:
        return f"ClusterQueue {cq.name} does not preempt; it is admitted when running workloads free quota"
    return "no lower-priority workload can be preempted for it; it is admitted when running workloads free quota"


def _fractional_hint(state: ClusterState, cq: ClusterQueue, wl: Workload) -> str | None:
    topo = state.topology
    node = topo.cq_nodes[cq.name]
    gpu_sets = [(i, r) for i, ps in enumerate(wl.pod_sets) for r in ps.requests if r in GPU_RESOURCES]
    if len(gpu_sets) != 1:
        return None
    index, resource = gpu_sets[0]
    group = topo.group_of[cq.name].get(resource)
    if group is None:
        return None
    per_pod = wl.pod_sets[index].requests[resource]
    if per_pod > MILLI:
        return None
    for fq in group.flavors:
        flavor = topo.flavors[fq.flavor]
        if flavor.sharing is None:
            continue
        slots = flavor.sharing.slots_per_gpu
        only = ResourceGroup(group.covered_resources, (fq,))
        groups = {r: (only if g is group else g) for r, g in topo.group_of[cq.name].items()}
        for k in range(slots - 1, 0, -1):
            share = k * MILLI // slots
            if share >= per_pod:
                continue
            ps = wl.pod_sets[index]
            shrunk = PodSet(ps.name, ps.count, {**ps.requests, resource: share}, ps.node_selector, ps.tolerations)
            smaller = replace(wl, pod_sets=(*wl.pod_sets[:index], shrunk, *wl.pod_sets[index + 1:]))
            devices = {k2: list(v) for k2, v in state.devices.items()}
            attempt = assign(cq, node, groups, topo.flavors, smaller, [dict(t) for t in state.usage], devices,
                             can_preempt=False)
            if attempt.mode in (FIT, BORROW):
                each = " per pod" if ps.count > 1 else ""
                return f"fits now in flavor {fq.flavor} at {format_quantity(share, 'gpu')} GPU{each}"
    return None


def _priority_needed(state: ClusterState, cq: ClusterQueue, wl: Workload, now: float) -> int | None:
    if not cq.preemption.enabled:
        return None
    topo = state.topology
    node = topo.cq_nodes[cq.name]
    names = topo.tree_cqs[node.root.name] if node.parent is not None else [cq.name]
    levels = sorted({a.workload.priority + 1 for n in names for a in state.by_cq[n].values()
                     if a.workload.priority >= wl.priority})
    for level in levels[:32]:
        _attempt, made = try_workload(state, scratch_of(state, now), replace(wl, priority=level))
        if made:
            return level
    return None
