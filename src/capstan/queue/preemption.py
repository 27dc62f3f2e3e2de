"""Choosing preemption victims, simulated on the engine's scratch copy of usage (Kueue semantics).

Candidates are admitted workloads that share a flavor-resource with the preemptor:
* in its own ClusterQueue, by ``withinClusterQueue`` (``LowerPriority`` / ``LowerOrNewerEqualPriority``);
* in other ClusterQueues of the cohort tree that are *borrowing* that flavor-resource, by
  ``reclaimWithinCohort`` while the preemptor stays within its nominal quota, or by ``borrowWithinCohort``
  (lower priority, at most ``maxPriorityThreshold``) when it has to borrow;
* with fair sharing, other queues' workloads when the preemptor is within its nominal quota, or when its
  dominant share after admission is at most the victim queue's share after the eviction *and* strictly below
  that queue's share before it. That rules out oscillation: to win the workload back, the victim's queue would
  need share_B_before <= share_A_before <= share_A_after < share_B_before, a contradiction.

Victims are taken greedily (other queues first, then lowest priority, then most recently admitted) until the
preemptor fits, then any victim whose eviction turns out unnecessary is put back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from capstan.queue.assign import fits, place_gpus
from capstan.queue.model import (
    FR,
    Admission,
    ClusterQueue,
    PodSetAssignment,
    PreemptWithin,
    Workload,
)
from capstan.queue.quantity import GPU_RESOURCES
from capstan.queue.state import ClusterState, Node, Topology, add_usage, available, occupy_devices


@dataclass(frozen=True, slots=True)
class Victim:
    """An admitted workload chosen for eviction and the Kueue-style reason."""

    admission: Admission
    reason: str


def _allowed(policy: PreemptWithin, victim: Workload, preemptor: Workload) -> bool:
    if policy is PreemptWithin.ANY:
        return True
    if policy is PreemptWithin.LOWER_PRIORITY:
        return victim.priority < preemptor.priority
    if policy is PreemptWithin.LOWER_OR_NEWER_EQUAL_PRIORITY:
        return victim.priority < preemptor.priority or (
            victim.priority == preemptor.priority and victim.created > preemptor.created)
    return False


def dominant_share(topology: Topology, node: Node, table: Mapping[FR, int]) -> float:
    """Dominant resource share of a ClusterQueue: its borrowed amount over the tree's pool, divided by weight."""
    pool = topology.root_pool[node.root.name]
    borrowed: dict[str, int] = {}
    for fr, used in table.items():
        over = used - node.subtree.get(fr, 0)
        if over > 0:
            borrowed[fr[1]] = borrowed.get(fr[1], 0) + over
    share = 0.0
    for resource, amount in borrowed.items():
        total = pool.get(resource, 0)
        share = max(share, amount / total if total else float("inf"))
    if share == 0.0:
        return 0.0
    return share / node.weight if node.weight > 0 else float("inf")


def _with(table: Mapping[FR, int], delta: Mapping[FR, int], sign: int) -> dict[FR, int]:
    out = dict(table)
    for fr, q in delta.items():
        out[fr] = out.get(fr, 0) + sign * q
    return out


def find_victims(topology: Topology, state: ClusterState, cq: ClusterQueue, node: Node, wl: Workload,
                 needed: Mapping[FR, int], pod_sets: Sequence[PodSetAssignment], usage: list[dict[FR, int]],
                 devices: Mapping[str, list[int]], skip: set[str],
                 fair_sharing: bool) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]] | None:
    """Victims that let ``wl`` fit with ``needed`` usage, with the usage and devices after their eviction.

    ``skip`` holds admissions already evicted in this cycle; ``state.evicting`` those whose eviction is under
    way (counted as gone, never chosen again). Returns None when no allowed set of victims suffices.
    """
    pol = cq.preemption
    flavors = topology.flavors
    work = topology.copy_tree(node, usage)
    dev = {k: list(v) for k, v in devices.items()} if devices else {}
    gone = skip | state.evicting
    for wid in state.evicting:
        adm = state.admissions.get(wid)
        if adm is not None and wid not in skip:
            add_usage(topology.cq_nodes[adm.cluster_queue], work, adm.usage, -1)
            occupy_devices(dev, flavors, adm, 1)

    def placements_ok(d: dict[str, list[int]]) -> bool:
        trial = {k: list(v) for k, v in d.items()}
        for ps_assign, ps in zip(pod_sets, wl.pod_sets, strict=True):
            for r, flavor_name in ps_assign.flavors.items():
                if r in GPU_RESOURCES and flavor_name in trial and \
                        place_gpus(ps, flavors[flavor_name], trial[flavor_name], r) is None:
                    return False
        return True

    def fits_now(table: list[dict[FR, int]], d: dict[str, list[int]], allow_borrow: bool) -> bool:
        return fits(node, needed, table, allow_borrow=allow_borrow) and placements_ok(d)

    if state.evicting and fits_now(work, dev, True):
        return [], work, dev

    # Queues above quota on a needed flavor-resource, most borrowed first: only they can lose workloads to
    # another queue, and an eviction never pushes a queue above quota, so the list holds for the whole search.
    borrowers: list[tuple[int, str]] = []
    if node.parent is not None:
        for name in topology.tree_cqs[node.root.name]:
            other = topology.cq_nodes[name]
            table = work[other.idx]
            over = sum(max(0, table.get(fr, 0) - other.subtree.get(fr, 0)) for fr in needed)
            if name != cq.name and over > 0:
                borrowers.append((-over, name))
    borrowers.sort()
    other_names = [name for _over, name in borrowers]

    # A queue keeps losing workloads while it is above quota, so it frees at most its excess plus one workload.
    caps = {name: {fr: max(0, work[topology.cq_nodes[name].idx].get(fr, 0)
                           - topology.cq_nodes[name].subtree.get(fr, 0)) + state.largest(name, fr)
                   for fr in needed} for name in other_names}
    stopped: set[str] = set()

    def own(policy: PreemptWithin) -> Group:
        return Group(state, [cq.name], lambda p: _priority_allowed(policy, p, wl.priority), policy, wl, gone,
                     "InClusterQueue", None, stopped)

    def others(test: Callable[[int], bool], policy: PreemptWithin, reason: str) -> Group:
        return Group(state, other_names, test, policy, wl, gone, reason, caps, stopped)

    attempts: list[tuple[list[Group], bool]] = []
    within = pol.within_cluster_queue
    if fair_sharing:
        if other_names:
            attempts.append(([others(lambda p: True, PreemptWithin.ANY, "InCohortFairSharing"), own(within)], True))
    else:
        within_nominal = all(q <= node.subtree.get(fr, 0) for fr, q in needed.items())
        reclaim = pol.reclaim_within_cohort
        if within_nominal and other_names and reclaim is not PreemptWithin.NEVER:
            attempts.append(([others(lambda p: _priority_allowed(reclaim, p, wl.priority), reclaim,
                                     "InCohortReclamation"), own(within)], False))
        if other_names and pol.borrow_within_cohort is not PreemptWithin.NEVER:
            limit = pol.borrow_max_priority_threshold
            attempts.append(([others(lambda p: p < wl.priority and (limit is None or p <= limit),
                                     PreemptWithin.LOWER_PRIORITY, "InCohortReclaimWhileBorrowing"), own(within)],
                             True))
        if within is not PreemptWithin.NEVER:
            attempts.append(([own(within)], True))
    for groups, allow_borrow in attempts:
        stopped.clear()
        result = _greedy(topology, node, needed, groups, work, dev, allow_borrow, fair_sharing, fits_now)
        if result is not None:
            return result
    return None


def _priority_allowed(policy: PreemptWithin, victim_priority: int, preemptor_priority: int) -> bool:
    """Whether a priority level may hold victims under ``policy`` (equal levels are filtered per workload)."""
    if policy is PreemptWithin.ANY:
        return True
    if policy is PreemptWithin.LOWER_PRIORITY:
        return victim_priority < preemptor_priority
    if policy is PreemptWithin.LOWER_OR_NEWER_EQUAL_PRIORITY:
        return victim_priority <= preemptor_priority
    return False


class Group:
    """Candidates from some ClusterQueues, walked lazily: lowest priority first, newest first within a level."""

    def __init__(self, state: ClusterState, names: list[str], level_ok: Callable[[int], bool],
                 policy: PreemptWithin, wl: Workload, gone: set[str], reason: str,
                 caps: Mapping[str, Mapping[FR, int]] | None, stopped: set[str]) -> None:
        self.state = state
        self.names = names
        self.level_ok = level_ok
        self.policy = policy
        self.wl = wl
        self.gone = gone
        self.reason = reason
        self.caps = caps
        self.stopped = stopped

    def freeable(self, fr: FR) -> int:
        """An upper bound on what evicting every candidate would free of ``fr``."""
        total = 0
        for name in self.names:
            mine = sum(table.get(fr, 0) for prio, table in self.state.priority_usage[name].items()
                       if self.level_ok(prio))
            total += mine if self.caps is None else min(mine, self.caps[name][fr])
        return total

    def __iter__(self) -> Iterator[tuple[Admission, str]]:
        levels = sorted({p for name in self.names for p in self.state.by_priority[name] if self.level_ok(p)})
        for prio in levels:
            for name in self.names:
                table = self.state.by_priority[name].get(prio)
                if not table or name in self.stopped:
                    continue
                for adm in reversed(table.values()):
                    if name in self.stopped:
                        break
                    if adm.id in self.gone or not _allowed(self.policy, adm.workload, self.wl):
                        continue
                    yield adm, self.reason


def _greedy(topology: Topology, node: Node, needed: Mapping[FR, int],
            groups: list[Group], usage: list[dict[FR, int]], devices: dict[str, list[int]],
            allow_borrow: bool, fair_sharing: bool,
            fits_now: Callable[[list[dict[FR, int]], dict[str, list[int]], bool], bool],
            ) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]] | None:
    # Evicting a workload frees at most its own usage, so the preemptor cannot fit before the freed amounts
    # cover what is missing: check that bound first, and only call the full fit test once it is met.
    missing = {fr: q - available(node, fr, usage) for fr, q in needed.items()}
    mine = usage[node.idx]
    over_nominal = {fr: mine.get(fr, 0) + q - node.subtree.get(fr, 0) for fr, q in needed.items()}
    if any(sum(g.freeable(fr) for g in groups) < missing[fr] for fr in needed):
        return None
    if not allow_borrow and any(sum(g.freeable(fr) for g in groups if g.caps is None) < over_nominal[fr]
                                for fr in needed):
        return None
    work = topology.copy_tree(node, usage)
    dev = {k: list(v) for k, v in devices.items()} if devices else {}
    flavors = topology.flavors
    removed: list[tuple[Admission, str]] = []
    freed = dict.fromkeys(needed, 0)
    freed_own = dict.fromkeys(needed, 0)
    freed_by_cq: dict[str, dict[FR, int]] = {}
    applied = 0
    fitted = False
    stopped = groups[0].stopped
    for adm, reason in itertools.chain.from_iterable(groups):
        victim_node = topology.cq_nodes[adm.cluster_queue]
        mine_freed = freed_by_cq.setdefault(adm.cluster_queue, {})
        if victim_node is not node:
            base = usage[victim_node.idx]
            borrowing = any(base.get(fr, 0) - mine_freed.get(fr, 0) > victim_node.subtree.get(fr, 0)
                            for fr in adm.usage if fr in needed)
            if not borrowing:
                stopped.add(adm.cluster_queue)
                continue
            if fair_sharing:
                own_now = _with(usage[node.idx], freed_own, -1)
                within = all(own_now.get(fr, 0) + q <= node.subtree.get(fr, 0) for fr, q in needed.items())
                if not within:
                    mine_after = dominant_share(topology, node, _with(own_now, needed, 1))
                    theirs_now = _with(base, mine_freed, -1)
                    theirs_before = dominant_share(topology, victim_node, theirs_now)
                    theirs_after = dominant_share(topology, victim_node, _with(theirs_now, adm.usage, -1))
                    if not (mine_after <= theirs_after and mine_after < theirs_before):
                        continue
        removed.append((adm, reason))
        for fr, amount in adm.usage.items():
            mine_freed[fr] = mine_freed.get(fr, 0) + amount
        for fr in needed:
            amount = adm.usage.get(fr, 0)
            freed[fr] += amount
            if victim_node is node:
                freed_own[fr] += amount
        if any(freed[fr] < missing[fr] for fr in needed):
            continue
        if not allow_borrow and any(freed_own[fr] < over_nominal[fr] for fr in needed):
            continue
        for victim, _r in removed[applied:]:
            add_usage(topology.cq_nodes[victim.cluster_queue], work, victim.usage, -1)
            occupy_devices(dev, flavors, victim, 1)
        applied = len(removed)
        if fits_now(work, dev, allow_borrow):
            fitted = True
            break
    if not fitted:
        return None
    # Put back every victim that turns out not to be needed, newest choice first.
    kept: list[tuple[Admission, str]] = [removed[-1]]
    for adm, reason in reversed(removed[:-1]):
        victim_node = topology.cq_nodes[adm.cluster_queue]
        add_usage(victim_node, work, adm.usage, 1)
        occupy_devices(dev, flavors, adm, -1)
        if fits_now(work, dev, allow_borrow):
            continue
        add_usage(victim_node, work, adm.usage, -1)
        occupy_devices(dev, flavors, adm, 1)
        kept.append((adm, reason))
    return [Victim(a, r) for a, r in reversed(kept)], work, dev
