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
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

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
from capstan.queue.preemption import SearchReport, dominant_share, find_victims, still_futile
from capstan.queue.state import ClusterState, Node, Topology, add_usage, available, max_available, nominal_room
from capstan.resources.quantity import GPU_RESOURCES, MILLI, format_quantity


@dataclass(slots=True)
class Scratch:
    """Per-cycle copies of the mutable parts of the state.

    ``usage`` starts as a list of the state's own tables; a cohort tree's tables are copied the first time the
    cycle changes them (copy on write), and ``owned`` names the roots of the trees copied so far. Anything that
    mutates ``usage`` calls `Scratch.own` first.
    """

    usage: list[dict[FR, int]]
    devices: dict[str, list[int]]
    removed: set[str]
    owned: set[str] = field(default_factory=set)
    # The cycle's time (for lost work and minimum run times), the ClusterQueues whose victim search passed over
    # candidates that had not run their minimum time yet, and the first end of those minimum run times.
    now: float = 0.0
    protected: set[str] = field(default_factory=set)
    wake: float = math.inf

    def own(self, topology: Topology, node: Node) -> None:
        """Make the usage tables of ``node``'s cohort tree private to this scratch state."""
        root = node.root.name
        if root not in self.owned:
            usage = self.usage
            for i in topology.tree_nodes[root]:
                usage[i] = dict(usage[i])
            self.owned.add(root)


def scratch_of(state: ClusterState, now: float = 0.0) -> Scratch:
    """Fresh scratch state over a state's usage and device tables (usage is copied on write, see `Scratch`)."""
    return Scratch(list(state.usage), {k: list(v) for k, v in state.devices.items()}, set(), now=now)


def try_workload(state: ClusterState, scratch: Scratch, wl: Workload, *,
                 allow_preemption: bool = True,
                 report: list[SearchReport] | None = None) -> tuple[Attempt, list[Decision]]:
    """Try to admit one workload on the scratch state; returns the attempt and its decisions (applied to scratch).

    Decisions are an `Admit`, or `Preempt`s followed by a ``WaitingForPreemption`` `Pending`, or nothing (the
    attempt then explains the failure). ``report`` receives how a fruitless victim search was refused (see
    `find_victims`), when the attempt made exactly one.
    """
    topo = state.topology
    cq = topo.cluster_queues[wl.cluster_queue]
    node = topo.cq_nodes[cq.name]
    groups = topo.group_of[cq.name]
    can_preempt = allow_preemption and topo.preempting[cq.name]
    excluded: frozenset[str] = frozenset()
    first: Attempt | None = None
    while True:
        # `assign` replaces a flavor's device list rather than changing it, so a shallow copy is enough.
        trial_devices = dict(scratch.devices)
        attempt = assign(cq, node, groups, topo.flavors, wl, scratch.usage, trial_devices,
                         can_preempt=can_preempt, no_preempt_on=excluded)
        if first is None:
            first = attempt
        if attempt.mode <= BORROW:  # FIT or BORROW
            scratch.own(topo, node)
            add_usage(node, scratch.usage, attempt.usage, 1)
            scratch.devices = trial_devices
            return attempt, [Admit(wl, cq.name, tuple(attempt.pod_sets), attempt.usage, attempt.mode == BORROW)]
        if attempt.mode != PREEMPT:
            break
        first.searched = attempt.searched = True
        protected: dict[str, float] = {}
        found = find_victims(topo, state, cq, node, wl, attempt.usage, attempt.pod_sets, scratch.usage,
                             scratch.devices, scratch.removed, topo.config.fair_sharing, report=report,
                             now=scratch.now, protected=protected)
        until = math.inf
        if protected:
            scratch.protected.add(cq.name)
            until = min(protected.values())
            scratch.wake = min(scratch.wake, until)
        if found is not None:
            victims, usage_after, devices_after = found
            decisions: list[Decision] = [Preempt(v.admission.id, v.admission.cluster_queue, wl.id, v.reason)
                                         for v in victims]
            for v in victims:
                scratch.removed.add(v.admission.id)
            # Reserve the preemptor's quota so that no other head takes what the victims free. `find_victims`
            # returns private copies of this cohort tree's tables.
            add_usage(node, usage_after, attempt.usage, 1)
            scratch.usage = usage_after
            scratch.owned.add(node.root.name)
            scratch.devices = devices_after
            names = ", ".join(v.admission.id for v in victims) or "workloads already being evicted"
            decisions.append(Pending(wl.id, cq.name, Reason.WAITING_FOR_PREEMPTION,
                                     f"waiting for {names} to be evicted"))
            return attempt, decisions
        if report is not None and not report and all(ps.least >= ps.count for ps in wl.pod_sets):
            # Refused on the whole candidate set: at the same state it is refused again until `until`.
            report.append(SearchReport(until=until))
        # No victims on these flavors: try the next flavors that could be freed by preemption. With one pod set
        # and groups of a single flavor there is none: the next assignment would skip the same flavors.
        if len(wl.pod_sets) == 1 and all(len(groups[r].flavors) == 1 for r in attempt.pod_sets[0].flavors):
            break
        if report is not None:
            report.clear()
            report = None
        excluded = excluded | {f for ps in attempt.pod_sets for f in ps.flavors.values()}
    first.mode = NOFIT
    if any(ps.least < ps.count for ps in wl.pod_sets):
        partial = _partial(state, scratch, wl)
        if partial is not None:
            return partial
    return first, []


def partial_workload(wl: Workload, removed: int) -> Workload:
    """``wl`` with ``removed`` pods fewer, taken from the pod sets that have a ``min_count`` in proportion to
    how many each may lose (rounded up, never below its minimum); the result is all or nothing."""
    reducible = [ps.count - ps.least for ps in wl.pod_sets]
    total = sum(reducible)
    sets = []
    for ps, can in zip(wl.pod_sets, reducible, strict=True):
        cut = min(can, -(-removed * can // total)) if total else 0
        sets.append(replace(ps, count=ps.count - cut, min_count=None))
    return replace(wl, pod_sets=tuple(sets))


def _partial(state: ClusterState, scratch: Scratch, wl: Workload) -> tuple[Attempt, list[Decision]] | None:
    """Partial admission (Kueue's ``minCount``): the most pods that fit without preemption, found by bisection
    on the number of pods removed (fewer pods never fit worse); None when even the minimum does not fit."""
    topo = state.topology
    cq = topo.cluster_queues[wl.cluster_queue]
    node = topo.cq_nodes[cq.name]
    groups = topo.group_of[cq.name]

    def fits(removed: int) -> bool:
        attempt = assign(cq, node, groups, topo.flavors, partial_workload(wl, removed), scratch.usage,
                         dict(scratch.devices), can_preempt=False)
        return attempt.mode <= BORROW

    most = sum(ps.count - ps.least for ps in wl.pod_sets)
    if not fits(most):
        return None
    low, high = 1, most  # removing nothing is the full count, which did not fit
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return try_workload(state, scratch, partial_workload(wl, low), allow_preemption=False)


# A victim search known to be refused (cycles without explanations only; never changed).
FUTILE = Attempt(NOFIT, quota_failure=True, searched=True)


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
        least = sum(ps.least for ps in wl.pod_sets)
        rule = "the gang is admitted whole" if least >= attempt.pods_wanted else \
            f"it may be admitted with {least} at least (minCount)"
        parts.append(f"only {attempt.pods_fitting} of {attempt.pods_wanted} pods fit; {rule}")
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


class _Walk:
    """One ClusterQueue's walk through its pending workloads during a cycle, with what the cycle caches for it."""

    __slots__ = ("changes", "cq", "cursor", "failed", "fkeys", "heads", "lists", "name", "node", "preempting",
                 "room", "room_at", "roomy", "roomy_at", "roomy_freed", "root", "share", "strict", "tracked", "vecs",
                 "version", "workloads")

    def __init__(self, name: str, cq: ClusterQueue, node: Node, cursor: Cursor, version: int, preempting: bool,
                 tracked: bool) -> None:
        self.name = name
        self.cq = cq
        self.node = node
        self.root = node.root.name
        self.cursor = cursor
        # The cursor's heap and its queue's tables, read directly in the engine's inner loop.
        self.heads = cursor.heap
        self.lists = cursor.queue.lists
        self.vecs = cursor.queue.vecs
        self.workloads = cursor.queue.workloads
        self.version = version
        self.preempting = preempting
        self.tracked = tracked
        self.strict = cq.queueing_strategy is QueueingStrategy.STRICT_FIFO
        # Changes this cycle made to the queue's own usage table, and the figures derived from it alone: room
        # below nominal quota per resource, or (fair sharing) the dominant resource share.
        self.changes = 0
        self.room_at = -1
        self.room: dict[str, int] = {}
        self.share = 0.0
        # The tree epoch at which `roomy` (most of each resource any flavor has available) was computed, and the
        # count of frees in the tree then.
        self.roomy_at = -1
        self.roomy: dict[str, int] = {}
        self.roomy_freed = 0
        # Requests that failed this cycle, and the failure key of each bucket (computed when first needed).
        self.failed: list[tuple[Hashable, dict[str, int], int, float]] = []
        self.fkeys: dict[int, Hashable] = {}

    def failure_key(self, bucket: int) -> Hashable:
        """The failure key of ``bucket`` (the cursor's current one), computed once per cycle."""
        fkey = self.fkeys.get(bucket)
        if fkey is None:
            fkey = self.fkeys[bucket] = shape_failure_key(self.cursor.shape(), self.tracked)
        return fkey


def schedule(state: ClusterState, pending: PendingQueues, now: float, *, explain: bool = True) -> CycleResult:
    """Run one admission cycle. ``now`` is the injected time stamped on decisions' effects by the caller.

    With ``explain`` false (the simulator), pending verdicts are not produced, which saves their formatting.
    """
    topo = state.topology
    fair = topo.config.fair_sharing
    scratch = scratch_of(state, now)
    decisions: list[Decision] = []
    # Entries: (borrows, -priority, created, submission sequence, counter, walk). The sequence orders heads of
    # different queues created in the same instant by submission, not by the order queues are visited; the
    # counter is unique, so walks are never compared and the pop order is fully determined.
    heap: list[tuple[float, int, float, int, int, _Walk]] = []
    walks: dict[str, _Walk] = {}
    progress: dict[str, bool] = {}
    counter = 0
    # Per queue, requests that failed this cycle (`_Walk.failed`): a later head asking at least as much of
    # everything, with the same placement constraints and no higher priority, fails as well (quota only shrinks
    # during a cycle).
    searched: set[str] = set()
    preempting = topo.preempting
    tracked = topo.tracked
    stopped_local_queues = topo.stopped_local_queues
    cq_nodes = topo.cq_nodes
    # Per cohort tree, a counter of the changes this cycle made to the scratch usage: figures that depend on the
    # whole tree are cached against it.
    epochs = dict.fromkeys(state.versions, 0)
    # Fruitless victim searches (see `CycleResult.futile`): per tree, the admissions and whether anything was
    # preempted this cycle, and the searches whose refusal may outlive them.
    memo = not explain and not state.evicting
    tree_admits: dict[str, list[tuple[str, int, Mapping[FR, int]]]] = {root: [] for root in epochs}
    tree_preempted: set[str] = set()
    # Per tree, how many times this cycle quota was freed (by a preemption) in the scratch usage.
    freed = dict.fromkeys(epochs, 0)
    candidates: list[tuple[str, int, Workload, SearchReport]] = []

    def entry(walk: _Walk) -> tuple[float, int, float, int, int, _Walk] | None:
        nonlocal counter
        if not walk.heads:
            return None
        top = walk.heads[0]
        counter += 1
        first: float
        if walk.room_at != walk.changes:
            # The queue's own usage table changed (or this is the first look): refresh what depends on it alone.
            if fair:
                walk.share = dominant_share(topo, walk.node, scratch.usage[walk.node.idx])
            elif walk.changes == 0:
                walk.room = state.nominal_headroom(walk.name)
            else:
                walk.room = nominal_room(topo, walk.name, scratch.usage[walk.node.idx])
            walk.room_at = walk.changes
        if fair:
            first = walk.share
        else:
            # As in Kueue, heads that fit within their queue's nominal quota go before heads that must borrow,
            # so quota freed by reclaiming goes to its owner rather than back to the borrower.
            room = walk.room
            first = 0.0
            for r, q in walk.vecs[top[3]].items():
                if q and q > room.get(r, 0):
                    first = 1.0
                    break
        return (first, top[0], top[1], top[2], counter, walk)

    def refresh_roomy(walk: _Walk, epoch: int) -> None:
        walk.roomy = state.max_headroom(walk.name) if epoch == 0 else max_available(topo, walk.name, scratch.usage)
        walk.roomy_at = epoch
        walk.roomy_freed = freed[walk.root]

    def requeue(walk: _Walk) -> None:
        # The popped entry is still at heap[0]: replace it with the queue's next head, or drop it.
        nxt = entry(walk)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, nxt)

    tree_versions = state.versions
    admit_versions = state.admit_versions
    aged = _Aged()
    if topo.config.aging_seconds is not None:
        hold = topo.config.hold_seconds
        aged = _aged_first(state, pending, scratch, now - topo.config.aging_seconds,
                           now - (hold if hold is not None else float("inf")), explain, searched,
                           searches=candidates if memo else None)
        decisions.extend(aged.decisions)
        for root, admits in aged.admits.items():
            tree_admits[root].extend(admits)
            epochs[root] += len(admits)
        for root in aged.preempted:
            tree_preempted.add(root)
            freed[root] += 1
            epochs[root] += 1
    taken = aged.taken
    for name in pending.cluster_queues():
        cq = topo.cluster_queues.get(name)
        if cq is None:
            continue
        holder = aged.held.get(cq_nodes[name].root.name)
        if holder is not None:
            # The aging rule: nothing overtakes a workload that has waited too long.
            held_queue = pending.queue(name)
            top_wl = None if held_queue is None else held_queue.head()
            if explain and top_wl is not None and top_wl.id != holder.id:
                decisions.append(Pending(top_wl.id, name, Reason.BLOCKED_BY_HEAD_OF_QUEUE,
                                         f"the cohort tree is held for {holder.id}, pending for longer than "
                                         f"the aging hold limit of {topo.config.hold_seconds:g}s"))
            continue
        # `ClusterState.version`, inlined: this loop runs for every queue in every cycle.
        node = cq_nodes[name]
        root = node.root.name
        version = tree_versions[root]
        if preempting[name]:
            version = (version << 32) + admit_versions[root]
        if pending.blocked_at(name) == version:
            continue
        queue = pending.queue(name)
        if queue is None:
            continue
        progress[name] = False
        walk = walks[name] = _Walk(name, cq, node, queue.cursor(), version, preempting[name], name in tracked)
        if root in aged.touched:
            walk.changes = 1  # the aging pass changed this tree's scratch usage: no cached headroom
        if cq.stopped:
            head = walk.cursor.peek()
            if explain and head is not None:
                decisions.append(Pending(head.id, name, Reason.INACTIVE, f"ClusterQueue {name} is stopped"))
            continue
        first_entry = entry(walk)
        if first_entry is not None:
            heapq.heappush(heap, first_entry)

    while heap:
        walk = heap[0][5]
        name = walk.name
        cursor = walk.cursor
        top = walk.heads[0]
        wl = walk.workloads[walk.lists[top[3]][top[4]][1]]
        if taken and wl.id in taken:
            cursor.advance()  # already decided by the aging pass
            requeue(walk)
            continue
        if not wl.active or wl.queue in stopped_local_queues:
            if explain:
                why = "the workload is deactivated" if not wl.active else f"LocalQueue {wl.queue} is stopped"
                decisions.append(Pending(wl.id, name, Reason.INACTIVE, why))
            cursor.advance()
            requeue(walk)
            continue
        vector = walk.vecs[top[3]]
        refused = False
        if not explain and (not walk.preempting or name in searched):
            # Cheap refusal: more of some resource than any flavor of the queue has available now. Until something
            # is preempted in the tree, usage only grows during a cycle, so the figures of an earlier epoch are an
            # upper bound: a refusal by them stands, and only a head they let through needs them refreshed.
            root = walk.root
            epoch = epochs[root]
            if walk.roomy_at != epoch and (walk.roomy_at < 0 or walk.roomy_freed != freed[root]):
                refresh_roomy(walk, epoch)
            for r, q in vector.items():
                if q > walk.roomy.get(r, 0):
                    refused = True
                    break
            if not refused and walk.roomy_at != epoch:
                refresh_roomy(walk, epoch)
                for r, q in vector.items():
                    if q > walk.roomy.get(r, 0):
                        refused = True
                        break
        failed = walk.failed
        fkey: Hashable = None
        if not refused and failed:
            fkey = walk.failure_key(top[3])
            # A smaller or equal request of the same shape and at least this priority already failed here.
            refused = _dominated(failed, fkey, vector, wl)
        if refused:
            if walk.strict:
                heapq.heappop(heap)
                continue
            heapq.heappop(walk.heads)  # skip the bucket
            requeue(walk)
            continue
        made: list[Decision]
        if memo and walk.preempting and not walk.tracked and name not in searched:
            attempt, made = _search_once(state, pending, scratch, wl, walk.version, walk.root in tree_preempted,
                                         not epochs[walk.root], candidates)
        else:
            attempt, made = try_workload(state, scratch, wl, allow_preemption=name not in searched)
        if attempt.searched:
            # Like Kueue's one nomination per queue and cycle: one victim search per queue per cycle.
            searched.add(name)
        if made:
            epochs[walk.root] += 1
            walk.changes += 1
            first_made = made[0]
            if isinstance(first_made, Admit):
                tree_admits[walk.root].append((name, first_made.workload.priority, first_made.usage))
            else:
                # A preemption: the search's copy of the tree, with victims (and workloads being evicted) taken
                # out, replaced the scratch tables, so any queue of the tree may have changed.
                tree_preempted.add(walk.root)
                freed[walk.root] += 1
                for other in walks.values():
                    if other.root == walk.root:
                        other.changes += 1
            decisions.extend(made)
            progress[name] = True
            cursor.advance()
            if walk.strict and not isinstance(made[0], Admit):
                heapq.heappop(heap)
                continue
            requeue(walk)
            continue
        if fkey is None:
            fkey = walk.failure_key(cursor.bucket())
        failed.append((fkey, vector, wl.priority, wl.created))
        if explain:
            decisions.append(pending_verdict(state, scratch.usage, walk.cq, attempt, wl))
        if walk.strict:
            heapq.heappop(heap)
            continue
        cursor.skip_bucket()
        requeue(walk)

    # A queue whose search passed over workloads still within their minimum run time may succeed later at the
    # same version (time alone lifts the protection): it is not marked blocked.
    blocked = {name: walks[name].version for name, moved in progress.items()
               if not moved and name not in scratch.protected}
    # A queue walked to the end whose admissions only get harder with more usage (`Topology.monotone`): every
    # workload left was refused against no more usage than it will face once these admissions are applied.
    monotone = topo.monotone
    settled = {name: walks[name].version for name, moved in progress.items() if moved and name in monotone}
    futile: dict[str, tuple[int, Workload, SearchReport]] = {}
    for name, version, wl, report in candidates:
        root = cq_nodes[name].root.name
        admitted = tree_admits[root]
        if root not in tree_preempted:
            later = still_futile(report, name, admitted)
            if later is not None:
                # The version the queue will have once this cycle's admissions are applied.
                futile[name] = (version + len(admitted), wl, later)
    if memo:
        # Searches remembered for the other queues of a tree that only admitted stay refused through these
        # admissions too (when `still_futile` says so); carry them to the version the queues will have.
        for root, admitted in tree_admits.items():
            if not admitted or root in tree_preempted:
                continue
            for name in topo.tree_cqs[root]:
                if name in futile or not preempting[name]:
                    continue
                known = pending.futile_at(name)
                version = (tree_versions[root] << 32) + admit_versions[root]
                if known is not None and known[0] == version:
                    later = still_futile(known[2], name, admitted)
                    if later is not None:
                        futile[name] = (version + len(admitted), known[1], later)
    return CycleResult(tuple(decisions), blocked, settled, futile, scratch.wake if scratch.wake < math.inf else None)


def _search_once(state: ClusterState, pending: PendingQueues, scratch: Scratch, wl: Workload, version: int,
                 preempted: bool, unchanged: bool, found: list[tuple[str, int, Workload, SearchReport]],
                 ) -> tuple[Attempt, list[Decision]]:
    """`try_workload` for the head of a preempting queue, unless the same search was refused at this version
    (`CycleResult.futile`) and still stands: ``preempted`` when something was preempted in the cohort tree this
    cycle, ``unchanged`` when nothing at all changed there. A refusal with a report is added to ``found``."""
    name = wl.cluster_queue
    known = pending.futile_at(name)
    if known is not None and known[1] is wl and known[0] == version and not preempted \
            and (known[2].robust or (unchanged and scratch.now < known[2].until)):
        # Refused at this version, and this cycle has since only added usage (or, for a refusal on the whole
        # candidate set, changed nothing, and no protection it met has ended).
        if known[2].until < math.inf:
            scratch.protected.add(name)
            scratch.wake = min(scratch.wake, known[2].until)
        found.append((name, version, wl, known[2]))
        return FUTILE, []
    reports: list[SearchReport] = []
    attempt, made = try_workload(state, scratch, wl, report=reports)
    if reports and not made:
        found.append((name, version, wl, reports[0]))
    return attempt, made


AGED_PRIORITY = 1 << 30
"""The priority an aged workload searches for victims with (and, in the simulator, keeps once admitted)."""


@dataclass(slots=True)
class _Aged:
    """What the aging pass of a cycle decided (see `_aged_first`)."""

    decisions: list[Decision] = field(default_factory=list)
    # Cohort tree root -> the aged workload that did not fit and holds the tree.
    held: dict[str, Workload] = field(default_factory=dict)
    # Workloads the pass admitted or found victims for; the queue walk passes over them.
    taken: set[str] = field(default_factory=set)
    admits: dict[str, list[tuple[str, int, Mapping[FR, int]]]] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)


def _aged_first(state: ClusterState, pending: PendingQueues, scratch: Scratch, cutoff: float, hold_cutoff: float,
                explain: bool, searched: set[str], *,
                searches: list[tuple[str, int, Workload, SearchReport]] | None = None) -> _Aged:
    """The aging rule: workloads created at or before ``cutoff`` go first, oldest first, across all queues.

    Each is tried until one of its queue does not fit; past ``hold_cutoff`` the oldest of each cohort tree is
    tried at priority `AGED_PRIORITY` (so it may preempt where its queue's policies allow preempting lower
    priorities). The first
    that does not fit and was created at or before ``hold_cutoff`` holds its cohort tree: no other workload of
    the tree is admitted in this cycle, so its wait is bounded by the hold limit plus the time running work takes
    to free its request. With ``searches``, refused victim searches are remembered as in the queue walk
    (`_search_once`). Blocked-queue marks are ignored here: a queue's workload may have aged since it was
    marked.
    """
    topo = state.topology
    out = _Aged()
    # (created, sequence, ClusterQueue, workload, the queue's later aged workloads): sequences are unique, so
    # the workloads and iterators are never compared.
    heads: list[tuple[float, int, str, Workload, Iterator[Workload]]] = []
    for name in pending.cluster_queues():
        cq = topo.cluster_queues.get(name)
        queue = pending.queue(name)
        if cq is None or cq.stopped or queue is None:
            continue
        it = queue.aged(cutoff)
        first = next(it, None)
        if first is not None:
            heads.append((first.created, pending.sequence(first.id), name, first, it))
    heapq.heapify(heads)
    stopped_local_queues = topo.stopped_local_queues
    boosted: set[str] = set()
    while heads:
        _created, _seq, name, wl, it = heapq.heappop(heads)
        root = topo.cq_nodes[name].root.name
        if root in out.held:
            continue  # the tree is held by an older workload; this queue's later ones wait too
        made: list[Decision] = []
        if wl.active and wl.queue not in stopped_local_queues:
            # Past the hold limit, the oldest workload of each cohort tree may preempt as the top priority allows
            # (other aged workloads, at the same level, are safe): evictions for aging stay one at a time per
            # tree. Before it, aged workloads are promoted only.
            boost = wl.created <= hold_cutoff and root not in boosted
            if boost:
                boosted.add(root)
            trial = replace(wl, priority=max(wl.priority, AGED_PRIORITY)) if boost else wl
            if searches is not None and not boost and topo.preempting[name] and name not in topo.tracked \
                    and name not in searched:
                attempt, made = _search_once(state, pending, scratch, wl, state.version(name), root in out.preempted,
                                             root not in out.touched, searches)
            else:
                attempt, made = try_workload(state, scratch, trial, allow_preemption=name not in searched)
            if attempt.searched:
                searched.add(name)
            if not made:
                if wl.created <= hold_cutoff:
                    out.held[root] = wl
                    if explain:
                        verdict = pending_verdict(state, scratch.usage, topo.cluster_queues[name], attempt, wl)
                        out.decisions.append(replace(verdict, message=f"{verdict.message} (aged: holds the "
                                                                      "cohort tree until admitted)"))
                # The queue's younger aged workloads are left to the queue walk: one failed try per queue keeps
                # the pass O(ClusterQueues) however many workloads have aged.
                continue
        if made:
            out.decisions.extend(made)
            out.taken.add(wl.id)
            out.touched.add(root)
            first_made = made[0]
            if isinstance(first_made, Admit):
                out.admits.setdefault(root, []).append((name, wl.priority, first_made.usage))
            else:
                out.preempted.add(root)
        nxt = next(it, None)
        if nxt is not None:
            heapq.heappush(heads, (nxt.created, pending.sequence(nxt.id), name, nxt, it))
    return out


def shape_failure_key(shape: Hashable, per_pod_gpus: bool) -> Hashable:
    """`failure_key` from a workload's `shape_key`, which holds the same parts already sorted."""
    assert isinstance(shape, tuple)
    return tuple((selector, tolerations, tuple((r, v if per_pod_gpus or v % MILLI else 0) for r, v in requests
                                               if r in GPU_RESOURCES))
                 for _count, requests, selector, tolerations in shape)


def failure_key(wl: Workload, per_pod_gpus: bool) -> Hashable:
    """What besides totals decides whether a workload fits: selectors, tolerations, fractional GPUs, and the
    per-pod GPU shape where physical devices are tracked."""
    return tuple((tuple(sorted(ps.node_selector.items())), ps.tolerations,
                  tuple(sorted((r, v if per_pod_gpus or v % MILLI else 0) for r, v in ps.requests.items()
                               if r in GPU_RESOURCES)))
                 for ps in wl.pod_sets)


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
    least = replace(wl, pod_sets=tuple(replace(ps, count=ps.least) for ps in wl.pod_sets))
    attempt = assign(cq, node, topo.group_of[cq.name], topo.flavors, least, empty, devices, can_preempt=False)
    if attempt.mode in (FIT, BORROW):
        return None
    return attempt.message or "no flavor of the ClusterQueue can ever hold it"
