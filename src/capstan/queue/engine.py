"""The admission engine: one pure, deterministic admission cycle.

``schedule(state, pending, now)`` reads a `ClusterState` and `PendingQueues` and returns a `CycleResult`; it
never mutates either. Each ClusterQueue contributes its head; heads are taken across queues in order of
priority then creation time (with fair sharing: lowest dominant resource share first). A head that fits is
admitted and the queue offers its next workload. A head that does not fit blocks a ``StrictFIFO`` queue; in a
``BestEffortFIFO`` queue it is set aside together with every workload of the same request shape behind it.
Preemption is simulated on the cycle's scratch copy of usage: victims' quota is freed and the preemptor's is
reserved, so no other head takes it; the preemptor is admitted in a later cycle once the victims are gone.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from capstan.queue.assign import BORROW, FIT, NOFIT, PREEMPT, Attempt, assign
from capstan.queue.model import (
    FR,
    Admit,
    Blocking,
    ClusterQueue,
    CycleResult,
    Decision,
    Pending,
    Preempt,
    QueueingStrategy,
    Reason,
    Workload,
)
from capstan.queue.pending import Cursor, PendingQueues
from capstan.queue.preemption import dominant_share, find_victims
from capstan.queue.quantity import GPU_RESOURCES, MILLI, format_quantity
from capstan.queue.state import ClusterState, Node, Topology, add_usage, available


@dataclass(slots=True)
class Scratch:
    """Per-cycle copies of the mutable parts of the state."""

    usage: list[dict[FR, int]]
    devices: dict[str, list[int]]
    removed: set[str]


def scratch_of(state: ClusterState) -> Scratch:
    """Fresh scratch copies of a state's usage and device tables."""
    return Scratch([dict(t) for t in state.usage], {k: list(v) for k, v in state.devices.items()}, set())


def try_workload(state: ClusterState, scratch: Scratch, wl: Workload, *,
                 allow_preemption: bool = True) -> tuple[Attempt, list[Decision]]:
    """Try to admit one workload on the scratch state; returns the attempt and its decisions (applied to scratch).

    Decisions are an `Admit`, or `Preempt`s followed by a ``WaitingForPreemption`` `Pending`, or nothing (the
    attempt then explains the failure).
    """
    topo = state.topology
    cq = topo.cluster_queues[wl.cluster_queue]
    node = topo.cq_nodes[cq.name]
    can_preempt = allow_preemption and (cq.preemption.enabled
                                        or (topo.config.fair_sharing and node.parent is not None))
    excluded: frozenset[str] = frozenset()
    first: Attempt | None = None
    while True:
        trial_devices = {k: list(v) for k, v in scratch.devices.items()}
        attempt = assign(cq, node, topo.group_of[cq.name], topo.flavors, wl, scratch.usage, trial_devices,
                         can_preempt=can_preempt, no_preempt_on=excluded)
        if first is None:
            first = attempt
        if attempt.mode in (FIT, BORROW):
            add_usage(node, scratch.usage, attempt.usage, 1)
            scratch.devices = trial_devices
            return attempt, [Admit(wl, cq.name, tuple(attempt.pod_sets), attempt.usage, attempt.mode == BORROW)]
        if attempt.mode != PREEMPT:
            break
        first.searched = attempt.searched = True
        found = find_victims(topo, state, cq, node, wl, attempt.usage, attempt.pod_sets, scratch.usage,
                             scratch.devices, scratch.removed, topo.config.fair_sharing)
        if found is not None:
            victims, usage_after, devices_after = found
            decisions: list[Decision] = [Preempt(v.admission.id, v.admission.cluster_queue, wl.id, v.reason)
                                         for v in victims]
            for v in victims:
                scratch.removed.add(v.admission.id)
            # Reserve the preemptor's quota so that no other head takes what the victims free.
            add_usage(node, usage_after, attempt.usage, 1)
            scratch.usage = usage_after
            scratch.devices = devices_after
            names = ", ".join(v.admission.id for v in victims) or "workloads already being evicted"
            decisions.append(Pending(wl.id, cq.name, Reason.WAITING_FOR_PREEMPTION,
                                     f"waiting for {names} to be evicted"))
            return attempt, decisions
        # No victims on these flavors: try the next flavors that could be freed by preemption.
        excluded = excluded | {f for ps in attempt.pod_sets for f in ps.flavors.values()}
    first.mode = NOFIT
    return first, []


def failure_reason(attempt: Attempt) -> Reason:
    """The pending reason code for a failed attempt."""
    if not attempt.quota_failure:
        return Reason.NO_FITTING_FLAVOR
    if attempt.pods_wanted > 1 and 0 < attempt.pods_fitting < attempt.pods_wanted:
        return Reason.GANG_INCOMPLETE
    return Reason.WAITING_FOR_QUOTA


def blocking_numbers(state: ClusterState, usage: list[dict[FR, int]], cq: ClusterQueue, attempt: Attempt,
                     wl: Workload) -> tuple[Blocking, ...]:
    """Numbers for each flavor-resource that refused the workload."""
    node = state.topology.cq_nodes[cq.name]
    out = []
    for fr in attempt.blocking:
        flavor, resource = fr
        requested = wl.total(resource)
        parent = node.parent
        out.append(Blocking(
            flavor=flavor, resource=resource, requested=requested, cq_used=usage[node.idx].get(fr, 0),
            cq_nominal=node.nominal.get(fr, 0), available=available(node, fr, usage),
            cohort=None if parent is None else parent.name,
            cohort_lendable=0 if parent is None else parent.subtree.get(fr, 0),
            cohort_used=0 if parent is None else usage[parent.idx].get(fr, 0)))
    return tuple(out)


def describe_failure(state: ClusterState, usage: list[dict[FR, int]], cq: ClusterQueue, attempt: Attempt,
                     wl: Workload) -> str:
    """One line saying what blocks the workload, with numbers."""
    topo = state.topology
    if not attempt.quota_failure:
        return attempt.message
    node = topo.cq_nodes[cq.name]
    parts = []
    for b in blocking_numbers(state, usage, cq, attempt, wl):
        unit = "GPUs" if b.resource in ("gpu", "nvidia.com/gpu", "amd.com/gpu") else b.resource
        fr = (b.flavor, b.resource)
        text = (f"needs {format_quantity(b.requested, b.resource)} {b.flavor} {unit}; ClusterQueue {cq.name} "
                f"uses {format_quantity(b.cq_used, b.resource)}/{format_quantity(b.cq_nominal, b.resource)} "
                "nominal")
        if b.cohort is not None and node.parent is not None:
            lend = max(0, b.available - max(0, node.guaranteed.get(fr, 0) - b.cq_used))
            others = [f"{name} uses {format_quantity(usage[topo.cq_nodes[name].idx].get(fr, 0), b.resource)}/"
                      f"{format_quantity(topo.cq_nodes[name].nominal.get(fr, 0), b.resource)}"
                      for name in topo.tree_cqs[node.root.name] if name != cq.name
                      and (usage[topo.cq_nodes[name].idx].get(fr, 0) or topo.cq_nodes[name].nominal.get(fr, 0))]
            text += f"; cohort {b.cohort} can lend {format_quantity(lend, b.resource)}"
            if others:
                text += f" ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''})"
        parts.append(text)
    if attempt.pods_wanted > 1 and 0 < attempt.pods_fitting < attempt.pods_wanted:
        parts.append(f"only {attempt.pods_fitting} of {attempt.pods_wanted} pods fit; the gang is admitted whole")
    return " | ".join(parts)


def holders(state: ClusterState, cq: ClusterQueue, frs: list[FR], limit: int = 5) -> tuple[str, ...]:
    """Admitted workloads holding the blocking flavor-resources, biggest first (own queue and cohort tree)."""
    topo = state.topology
    node = topo.cq_nodes[cq.name]
    names = topo.tree_cqs[node.root.name] if node.parent is not None else [cq.name]
    found: list[tuple[int, str]] = []
    for name in names:
        for adm in state.by_cq[name].values():
            amount = sum(adm.usage.get(fr, 0) for fr in frs)
            if amount:
                res = frs[0][1]
                found.append((-amount, f"{adm.id} ({name}, {format_quantity(amount, res)} {res}, "
                                       f"priority {adm.workload.priority})"))
    found.sort()
    return tuple(text for _neg, text in found[:limit])


def schedule(state: ClusterState, pending: PendingQueues, now: float, *, explain: bool = True) -> CycleResult:
    """Run one admission cycle. ``now`` is the injected time stamped on decisions' effects by the caller.

    With ``explain`` false (the simulator), pending verdicts are not produced, which saves their formatting.
    """
    del now  # decisions are time-free; the caller stamps admission times
    topo = state.topology
    fair = topo.config.fair_sharing
    scratch = scratch_of(state)
    decisions: list[Decision] = []
    heap: list[tuple[tuple[float, int, float, int], str]] = []
    cursors: dict[str, Cursor] = {}
    progress: dict[str, bool] = {}
    versions: dict[str, int] = {}
    counter = 0
    # Per queue, requests that failed this cycle: a later head asking at least as much of everything, with the
    # same placement constraints and no higher priority, fails as well (quota only shrinks during a cycle).
    failures: dict[str, list[tuple[Hashable, dict[str, int], int, float]]] = {}
    searched: set[str] = set()
    fkeys: dict[tuple[str, Hashable], Hashable] = {}
    preempting = {name: cq.preemption.enabled or (fair and cq.cohort is not None)
                  for name, cq in topo.cluster_queues.items()}
    epochs = dict.fromkeys(state.versions, 0)
    max_available: dict[str, tuple[int, dict[str, int]]] = {}
    tracked = {name for name, groups in topo.group_of.items()
               if any(fq.flavor in state.devices for g in groups.values() for fq in g.flavors)}

    def push(name: str) -> None:
        nonlocal counter
        head = cursors[name].peek()
        if head is None:
            return
        counter += 1
        node = topo.cq_nodes[name]
        table = scratch.usage[node.idx]
        if fair:
            first = dominant_share(topo, node, table)
        else:
            # As in Kueue, heads that fit within their queue's nominal quota go before heads that must borrow,
            # so quota freed by reclaiming goes to its owner rather than back to the borrower.
            nominal = topo.nominal_by_resource[name]
            flavors_of = topo.flavors_by_resource[name]
            first = 0.0
            for r, q in cursors[name].vector().items():
                if q and sum(table.get((f, r), 0) for f in flavors_of.get(r, ())) + q > nominal.get(r, 0):
                    first = 1.0
                    break
        heapq.heappush(heap, ((first, -head.priority, head.created, counter), name))

    for name in pending.cluster_queues():
        cq = topo.cluster_queues.get(name)
        queue = pending.queue(name)
        if cq is None or queue is None:
            continue
        version = state.version(name)
        if pending.blocked_at(name) == version:
            continue
        versions[name] = version
        progress[name] = False
        cursors[name] = queue.cursor()
        if cq.stopped:
            head = cursors[name].peek()
            if explain and head is not None:
                decisions.append(Pending(head.id, name, Reason.INACTIVE, f"ClusterQueue {name} is stopped"))
            continue
        push(name)

    while heap:
        _key, name = heapq.heappop(heap)
        cq = topo.cluster_queues[name]
        cursor = cursors[name]
        wl = cursor.peek()
        assert wl is not None
        lq = topo.local_queues.get(wl.queue)
        if not wl.active or (lq is not None and lq.stopped):
            if explain:
                why = "the workload is deactivated" if not wl.active else f"LocalQueue {wl.queue} is stopped"
                decisions.append(Pending(wl.id, name, Reason.INACTIVE, why))
            cursor.advance()
            push(name)
            continue
        vector = cursor.vector()
        if not explain and (name in searched or not preempting[name]):
            # Cheap refusal: more of some resource than any flavor of the queue has available now.
            root = topo.cq_nodes[name].root.name
            cached = max_available.get(name)
            if cached is None or cached[0] != epochs[root]:
                cached = (epochs[root], _max_available(topo, name, scratch.usage))
                max_available[name] = cached
            roomy = cached[1]
            if any(q > roomy.get(r, 0) for r, q in vector.items()):
                if cq.queueing_strategy is QueueingStrategy.STRICT_FIFO:
                    continue
                cursor.skip_bucket()
                push(name)
                continue
        shape = cursor.shape()
        fkey = fkeys.get((name, shape))
        if fkey is None:
            fkey = fkeys[(name, shape)] = failure_key(wl, name in tracked)
        if _dominated(failures.get(name, ()), fkey, vector, wl):
            # A smaller or equal request of the same shape and at least this priority already failed here.
            if cq.queueing_strategy is QueueingStrategy.STRICT_FIFO:
                continue
            cursor.skip_bucket()
            push(name)
            continue
        attempt, made = try_workload(state, scratch, wl, allow_preemption=name not in searched)
        if attempt.searched:
            # Like Kueue's one nomination per queue and cycle: one victim search per queue per cycle.
            searched.add(name)
        if made:
            epochs[topo.cq_nodes[name].root.name] += 1
            decisions.extend(made)
            progress[name] = True
            cursor.advance()
            if cq.queueing_strategy is QueueingStrategy.STRICT_FIFO and not isinstance(made[0], Admit):
                continue
            push(name)
            continue
        failures.setdefault(name, []).append((fkey, vector, wl.priority, wl.created))
        if explain:
            decisions.append(pending_verdict(state, scratch.usage, cq, attempt, wl))
        if cq.queueing_strategy is QueueingStrategy.STRICT_FIFO:
            continue
        cursor.skip_bucket()
        push(name)

    blocked = {name: versions[name] for name, moved in progress.items() if not moved}
    del failures
    return CycleResult(tuple(decisions), blocked)


def failure_key(wl: Workload, per_pod_gpus: bool) -> Hashable:
    """What besides totals decides whether a workload fits: selectors, tolerations, fractional GPUs, and the
    per-pod GPU shape where physical devices are tracked."""
    return tuple((tuple(sorted(ps.node_selector.items())), ps.tolerations,
                  tuple(sorted((r, v if per_pod_gpus or v % MILLI else 0) for r, v in ps.requests.items()
                               if r in GPU_RESOURCES)))
                 for ps in wl.pod_sets)


def _max_available(topo: Topology, name: str, usage: list[dict[FR, int]]) -> dict[str, int]:
    node = topo.cq_nodes[name]
    out: dict[str, int] = {}
    for resource, flavors in topo.flavors_by_resource[name].items():
        out[resource] = max(available(node, (f, resource), usage) for f in flavors)
    return out


def _dominated(failed: Iterable[tuple[Hashable, dict[str, int], int, float]], key: Hashable,
               vector: dict[str, int], wl: Workload) -> bool:
    for fkey, fvec, prio, created in failed:
        if fkey == key and wl.priority <= prio and (wl.priority < prio or wl.created >= created) and all(
                vector.get(r, 0) >= v for r, v in fvec.items()):
            return True
    return False


def pending_verdict(state: ClusterState, usage: list[dict[FR, int]], cq: ClusterQueue, attempt: Attempt,
                    wl: Workload) -> Pending:
    """The explained `Pending` decision for a failed attempt."""
    reason = failure_reason(attempt)
    return Pending(wl.id, cq.name, reason, describe_failure(state, usage, cq, attempt, wl),
                   blocking_numbers(state, usage, cq, attempt, wl), holders(state, cq, attempt.blocking))


def never_fits(state: ClusterState, wl: Workload) -> str | None:
    """Why ``wl`` could not be admitted even on an empty cluster, or None when it could."""
    topo = state.topology
    cq = topo.cluster_queues.get(wl.cluster_queue)
    if cq is None:
        return f"ClusterQueue {wl.cluster_queue!r} does not exist"
    node: Node = topo.cq_nodes[cq.name]
    empty: list[dict[FR, int]] = [{} for _ in topo.nodes]
    devices = {f.name: [f.sharing.slots_per_gpu if f.sharing else 1] * f.gpus
               for f in topo.flavors.values() if f.gpus is not None}
    attempt = assign(cq, node, topo.group_of[cq.name], topo.flavors, wl, empty, devices, can_preempt=False)
    if attempt.mode in (FIT, BORROW):
        return None
    return attempt.message or "no flavor of the ClusterQueue can ever hold it"
