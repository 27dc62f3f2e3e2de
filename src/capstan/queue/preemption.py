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

Whether victims exist is decided first, over the whole set of candidates (decision 0790): every allowed
candidate is taken out at once, another queue's only while that queue still borrows when they are taken in
Kueue's own order (lowest priority first, then the newest at its level), an order that time does not change; if
the preemptor does not fit then, the search is refused. Otherwise victims are taken greedily (lowest priority
first; within a priority level, those that lose least work first: GPUs times the time since their last
checkpoint, see `ClusterState.lost_work`; ties go to other queues first, then the most recently admitted) until
the preemptor fits, then any victim whose eviction turns out unnecessary is put back. Should that order stop
taking from a lender too early, the whole set is taken and put back, most lost work first, to what is needed.
So whether a search succeeds depends on time only through minimum run times: a workload that has run less than
its ``min_run_seconds`` is never a victim.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from capstan.queue.assign import fits, place_gpus
from capstan.queue.model import (
    FR,
    Admission,
    ClusterQueue,
    PodSetAssignment,
    PreemptWithin,
    ResourceFlavor,
    Workload,
)
from capstan.queue.state import ClusterState, Node, Topology, add_usage, available, occupy_devices
from capstan.resources.quantity import GPU_RESOURCES


@dataclass(frozen=True, slots=True)
class Victim:
    """An admitted workload chosen for eviction and the Kueue-style reason."""

    admission: Admission
    reason: str


@dataclass(frozen=True, slots=True)
class SearchReport:
    """How a fruitless victim search was refused, for `still_futile`.

    ``robust`` is set when every attempt was refused by one of the first bounds (the own queue's excess over
    nominal, or the usage the whole cohort tree holds at the levels the attempt may take), with nothing being
    evicted. ``refusals`` holds one entry per attempt: its level test (None for the own queue only), whether it
    was the own-queue bound, the flavor-resource that fell short and by how much. ``within_ok`` tests the levels
    the own queue may lose. ``grown`` is how much each bound has grown through admissions since.

    A search refused otherwise (not ``robust``: the whole candidate set did not make room) stands, with nothing
    changed in the cohort tree, until ``until``: the first end of a minimum run time that it passed over.
    """

    robust: bool = False
    refusals: tuple[tuple[Callable[[int], bool] | None, bool, FR, int], ...] = ()
    within_ok: Callable[[int], bool] | None = None
    grown: tuple[int, ...] = ()
    until: float = math.inf


def still_futile(report: SearchReport, cq: str,
                 admitted: Sequence[tuple[str, int, Mapping[FR, int]]]) -> SearchReport | None:
    """The report of a search refused as ``report`` says, once these admissions (ClusterQueue, priority, usage)
    have joined its cohort tree with nothing else changed; None when the search might now succeed.

    Admissions only add usage, so what is missing never shrinks; each bound grows by at most the usage of the new
    workloads it may take: at the levels its attempt allows anywhere, or the own queue's levels in ``cq``. A
    refusal that is not ``robust`` stands only with no admission at all (one may make a lender borrow).
    """
    if not report.robust:
        return None if admitted else report
    within_ok = report.within_ok
    grown = list(report.grown) or [0] * len(report.refusals)
    for i, (level_ok, own_only, fr, short) in enumerate(report.refusals):
        for name, priority, usage in admitted:
            if (name == cq and within_ok is not None and within_ok(priority)) or (
                    not own_only and level_ok is not None and level_ok(priority)):
                grown[i] += usage.get(fr, 0)
        if grown[i] >= short:
            return None
    return SearchReport(True, report.refusals, within_ok, tuple(grown))


def protection_end(adm: Admission) -> float:
    """The first instant at which ``adm`` has run its ``min_run_seconds`` (as the victim search tests it)."""
    least = adm.workload.min_run_seconds
    end = adm.admitted_at + least
    while end - adm.admitted_at < least:  # rounding: the sum may fall a little short
        end = math.nextafter(end, math.inf)
    return end


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


_NO_CAP = 1 << 62
"""A cap that never binds (`find_victims` takes the smaller of it and what the queue holds)."""


def find_victims(topology: Topology, state: ClusterState, cq: ClusterQueue, node: Node, wl: Workload,
                 needed: Mapping[FR, int], pod_sets: Sequence[PodSetAssignment], usage: list[dict[FR, int]],
                 devices: Mapping[str, list[int]], skip: set[str], fair_sharing: bool, *,
                 report: list[SearchReport] | None = None, now: float = 0.0,
                 protected: dict[str, float] | None = None,
                 ) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]] | None:
    """Victims that let ``wl`` fit with ``needed`` usage, with the usage and devices after their eviction.

    ``skip`` holds admissions already evicted in this cycle; ``state.evicting`` those whose eviction is under
    way (counted as gone, never chosen again). Returns None when no allowed set of victims suffices; then, when
    the refusal is one that `still_futile` can reason about, a `SearchReport` is appended to ``report``.
    ``now`` is the cycle's time, for lost work and minimum run times; candidates passed over because they have
    not yet run their minimum time are added to ``protected``, with the first instant they may be victims.
    """
    pol = cq.preemption
    flavors = topology.flavors
    evicting = state.evicting
    if evicting:
        work = topology.copy_tree(node, usage)
        dev = {k: list(v) for k, v in devices.items()} if devices else {}
        gone = skip | evicting
        root = node.root
        for wid in evicting:
            adm = state.admissions.get(wid)
            if adm is not None and wid not in skip:
                victim_node = topology.cq_nodes[adm.cluster_queue]
                # Only this tree's tables are private copies; other trees do not bear on this search.
                if victim_node.root is root:
                    add_usage(victim_node, work, adm.usage, -1)
                occupy_devices(dev, flavors, adm, 1)
    else:
        # Nothing to take out first: read the caller's tables directly (`_greedy` copies before it changes any).
        work = usage
        dev = dict(devices)
        gone = skip

    def fits_now(table: list[dict[FR, int]], d: dict[str, list[int]], allow_borrow: bool) -> bool:
        return fits(node, needed, table, allow_borrow=allow_borrow) and (
            not d or _placements_ok(flavors, pod_sets, wl, d))

    if evicting and fits_now(work, dev, True):
        return [], work, dev

    # What is missing, and how far above nominal the preemptor would be: the same for every attempt.
    mine = work[node.idx]
    subtree = node.subtree
    missing: dict[FR, int] = {}
    over_nominal: dict[FR, int] = {}
    within_nominal = True
    for fr, q in needed.items():
        nominal = subtree.get(fr, 0)
        missing[fr] = q - available(node, fr, work)
        over_nominal[fr] = mine.get(fr, 0) + q - nominal
        if q > nominal:
            within_nominal = False

    # Kueue's attempts, in order: (level test for other queues' candidates or None for own queue only, policy,
    # reason, whether the preemptor may borrow). Every attempt also takes candidates from the own queue.
    wp = wl.priority
    within = pol.within_cluster_queue
    specs: list[tuple[Callable[[int], bool] | None, PreemptWithin, str, bool]] = []
    if node.parent is not None:
        if fair_sharing:
            specs.append((_any_level, PreemptWithin.ANY, "InCohortFairSharing", True))
        else:
            reclaim = pol.reclaim_within_cohort
            if reclaim is not PreemptWithin.NEVER and within_nominal:
                specs.append((lambda p: _priority_allowed(reclaim, p, wp), reclaim, "InCohortReclamation", False))
            if pol.borrow_within_cohort is not PreemptWithin.NEVER:
                limit = pol.borrow_max_priority_threshold
                specs.append((lambda p: p < wp and (limit is None or p <= limit), PreemptWithin.LOWER_PRIORITY,
                              "InCohortReclaimWhileBorrowing", True))

    if not fair_sharing and within is not PreemptWithin.NEVER:
        specs.append((None, within, "InClusterQueue", True))
    if not specs:
        if report is not None and not evicting:
            report.append(SearchReport(True))
        return None

    # Bounds: evicting a workload frees at most its own usage, so the preemptor cannot fit before the freed
    # amounts cover what is missing (and, without borrowing, its own queue's excess over nominal). Most searches
    # end here. First a bound from the whole tree's usage per priority, which costs nothing per queue: the other
    # queues can free at most what they all hold at the levels an attempt may take.
    levels_of = state.priority_usage
    own_levels = levels_of[cq.name]
    own_free = dict.fromkeys(needed, 0)
    for p, t in own_levels.items():
        if _priority_allowed(within, p, wp):
            for fr in needed:
                own_free[fr] += t.get(fr, 0)
    tree_levels = state.tree_priority_usage[node.root.name]
    refusals: list[tuple[Callable[[int], bool] | None, bool, FR, int]] = []
    for level_ok, _policy, _reason, allow_borrow in specs:
        if not allow_borrow:
            short = next(((fr, q - own_free[fr]) for fr, q in over_nominal.items() if own_free[fr] < q), None)
            if short is not None:
                refusals.append((None, True, short[0], short[1]))
                continue
        bound = dict(own_free)
        if level_ok is not None:
            for p, t in tree_levels.items():
                if level_ok(p):
                    for fr in needed:
                        bound[fr] += t.get(fr, 0)
            for p, t in own_levels.items():
                if level_ok(p):
                    for fr in needed:
                        bound[fr] -= t.get(fr, 0)
        short = next(((fr, q - bound[fr]) for fr, q in missing.items() if bound[fr] < q), None)
        if short is None:
            break
        refusals.append((level_ok, False, short[0], short[1]))
    else:
        if report is not None and not evicting:
            report.append(SearchReport(True, tuple(refusals), lambda p: _priority_allowed(within, p, wp)))
        return None

    # Queues above quota on a needed flavor-resource, most borrowed first: only they can lose workloads to
    # another queue, and an eviction never pushes a queue above quota, so the list holds for the whole search.
    # A queue loses workloads while it borrows a needed flavor-resource they use (`_rule`). When it borrows only
    # one, every workload it loses uses that one, so of it the queue frees at most its excess plus one workload;
    # of any other resource (and of every resource when it borrows several) it may free all it holds.
    borrowers: list[tuple[int, str]] = []
    caps: dict[str, dict[FR, int]] = {}
    if any(level_ok is not None for level_ok, _p, _r, _b in specs):
        cq_nodes = topology.cq_nodes
        for name in topology.tree_cqs[node.root.name]:
            if name == cq.name:
                continue
            other = cq_nodes[name]
            table = work[other.idx]
            over = 0
            borrowed: list[FR] = []
            for fr in needed:
                above = table.get(fr, 0) - other.subtree.get(fr, 0)
                if above > 0:
                    over += above
                    borrowed.append(fr)
            if over > 0:
                borrowers.append((-over, name))
                cap = dict.fromkeys(needed, _NO_CAP)
                if len(borrowed) == 1:
                    only = borrowed[0]
                    cap[only] = over + state.largest(name, only)
                caps[name] = cap
        if not borrowers:
            specs = [spec for spec in specs if spec[0] is None]
    borrowers.sort()
    other_names = [name for _over, name in borrowers]

    # Then the exact bounds: only queues above quota lose workloads to another queue, each at most its cap.
    stopped: set[str] = set()
    own: Group | None = None
    for level_ok, policy, reason, allow_borrow in specs:
        if not allow_borrow and any(own_free[fr] < q for fr, q in over_nominal.items()):
            continue
        bound = dict(own_free)
        bounds = {cq.name: own_free}
        if level_ok is not None:
            for name in other_names:
                cap = caps[name]
                tables = [t for p, t in levels_of[name].items() if level_ok(p)]
                theirs: dict[FR, int] = {}
                for fr in needed:
                    total = 0
                    for t in tables:
                        total += t.get(fr, 0)
                    theirs[fr] = least = min(total, cap[fr])
                    bound[fr] += least
                bounds[name] = theirs
        if any(bound[fr] < q for fr, q in missing.items()):
            continue
        if own is None:
            own = Group(state, [cq.name], lambda p: _priority_allowed(within, p, wp), within, wl, gone,
                        "InClusterQueue", stopped, now, protected)
        groups = [own] if level_ok is None else \
            [Group(state, other_names, level_ok, policy, wl, gone, reason, stopped, now, protected), own]
        whole = _whole(topology, node, needed, missing, over_nominal, groups, bound, bounds, work, dev,
                       allow_borrow, fair_sharing, fits_now)
        if whole is None:
            continue
        stopped.clear()
        result = _greedy(topology, node, needed, missing, over_nominal, groups, work, dev, allow_borrow,
                         fair_sharing, fits_now)
        if result is None:
            # The least-lost-work order stopped taking from a lender before the whole set's order did.
            result = _trimmed(topology, node, needed, groups, whole, work, dev, allow_borrow, fits_now)
        return result
    return None


def _any_level(priority: int) -> bool:
    del priority
    return True


def _placements_ok(flavors: Mapping[str, ResourceFlavor], pod_sets: Sequence[PodSetAssignment], wl: Workload,
                   devices: Mapping[str, list[int]]) -> bool:
    """Whether every pod's GPUs can be placed on the tracked devices ``devices`` (left unchanged)."""
    trial = {k: list(v) for k, v in devices.items()}
    for ps_assign, ps in zip(pod_sets, wl.pod_sets, strict=True):
        for r, flavor_name in ps_assign.flavors.items():
            if r in GPU_RESOURCES and flavor_name in trial and \
                    place_gpus(ps, flavors[flavor_name], trial[flavor_name], r) is None:
                return False
    return True


def _apply(topology: Topology, usage: list[dict[FR, int]], devices: dict[str, list[int]],
           admissions: Sequence[tuple[Admission, str]], sign: int) -> None:
    """Add (``sign`` 1) or take out (-1) the usage and GPU slots of admissions, summed per ClusterQueue."""
    per_queue: dict[str, dict[FR, int]] = {}
    for adm, _reason in admissions:
        total = per_queue.setdefault(adm.cluster_queue, {})
        for fr, amount in adm.usage.items():
            total[fr] = total.get(fr, 0) + amount
        if devices:
            occupy_devices(devices, topology.flavors, adm, -sign)
    for name, total in per_queue.items():
        add_usage(topology.cq_nodes[name], usage, total, sign)


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
    """Candidates from some ClusterQueues, walked lazily per priority level: lowest priority first and, within a
    level, least lost work first (then in the queues' order, most recently admitted first)."""

    def __init__(self, state: ClusterState, names: list[str], level_ok: Callable[[int], bool],
                 policy: PreemptWithin, wl: Workload, gone: set[str], reason: str, stopped: set[str], now: float = 0.0,
                 protected: dict[str, float] | None = None) -> None:
        self.state = state
        self.names = names
        self.level_ok = level_ok
        self.policy = policy
        self.wl = wl
        self.gone = gone
        self.reason = reason
        self.stopped = stopped
        self.now = now
        self.protected = protected

    def __iter__(self) -> Iterator[tuple[Admission, str]]:
        state = self.state
        now = self.now
        by_priority = state.by_priority
        gone = self.gone
        stopped = self.stopped
        policy = self.policy
        wl = self.wl
        levels = sorted({p for name in self.names for p in by_priority[name] if self.level_ok(p)})
        for prio in levels:
            # The level test has already decided `_allowed` for every workload of the level unless equal
            # priorities are compared by creation time.
            check = not (policy is PreemptWithin.ANY or (policy is PreemptWithin.LOWER_PRIORITY and prio < wl.priority))
            found: list[tuple[float, int, int, Admission]] = []
            for rank, name in enumerate(self.names):
                table = by_priority[name].get(prio)
                if not table or name in stopped:
                    continue
                for order, adm in enumerate(table.values()):
                    victim = adm.workload
                    if victim.id in gone or (check and not _allowed(policy, victim, wl)):
                        continue
                    if victim.min_run_seconds and now - adm.admitted_at < victim.min_run_seconds:
                        if self.protected is not None:
                            self.protected[victim.id] = protection_end(adm)
                        continue
                    found.append((state.lost_work(adm, now), rank, -order, adm))
            found.sort(key=_victim_order)
            for _lost, _rank, _order, adm in found:
                if adm.cluster_queue in self.stopped:
                    continue
                yield adm, self.reason

    def canonical(self, name: str) -> Iterator[Admission]:
        """The candidates of ClusterQueue ``name`` in an order that time does not change (Kueue's): lowest priority
        first, then the newest at its level first. Those within their minimum run time are recorded as they are
        met, not yielded."""
        now = self.now
        gone = self.gone
        policy = self.policy
        wl = self.wl
        protected = self.protected
        levels = self.state.by_priority[name]
        for prio in sorted(p for p in levels if self.level_ok(p)):
            check = not (policy is PreemptWithin.ANY or (policy is PreemptWithin.LOWER_PRIORITY and prio < wl.priority))
            for adm in reversed(levels[prio].values()):
                victim = adm.workload
                if victim.id in gone or (check and not _allowed(policy, victim, wl)):
                    continue
                if victim.min_run_seconds and now - adm.admitted_at < victim.min_run_seconds:
                    if protected is not None:
                        protected[victim.id] = protection_end(adm)
                    continue
                yield adm


def _victim_order(entry: tuple[float, int, int, Admission]) -> tuple[float, int, int]:
    return entry[0], entry[1], entry[2]


_TAKE, _SKIP, _STOP = 0, 1, 2


def _rule(topology: Topology, node: Node, needed: Mapping[FR, int], usage: list[dict[FR, int]], adm: Admission,
          victim_node: Node, mine_freed: Mapping[FR, int], freed_own: Mapping[FR, int], fair_sharing: bool) -> int:
    """Whether another queue's candidate may go, given what the search took from its queue (``mine_freed``) and
    from the preemptor's (``freed_own``): `_TAKE`; `_STOP` once its queue no longer borrows a needed
    flavor-resource the candidate uses (the queue loses nothing more); `_SKIP` when fair sharing spares it."""
    base = usage[victim_node.idx]
    borrowing = False
    for fr in adm.usage:
        if fr in needed and base.get(fr, 0) - mine_freed.get(fr, 0) > victim_node.subtree.get(fr, 0):
            borrowing = True
            break
    if not borrowing:
        return _STOP
    if fair_sharing:
        own_now = _with(usage[node.idx], freed_own, -1)
        if not all(own_now.get(fr, 0) + q <= node.subtree.get(fr, 0) for fr, q in needed.items()):
            mine_after = dominant_share(topology, node, _with(own_now, needed, 1))
            theirs_now = _with(base, mine_freed, -1)
            theirs_before = dominant_share(topology, victim_node, theirs_now)
            theirs_after = dominant_share(topology, victim_node, _with(theirs_now, adm.usage, -1))
            if not (mine_after <= theirs_after and mine_after < theirs_before):
                return _SKIP
    return _TAKE


def _whole(topology: Topology, node: Node, needed: Mapping[FR, int], missing: Mapping[FR, int],
           over_nominal: Mapping[FR, int], groups: list[Group], bound: Mapping[FR, int],
           bounds: Mapping[str, Mapping[FR, int]], usage: list[dict[FR, int]], devices: dict[str, list[int]],
           allow_borrow: bool, fair_sharing: bool,
           fits_now: Callable[[list[dict[FR, int]], dict[str, list[int]], bool], bool],
           ) -> list[tuple[Admission, str]] | None:
    """Every candidate the rules let go when each queue's are taken in `Group.canonical` order, or None when the
    preemptor does not fit even with all of them gone.

    The rules judge each queue on its own (`_rule`: what was taken from it, and nothing from the preemptor's
    queue, whose candidates come last in the greedy order), so the queues may be visited in any order: the
    preemptor's first, then the others. ``bounds`` holds at most what each can lose (``bound`` their sum): as
    each queue is visited its bound gives way to what it loses, and the search is refused as soon as that cannot
    make room. Of the candidates within their minimum run time, only those met before a queue stops losing
    workloads, in the queues visited, are recorded: no other could change the refusal."""
    cq_nodes = topology.cq_nodes
    taken: list[tuple[Admission, str]] = []
    left = dict(bound)  # the freed amounts plus the bounds of the queues not visited yet
    freed_own = dict.fromkeys(needed, 0)
    none = dict.fromkeys(needed, 0)
    for group in reversed(groups):
        reason = group.reason
        for name in group.names:
            victim_node = cq_nodes[name]
            own = victim_node is node
            mine_freed: dict[FR, int] = {}
            for adm in group.canonical(name):
                if not own:
                    verdict = _rule(topology, node, needed, usage, adm, victim_node, mine_freed, none, fair_sharing)
                    if verdict == _STOP:
                        break
                    if verdict == _SKIP:
                        continue
                taken.append((adm, reason))
                for fr, amount in adm.usage.items():
                    mine_freed[fr] = mine_freed.get(fr, 0) + amount
                    if own and fr in freed_own:
                        freed_own[fr] += amount
            most = bounds[name]
            for fr in needed:
                left[fr] += mine_freed.get(fr, 0) - most[fr]
            if any(left[fr] < q for fr, q in missing.items()) or (
                    own and not allow_borrow and any(freed_own[fr] < q for fr, q in over_nominal.items())):
                return None
    work, dev = _without(topology, node, usage, devices, taken)
    return taken if fits_now(work, dev, allow_borrow) else None


def _without(topology: Topology, node: Node, usage: list[dict[FR, int]], devices: Mapping[str, list[int]],
             victims: Sequence[tuple[Admission, str]]) -> tuple[list[dict[FR, int]], dict[str, list[int]]]:
    """Copies of ``node``'s cohort tree usage and of the devices with ``victims`` evicted."""
    work = topology.copy_tree(node, usage)
    dev = {k: list(v) for k, v in devices.items()} if devices else {}
    _apply(topology, work, dev, victims, -1)
    return work, dev


def _trimmed(topology: Topology, node: Node, needed: Mapping[FR, int], groups: list[Group],
             whole: list[tuple[Admission, str]], usage: list[dict[FR, int]], devices: dict[str, list[int]],
             allow_borrow: bool, fits_now: Callable[[list[dict[FR, int]], dict[str, list[int]], bool], bool],
             ) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]]:
    """The whole set (which fits) less every victim not needed, put back in the greedy order reversed: the
    highest priority and most lost work first. A subset of the whole set keeps to the borrowing rules."""
    state, now = groups[0].state, groups[0].now
    own = node.name
    ordered = sorted(whole, key=lambda e: (e[0].cluster_queue == own, e[0].workload.priority,
                                           state.lost_work(e[0], now)))
    work, dev = _without(topology, node, usage, devices, ordered)
    return _put_back(topology, node, needed, usage, work, dev, ordered, [], allow_borrow, fits_now)


def _greedy(topology: Topology, node: Node, needed: Mapping[FR, int], missing: Mapping[FR, int],
            over_nominal: Mapping[FR, int], groups: list[Group], usage: list[dict[FR, int]],
            devices: dict[str, list[int]], allow_borrow: bool, fair_sharing: bool,
            fits_now: Callable[[list[dict[FR, int]], dict[str, list[int]], bool], bool],
            ) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]] | None:
    # The caller has checked the bounds; the fit test runs once the freed amounts meet them. Usage tables depend
    # only on what each ClusterQueue holds (a parent is charged what each child uses above its guarantee), not
    # on the order changes arrive in, so evictions are applied to the copy one queue at a time.
    work = topology.copy_tree(node, usage)
    dev = {k: list(v) for k, v in devices.items()} if devices else {}
    cq_nodes = topology.cq_nodes
    removed: list[tuple[Admission, str]] = []
    freed = dict.fromkeys(needed, 0)
    freed_own = dict.fromkeys(needed, 0)
    freed_by_cq: dict[str, dict[FR, int]] = {}
    applied = 0
    fitted = False
    stopped = groups[0].stopped
    for adm, reason in itertools.chain.from_iterable(groups):
        victim_node = cq_nodes[adm.cluster_queue]
        mine_freed = freed_by_cq.setdefault(adm.cluster_queue, {})
        if victim_node is not node:
            verdict = _rule(topology, node, needed, usage, adm, victim_node, mine_freed, freed_own, fair_sharing)
            if verdict != _TAKE:
                if verdict == _STOP:
                    stopped.add(adm.cluster_queue)
                continue
        removed.append((adm, reason))
        for fr, amount in adm.usage.items():
            mine_freed[fr] = mine_freed.get(fr, 0) + amount
        short = False
        for fr in needed:
            amount = adm.usage.get(fr, 0)
            freed[fr] += amount
            if victim_node is node:
                freed_own[fr] += amount
            if freed[fr] < missing[fr] or (not allow_borrow and freed_own[fr] < over_nominal[fr]):
                short = True
        if short:
            continue
        _apply(topology, work, dev, removed[applied:], -1)
        applied = len(removed)
        if fits_now(work, dev, allow_borrow):
            fitted = True
            break
    if not fitted:
        return None
    # Put back every victim that turns out not to be needed, newest choice first.
    return _put_back(topology, node, needed, usage, work, dev, removed[:-1], [removed[-1]], allow_borrow, fits_now)


def _put_back(topology: Topology, node: Node, needed: Mapping[FR, int], usage: list[dict[FR, int]],
              work: list[dict[FR, int]], dev: dict[str, list[int]], removed: list[tuple[Admission, str]],
              kept: list[tuple[Admission, str]], allow_borrow: bool,
              fits_now: Callable[[list[dict[FR, int]], dict[str, list[int]], bool], bool],
              ) -> tuple[list[Victim], list[dict[FR, int]], dict[str, list[int]]]:
    """Victims ``kept`` (newest first) plus those of ``removed`` that cannot go back, trying the last first;
    ``work`` and ``dev`` (copies with every one of them taken out, where the preemptor fits) are updated."""
    flavors = topology.flavors
    cq_nodes = topology.cq_nodes
    # Without tracked devices the fit test is quota only, and putting back a workload lowers what the preemptor
    # has available by at most the workload's own usage (each node passes up at most what it was given, and
    # `available` moves by at most what its inputs move). So while every needed amount of a victim is within the
    # slack, it certainly still fits: it goes back without a test (its usage is restored later, all at once).
    # Only the other victims need the full test, which then resets the slack.
    quick = not dev
    slack: dict[FR, int] = {}
    room: dict[FR, int] = {}
    deferred: list[tuple[Admission, str]] = []

    def measure() -> None:
        mine_now = work[node.idx]
        for fr, q in needed.items():
            slack[fr] = available(node, fr, work) - q
            room[fr] = node.subtree.get(fr, 0) - mine_now.get(fr, 0) - q

    if quick:
        measure()
    for adm, reason in reversed(removed):
        victim_node = cq_nodes[adm.cluster_queue]
        if quick:
            own_victim = victim_node is node
            sure = True
            for fr in needed:
                amount = adm.usage.get(fr, 0)
                if amount > slack[fr] or (own_victim and not allow_borrow and amount > room[fr]):
                    sure = False
                    break
            if sure:
                deferred.append((adm, reason))
                for fr in needed:
                    amount = adm.usage.get(fr, 0)
                    slack[fr] -= amount
                    if own_victim:
                        room[fr] -= amount
                continue
            _apply(topology, work, dev, deferred, 1)
            deferred.clear()
        add_usage(victim_node, work, adm.usage, 1)
        occupy_devices(dev, flavors, adm, -1)
        if fits_now(work, dev, allow_borrow):
            if quick:
                measure()
            continue
        add_usage(victim_node, work, adm.usage, -1)
        occupy_devices(dev, flavors, adm, 1)
        kept.append((adm, reason))
    if len(deferred) > len(kept):
        # Cheaper to start again from the tables before the search and take out only the victims kept.
        work = topology.copy_tree(node, usage)
        _apply(topology, work, dev, kept, -1)
    else:
        _apply(topology, work, dev, deferred, 1)
    return [Victim(a, r) for a, r in reversed(kept)], work, dev
