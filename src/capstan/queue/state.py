"""The cluster state the admission engine reads: the compiled cohort tree, quota usage and admitted workloads.

`Topology` is derived once from a `QueueConfig`. `ClusterState` is the caller-owned snapshot of usage that the
manager and the simulator update incrementally with `admit` / `release`; the engine never mutates it, it copies
the usage tables it needs for one cycle (a few hundred integers), so a cycle costs nothing per admitted workload.

Quota semantics (hierarchical, as in Kueue): each node of the tree (ClusterQueue or Cohort) has a nominal quota
per flavor-resource. Its *subtree quota* is its own nominal plus what its children lend to it; of a child's
subtree quota, ``lendingLimit`` caps what sits in the parent's pool and the rest is *guaranteed* to the child.
A node's usage in its parent is whatever it uses above its guaranteed part; ``borrowingLimit`` caps how far a
node may go above its subtree quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from capstan.errors import InvalidState, ResourceDoesNotExist
from capstan.queue.model import FR, Admission, ClusterQueue, QueueConfig, ResourceFlavor, ResourceGroup
from capstan.resources.quantity import GPU_RESOURCES, MILLI


class Node:
    """A ClusterQueue or Cohort in the compiled tree (internal, mutable only while compiling)."""

    __slots__ = ("borrow_limit", "children", "guaranteed", "idx", "is_cq", "lend_limit", "name", "nominal",
                 "parent", "path", "potentials", "root", "subtree", "weight")

    def __init__(self, name: str, idx: int, is_cq: bool, weight: float) -> None:
        self.name = name
        self.idx = idx
        self.is_cq = is_cq
        self.weight = weight
        self.parent: Node | None = None
        self.root: Node = self
        self.children: list[Node] = []
        self.nominal: dict[FR, int] = {}
        self.borrow_limit: dict[FR, int] = {}
        self.lend_limit: dict[FR, int] = {}
        self.subtree: dict[FR, int] = {}
        self.guaranteed: dict[FR, int] = {}
        # The nodes from the root down to this one, and `potential` per flavor-resource (filled on first use).
        self.path: tuple[Node, ...] = (self,)
        self.potentials: dict[FR, int] = {}

    def __repr__(self) -> str:
        return f"Node({'cq' if self.is_cq else 'cohort'}:{self.name})"


def _load_groups(node: Node, groups: Iterable[ResourceGroup]) -> None:
    for group in groups:
        for fq in group.flavors:
            for rq in fq.resources:
                fr = (fq.flavor, rq.resource)
                node.nominal[fr] = rq.nominal
                if rq.borrowing_limit is not None:
                    node.borrow_limit[fr] = rq.borrowing_limit
                if rq.lending_limit is not None:
                    node.lend_limit[fr] = rq.lending_limit


class Topology:
    """The compiled, read-only view of a `QueueConfig` that the engine works with."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.flavors: dict[str, ResourceFlavor] = {f.name: f for f in config.flavors}
        self.cluster_queues: dict[str, ClusterQueue] = {cq.name: cq for cq in config.cluster_queues}
        self.nodes: list[Node] = []
        self.cq_nodes: dict[str, Node] = {}
        self.cohort_nodes: dict[str, Node] = {}
        for cohort in config.cohorts:
            node = Node(cohort.name, len(self.nodes), False, cohort.fair_weight)
            _load_groups(node, cohort.resource_groups)
            self.nodes.append(node)
            self.cohort_nodes[cohort.name] = node
        for cq in config.cluster_queues:
            node = Node(cq.name, len(self.nodes), True, cq.fair_weight)
            _load_groups(node, cq.resource_groups)
            self.nodes.append(node)
            self.cq_nodes[cq.name] = node
            if cq.cohort is not None and cq.cohort not in self.cohort_nodes:
                # Kueue creates a cohort implicitly when a ClusterQueue names one that has no object.
                implicit = Node(cq.cohort, len(self.nodes), False, 1.0)
                self.nodes.append(implicit)
                self.cohort_nodes[cq.cohort] = implicit
        for cohort in config.cohorts:
            if cohort.parent is not None:
                self._link(self.cohort_nodes[cohort.name], cohort.parent)
        for cq in config.cluster_queues:
            if cq.cohort is not None:
                self._link(self.cq_nodes[cq.name], cq.cohort)
        for node in self.nodes:
            if node.parent is None:
                self._compute(node, node)
        self.local_queues = {lq.name: lq for lq in config.local_queues}
        # Which resource group of a ClusterQueue covers each resource.
        self.group_of: dict[str, dict[str, ResourceGroup]] = {
            cq.name: {r: g for g in cq.resource_groups for r in g.covered_resources}
            for cq in config.cluster_queues}
        # Total quota per resource at each root: the denominator of dominant resource shares.
        self.root_pool: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            if node.parent is None:
                pool: dict[str, int] = {}
                for (_flavor, resource), value in node.subtree.items():
                    pool[resource] = pool.get(resource, 0) + value
                self.root_pool[node.name] = pool
        # Per ClusterQueue: nominal quota per resource summed over flavors, and the flavors of each resource.
        self.nominal_by_resource: dict[str, dict[str, int]] = {}
        self.flavors_by_resource: dict[str, dict[str, tuple[str, ...]]] = {}
        for name, node in self.cq_nodes.items():
            totals: dict[str, int] = {}
            flavors_of: dict[str, list[str]] = {}
            for (flavor, resource), value in node.nominal.items():
                totals[resource] = totals.get(resource, 0) + value
                flavors_of.setdefault(resource, []).append(flavor)
            self.nominal_by_resource[name] = totals
            self.flavors_by_resource[name] = {r: tuple(fs) for r, fs in flavors_of.items()}
        # The same as (flavor, resource) pairs, ready to look up usage with.
        self.pairs_by_resource: dict[str, dict[str, tuple[FR, ...]]] = {
            name: {r: tuple((f, r) for f in fs) for r, fs in by_resource.items()}
            for name, by_resource in self.flavors_by_resource.items()}
        self.tree_cqs: dict[str, list[str]] = {}
        for name, node in self.cq_nodes.items():
            self.tree_cqs.setdefault(node.root.name, []).append(name)
        # Indexes of every node of each cohort tree: what a preemption search may touch.
        self.tree_nodes: dict[str, list[int]] = {}
        for node in self.nodes:
            self.tree_nodes.setdefault(node.root.name, []).append(node.idx)
        # Constants every admission cycle reads: which queues may preempt, which place physical GPUs, which
        # LocalQueues are stopped.
        self.preempting: dict[str, bool] = {
            cq.name: cq.preemption.enabled or (config.fair_sharing and cq.cohort is not None)
            for cq in config.cluster_queues}
        tracked_flavors = {f.name for f in config.flavors if f.gpus is not None}
        self.tracked: frozenset[str] = frozenset(
            name for name, groups in self.group_of.items()
            if any(fq.flavor in tracked_flavors for g in groups.values() for fq in g.flavors))
        self.stopped_local_queues: frozenset[str] = frozenset(lq.name for lq in config.local_queues if lq.stopped)
        # Queues whose admissions can only get harder as usage grows: no preemption anywhere in their cohort tree
        # (it frees quota within a cycle), one flavor per resource group and no tracked devices (so there is no
        # choice of flavor or device that more usage could turn out better).
        tree_preempts = {node.root.name for node in self.cq_nodes.values() if self.preempting[node.name]}
        self.monotone: frozenset[str] = frozenset(
            name for name, cq in self.cluster_queues.items()
            if self.cq_nodes[name].root.name not in tree_preempts and name not in self.tracked
            and all(len(g.flavors) == 1 for g in cq.resource_groups))

    def copy_tree(self, node: Node, usage: list[dict[FR, int]]) -> list[dict[FR, int]]:
        """A usage table whose entries for ``node``'s cohort tree are private copies (others are shared)."""
        out = list(usage)
        for i in self.tree_nodes[node.root.name]:
            out[i] = dict(usage[i])
        return out

    def _link(self, child: Node, parent_name: str) -> None:
        parent = self.cohort_nodes[parent_name]
        child.parent = parent
        parent.children.append(child)

    def _compute(self, node: Node, root: Node) -> None:
        node.root = root
        node.path = (*node.parent.path, node) if node.parent is not None else (node,)
        subtree = dict(node.nominal)
        for child in node.children:
            self._compute(child, root)
            for fr, value in child.subtree.items():
                lend = child.lend_limit.get(fr)
                subtree[fr] = subtree.get(fr, 0) + (value if lend is None else min(value, lend))
        node.subtree = subtree
        if node.parent is not None:
            node.guaranteed = {fr: (0 if fr not in node.lend_limit else max(0, v - node.lend_limit[fr]))
                               for fr, v in subtree.items()}

    def cohort_of(self, cq: str) -> str | None:
        """The name of the ClusterQueue's direct cohort."""
        parent = self.cq_nodes[cq].parent
        return None if parent is None else parent.name


class ClusterState:
    """Usage and admitted workloads for one `Topology`; updated by the caller, read by the engine."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.usage: list[dict[FR, int]] = [{} for _ in topology.nodes]
        self.admissions: dict[str, Admission] = {}
        self.by_cq: dict[str, dict[str, Admission]] = {name: {} for name in topology.cq_nodes}
        # Change counters per cohort tree: `versions` moves when quota is freed or an admitted workload's
        # priority changes (anything that can unblock a queue); `admit_versions` when a workload is admitted
        # (which only matters to queues that may preempt: it adds candidates).
        self.versions: dict[str, int] = {node.name: 0 for node in topology.nodes if node.parent is None}
        self.admit_versions: dict[str, int] = dict.fromkeys(self.versions, 0)
        self._preempting = topology.preempting
        # Per ClusterQueue and flavor-resource: how many admissions use each amount (for the largest one).
        self.sizes: dict[str, dict[FR, dict[int, int]]] = {name: {} for name in topology.cq_nodes}
        # Admissions per ClusterQueue and priority (insertion order: oldest first) and their summed usage, so
        # victim searches walk candidates lazily, lowest priority and most recent first.
        self.by_priority: dict[str, dict[int, dict[str, Admission]]] = {name: {} for name in topology.cq_nodes}
        self.priority_usage: dict[str, dict[int, dict[FR, int]]] = {name: {} for name in topology.cq_nodes}
        # The same sums over each whole cohort tree (root name -> priority -> usage), with the number of admissions
        # per level: a victim search first checks these upper bounds, which cost nothing per queue.
        self.tree_priority_usage: dict[str, dict[int, dict[FR, int]]] = {node.name: {} for node in topology.nodes
                                                                          if node.parent is None}
        self._tree_counts: dict[str, dict[int, int]] = {root: {} for root in self.tree_priority_usage}
        # Admitted workloads whose eviction is under way: still charged, never chosen as victims again.
        self.evicting: set[str] = set()
        # When each admitted workload last saved a checkpoint (seconds, the engine's clock), as recorded.
        self.checkpoints: dict[str, float] = {}
        # Per ClusterQueue: the two halves of `headroom` and the tree version each was computed at.
        self._nominal_headroom: dict[str, tuple[int, dict[str, int]]] = {}
        self._max_headroom: dict[str, tuple[int, dict[str, int]]] = {}
        # Free slots of each tracked physical GPU, per flavor.
        self.devices: dict[str, list[int]] = {}
        for flavor in topology.flavors.values():
            if flavor.gpus is not None:
                slots = flavor.sharing.slots_per_gpu if flavor.sharing else 1
                self.devices[flavor.name] = [slots] * flavor.gpus

    def version(self, cq: str) -> int:
        """Change counter of the cohort tree of ``cq``, counting only changes that could let it admit more."""
        root = self.topology.cq_nodes[cq].root.name
        if self._preempting[cq]:
            return (self.versions[root] << 32) + self.admit_versions[root]
        return self.versions[root]

    def headroom(self, cq: str) -> tuple[dict[str, int], dict[str, int]]:
        """For a ClusterQueue: per resource, the room left below its nominal quota (over all its flavors), and the
        most that any one of its flavors has available now (see `nominal_room`, `max_available`).

        Each is computed on first use and kept until the usage of the queue's cohort tree changes (every admission
        and release moves the tree's version); the engine reads them for trees a cycle has not changed yet.
        """
        return self.nominal_headroom(cq), self.max_headroom(cq)

    def nominal_headroom(self, cq: str) -> dict[str, int]:
        """The first half of `headroom` (cached the same way)."""
        node = self.topology.cq_nodes[cq]
        root = node.root.name
        at = (self.versions[root] << 32) + self.admit_versions[root]
        cached = self._nominal_headroom.get(cq)
        if cached is None or cached[0] != at:
            cached = self._nominal_headroom[cq] = (at, nominal_room(self.topology, cq, self.usage[node.idx]))
        return cached[1]

    def max_headroom(self, cq: str) -> dict[str, int]:
        """The second half of `headroom` (cached the same way)."""
        root = self.topology.cq_nodes[cq].root.name
        at = (self.versions[root] << 32) + self.admit_versions[root]
        cached = self._max_headroom.get(cq)
        if cached is None or cached[0] != at:
            cached = self._max_headroom[cq] = (at, max_available(self.topology, cq, self.usage))
        return cached[1]

    def largest(self, cq: str, fr: FR) -> int:
        """The largest amount of ``fr`` any single admitted workload of ``cq`` uses."""
        counts = self.sizes[cq].get(fr)
        return max(counts) if counts else 0

    def used(self, cq_or_cohort: str, fr: FR, *, cohort: bool = False) -> int:
        """Usage of a node for one flavor-resource (for cohorts: what children take from its pool)."""
        nodes = self.topology.cohort_nodes if cohort else self.topology.cq_nodes
        return self.usage[nodes[cq_or_cohort].idx].get(fr, 0)

    def admit(self, admission: Admission) -> None:
        """Record an admitted workload: charge its usage up the tree and occupy its GPU slots."""
        if admission.id in self.admissions:
            raise InvalidState(f"workload {admission.id!r} is already admitted")
        node = self.topology.cq_nodes[admission.cluster_queue]
        add_usage(node, self.usage, admission.usage, 1)
        self.admissions[admission.id] = admission
        self.by_cq[admission.cluster_queue][admission.id] = admission
        self._index(admission, 1)
        occupy_devices(self.devices, self.topology.flavors, admission, -1)
        self.admit_versions[node.root.name] += 1

    def release(self, workload_id: str) -> Admission:
        """Forget an admitted workload (finished, cancelled or evicted) and return its quota."""
        admission = self.admissions.pop(workload_id, None)
        if admission is None:
            raise ResourceDoesNotExist(f"workload {workload_id!r} is not admitted")
        del self.by_cq[admission.cluster_queue][workload_id]
        self._index(admission, -1)
        self.evicting.discard(workload_id)
        self.checkpoints.pop(workload_id, None)
        node = self.topology.cq_nodes[admission.cluster_queue]
        add_usage(node, self.usage, admission.usage, -1)
        occupy_devices(self.devices, self.topology.flavors, admission, 1)
        self.versions[node.root.name] += 1
        return admission

    def _index(self, admission: Admission, sign: int) -> None:
        cq = admission.cluster_queue
        prio = admission.workload.priority
        levels = self.by_priority[cq]
        totals = self.priority_usage[cq]
        sizes = self.sizes[cq]
        root = self.topology.cq_nodes[cq].root.name
        counts = self._tree_counts[root]
        tree = self.tree_priority_usage[root]
        left_at_level = counts.get(prio, 0) + sign
        if left_at_level:
            counts[prio] = left_at_level
            tree_table = tree.setdefault(prio, {})
            for fr, q in admission.usage.items():
                tree_table[fr] = tree_table.get(fr, 0) + sign * q
        else:
            del counts[prio]
            del tree[prio]
        for fr, q in admission.usage.items():
            per_size = sizes.setdefault(fr, {})
            left = per_size.get(q, 0) + sign
            if left:
                per_size[q] = left
            else:
                del per_size[q]
        if sign > 0:
            levels.setdefault(prio, {})[admission.id] = admission
            table = totals.setdefault(prio, {})
            for fr, q in admission.usage.items():
                table[fr] = table.get(fr, 0) + q
            return
        del levels[prio][admission.id]
        if not levels[prio]:
            del levels[prio]
            del totals[prio]
            return
        table = totals[prio]
        for fr, q in admission.usage.items():
            table[fr] -= q

    def record_checkpoint(self, workload_id: str, at: float) -> None:
        """An admitted workload saved a checkpoint at ``at`` (seconds): work before it survives a preemption."""
        if workload_id not in self.admissions:
            raise ResourceDoesNotExist(f"workload {workload_id!r} is not admitted")
        self.checkpoints[workload_id] = max(at, self.checkpoints.get(workload_id, at))

    def last_checkpoint(self, admission: Admission, now: float) -> float:
        """When ``admission`` last saved its work, as of ``now``: the recorded save, or the last multiple of its
        declared checkpoint interval since admission, or its admission (nothing saved yet)."""
        last = admission.admitted_at
        interval = admission.workload.checkpoint_interval_seconds
        if interval > 0 and now > last:
            last += (now - last) // interval * interval
        return max(last, self.checkpoints.get(admission.id, last))

    def lost_work(self, admission: Admission, now: float) -> float:
        """GPU-seconds (or, without GPUs, seconds) of work ``admission`` would lose if preempted at ``now``."""
        gpus = 0
        for (_f, r), q in admission.usage.items():
            if r in GPU_RESOURCES:
                gpus += q
        # `last_checkpoint`, inlined: the victim search calls this for every candidate.
        last = admission.admitted_at
        interval = admission.workload.checkpoint_interval_seconds
        if interval > 0 and now > last:
            last += (now - last) // interval * interval
        if self.checkpoints:
            recorded = self.checkpoints.get(admission.workload.id)
            if recorded is not None and recorded > last:
                last = recorded
        return max(0.0, now - last) * max(gpus / MILLI, 1.0)

    def mark_evicting(self, workload_id: str) -> None:
        """Note that an admitted workload is being stopped (after a `Preempt` decision)."""
        if workload_id not in self.admissions:
            raise ResourceDoesNotExist(f"workload {workload_id!r} is not admitted")
        self.evicting.add(workload_id)

    def set_priority(self, workload_id: str, priority: int) -> None:
        """Change an admitted workload's priority (e.g. attained-service demotion); it changes who may preempt it."""
        old = self.admissions[workload_id]
        new = replace(old, workload=replace(old.workload, priority=priority))
        self._index(old, -1)
        self.admissions[workload_id] = new
        self.by_cq[old.cluster_queue][workload_id] = new
        self._index(new, 1)
        self.versions[self.topology.cq_nodes[old.cluster_queue].root.name] += 1


def add_usage(node: Node, usage: list[dict[FR, int]], amounts: Mapping[FR, int], sign: int) -> None:
    """Add (``sign`` 1) or remove (-1) ``amounts`` at ``node`` and propagate the part above guarantees upward."""
    for fr, amount in amounts.items():
        delta = sign * amount
        current: Node | None = node
        while current is not None and delta:
            table = usage[current.idx]
            old = table.get(fr, 0)
            new = old + delta
            table[fr] = new
            parent = current.parent
            if parent is None:
                break
            g = current.guaranteed.get(fr, 0)
            delta = max(0, new - g) - max(0, old - g)
            current = parent


def available(node: Node, fr: FR, usage: list[dict[FR, int]]) -> int:
    """How much of ``fr`` a node could still use now, counting what it may borrow from its ancestors."""
    path = node.path
    root = path[0]
    # Walk down from the root: what the parent can give, capped by the borrowing limit, plus the guarantee.
    free = max(0, root.subtree.get(fr, 0) - usage[root.idx].get(fr, 0))
    for i in range(1, len(path)):
        current = path[i]
        used = usage[current.idx].get(fr, 0)
        g = current.guaranteed.get(fr, 0)
        limit = current.borrow_limit.get(fr)
        if limit is not None:
            free = min(free, current.subtree.get(fr, 0) - g - max(0, used - g) + limit)
        free = max(0, g - used) + max(0, free)
    return free


def nominal_room(topology: Topology, cq: str, table: Mapping[FR, int]) -> dict[str, int]:
    """Per resource, how much more a ClusterQueue (usage ``table``) can use before it exceeds its nominal quota,
    counting all its flavors."""
    out: dict[str, int] = {}
    pairs = topology.pairs_by_resource[cq]
    for resource, nominal in topology.nominal_by_resource[cq].items():
        used = 0
        for fr in pairs.get(resource, ()):
            used += table.get(fr, 0)
        out[resource] = nominal - used
    return out


def max_available(topology: Topology, cq: str, usage: list[dict[FR, int]]) -> dict[str, int]:
    """Per resource, the most that any one flavor of a ClusterQueue has available now (see `available`)."""
    node = topology.cq_nodes[cq]
    out: dict[str, int] = {}
    for resource, pairs in topology.pairs_by_resource[cq].items():
        best = 0
        for fr in pairs:
            free = available(node, fr, usage)
            if free > best:
                best = free
        out[resource] = best
    return out


def potential(node: Node, fr: FR) -> int:
    """The most of ``fr`` a node could ever use: what `available` gives on an empty cluster."""
    cached = node.potentials.get(fr)
    if cached is not None:
        return cached
    parent = node.parent
    if parent is None:
        value = node.subtree.get(fr, 0)
    else:
        g = node.guaranteed.get(fr, 0)
        from_parent = potential(parent, fr)
        limit = node.borrow_limit.get(fr)
        if limit is not None:
            from_parent = min(from_parent, node.subtree.get(fr, 0) - g + limit)
        value = g + max(0, from_parent)
    node.potentials[fr] = value
    return value


def occupy_devices(devices: dict[str, list[int]], flavors: Mapping[str, ResourceFlavor], admission: Admission,
                   sign: int) -> None:
    """Take (``sign`` -1) or give back (+1) the GPU slots named in an admission's placements."""
    for ps in admission.pod_sets:
        for placement in ps.gpus:
            flavor_name = next((f for r, f in ps.flavors.items() if r in GPU_RESOURCES), None)
            if flavor_name is None or flavor_name not in devices:
                continue
            free = devices[flavor_name]
            flavor = flavors[flavor_name]
            slots_per_gpu = flavor.sharing.slots_per_gpu if flavor.sharing else 1
            per_device = slots_needed(placement.share, slots_per_gpu)
            for d in placement.devices:
                free[d] += sign * per_device


def slots_needed(share: int, slots_per_gpu: int) -> int:
    """Slots of one GPU that a share (milli-GPU, at most 1000) occupies, rounded up."""
    if share >= MILLI:
        return slots_per_gpu
    return max(1, -(-share * slots_per_gpu // MILLI))
