"""Flavor assignment: which flavor each pod set gets, whether that borrows, and where its GPUs go.

Pure functions over a usage table and a device table; the engine calls them on its per-cycle copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from capstan.queue.model import (
    FR,
    ClusterQueue,
    Fungibility,
    GpuPlacement,
    PodSet,
    PodSetAssignment,
    ResourceFlavor,
    ResourceGroup,
    Workload,
)
from capstan.queue.state import Node, available, potential, slots_needed
from capstan.resources.quantity import GPU_RESOURCES, MILLI, format_quantity

FIT = 0
BORROW = 1
PREEMPT = 2
NOFIT = 3


@dataclass(slots=True)
class Attempt:
    """The outcome of assigning flavors to a whole workload (internal to the queue package)."""

    mode: int
    pod_sets: list[PodSetAssignment] = field(default_factory=list)
    usage: dict[FR, int] = field(default_factory=dict)
    quota_failure: bool = False
    message: str = ""
    blocking: list[FR] = field(default_factory=list)
    pods_fitting: int = -1
    pods_wanted: int = 0
    searched: bool = False


def flavor_ineligible(flavor: ResourceFlavor, ps: PodSet, resources: list[str]) -> str | None:
    """Why ``flavor`` cannot host pod set ``ps`` at all (labels, taints, fractional GPUs), or None."""
    for key, value in ps.node_selector.items():
        label = flavor.node_labels.get(key)
        if label is not None and label != value:
            return f"flavor {flavor.name} has {key}={label}, pod set {ps.name} selects {key}={value}"
    for taint in flavor.taints:
        # The flavor's own tolerations are added to the pods it admits, so they count as the pods' too.
        if taint.effect in ("NoSchedule", "NoExecute") and not any(
                t.tolerates(taint) for t in (*ps.tolerations, *flavor.tolerations)):
            return f"flavor {flavor.name} has taint {taint.key}={taint.value}:{taint.effect} not tolerated"
    for r in resources:
        if r in GPU_RESOURCES:
            amount = ps.requests.get(r, 0)
            if amount % MILLI:
                if amount > MILLI:
                    return f"pod set {ps.name} asks {format_quantity(amount)} GPUs: a fraction must be below 1"
                if flavor.sharing is None:
                    return (f"flavor {flavor.name} is not shareable, pod set {ps.name} asks "
                            f"{format_quantity(amount)} GPU")
    return None


def place_gpus(ps: PodSet, flavor: ResourceFlavor, free: list[int], resource: str) -> tuple[GpuPlacement, ...] | None:
    """Place every pod's GPUs on the devices of ``flavor`` (mutating ``free`` on success); None when they don't fit.

    Fractions go best-fit onto the device with the fewest free slots that still holds them, which keeps whole
    devices free for whole-GPU pods; whole GPUs take the lowest-numbered entirely free devices.
    """
    share = ps.requests.get(resource, 0)
    if share <= 0:
        return ()
    slots_per_gpu = flavor.sharing.slots_per_gpu if flavor.sharing else 1
    trial = list(free)
    placements: list[GpuPlacement] = []
    mps: int | None = None
    if flavor.sharing is not None and flavor.sharing.strategy == "mps":
        mps = flavor.sharing.mps_thread_percentage
        if mps is None:
            mps = max(1, min(100, round(100 * min(share, MILLI) / MILLI)))
    if share < MILLI:
        need = slots_needed(share, slots_per_gpu)
        for pod in range(ps.count):
            best = -1
            for d, slots in enumerate(trial):
                if slots >= need and (best < 0 or slots < trial[best]):
                    best = d
            if best < 0:
                return None
            trial[best] -= need
            placements.append(GpuPlacement(pod, (best,), share, mps))
    else:
        whole = share // MILLI
        for pod in range(ps.count):
            chosen = [d for d, slots in enumerate(trial) if slots == slots_per_gpu][:whole]
            if len(chosen) < whole:
                return None
            for d in chosen:
                trial[d] = 0
            placements.append(GpuPlacement(pod, tuple(chosen), MILLI, mps if flavor.sharing else None))
    free[:] = trial
    return tuple(placements)


def _unplaced(ps: PodSet, flavor: ResourceFlavor, free: list[int], resource: str) -> str:
    """Why ``place_gpus`` found no devices: taken slots (fragmentation), or, with every device free, the pod set's
    pods do not fit the flavor's devices at all (more pods of a fraction than the devices hold)."""
    slots_per_gpu = flavor.sharing.slots_per_gpu if flavor.sharing else 1
    if any(slots < slots_per_gpu for slots in free):
        return f"no free {flavor.name} GPU slots for pod set {ps.name} (fragmented)"
    share = format_quantity(ps.requests.get(resource, 0), resource)
    pods = f"{ps.count} pods of {share} GPU each" if ps.count > 1 else f"{share} GPU"
    return f"pod set {ps.name} ({pods}) does not fit on the {len(free)} devices of flavor {flavor.name}"


def assign(cq: ClusterQueue, node: Node, groups: Mapping[str, ResourceGroup], flavors: Mapping[str, ResourceFlavor],
           wl: Workload, usage: list[dict[FR, int]], devices: dict[str, list[int]], *,
           can_preempt: bool, no_preempt_on: frozenset[str] = frozenset()) -> Attempt:
    """Choose flavors for every pod set of ``wl`` in ``cq`` given current ``usage``; all pod sets or none.

    ``devices`` is a scratch copy: placements are taken from it (so later pod sets see them).
    ``no_preempt_on`` lists flavors where preemption was already found impossible.
    """
    if len(wl.pod_sets) == 1:
        ps = wl.pod_sets[0]
        if len(ps.requests) == 1 and not ps.node_selector:
            ((r, per_pod),) = ps.requests.items()
            group = groups.get(r)
            if per_pod > 0 and group is not None and len(group.flavors) == 1 and \
                    not (r in GPU_RESOURCES and per_pod % MILLI):
                flavor_name = group.flavors[0].flavor
                if not flavors[flavor_name].taints and flavor_name not in devices:
                    return _assign_one(node, ps, r, per_pod, flavor_name, usage, can_preempt, no_preempt_on)
    acc: dict[FR, int] = {}
    out = Attempt(FIT)
    mine = usage[node.idx]
    for ps in wl.pod_sets:
        requested = [r for r, v in ps.requests.items() if v > 0]
        by_group: dict[int, tuple[ResourceGroup, list[str]]] = {}
        for r in requested:
            group = groups.get(r)
            if group is None:
                return Attempt(NOFIT, message=f"ClusterQueue {cq.name} has no quota for {r}")
            by_group.setdefault(id(group), (group, []))[1].append(r)
        chosen_flavors: dict[str, str] = {}
        gpu_places: tuple[GpuPlacement, ...] = ()
        for group, resources in by_group.values():
            pick: tuple[int, str, tuple[GpuPlacement, ...], list[int] | None] | None = None
            fallback: tuple[int, str, tuple[GpuPlacement, ...], list[int] | None] | None = None
            reasons: list[str] = []
            # `flavor_ineligible` can only object to selectors, taints or fractional GPUs.
            maybe_ineligible = bool(ps.node_selector) or any(
                r in GPU_RESOURCES and ps.requests.get(r, 0) % MILLI for r in resources)
            for fq in group.flavors:
                flavor = flavors[fq.flavor]
                if maybe_ineligible or flavor.taints:
                    why = flavor_ineligible(flavor, ps, resources)
                    if why is not None:
                        reasons.append(why)
                        continue
                mode = FIT
                for r in resources:
                    fr = (fq.flavor, r)
                    need = acc.get(fr, 0) + ps.count * ps.requests[r]
                    most = potential(node, fr)
                    if need > most:
                        reasons.append(f"needs {format_quantity(need, r)} {r} in flavor {fq.flavor}, at most "
                                       f"{format_quantity(most, r)} can ever be available")
                        mode = NOFIT
                        break
                    free = available(node, fr, usage)
                    if need > free:
                        out.quota_failure = True
                        if fr not in out.blocking:
                            out.blocking.append(fr)
                        per_pod = ps.requests[r]
                        fitting = max(0, free - acc.get(fr, 0)) // per_pod
                        out.pods_fitting = fitting if out.pods_fitting < 0 else min(out.pods_fitting, fitting)
                        out.pods_wanted = max(out.pods_wanted, ps.count)
                        mode = PREEMPT if can_preempt else NOFIT
                        if not can_preempt:
                            reasons.append(f"quota: {fq.flavor}/{r}")
                            break
                    elif mine.get(fr, 0) + need > node.subtree.get(fr, 0):
                        mode = max(mode, BORROW)
                if mode == NOFIT or (mode == PREEMPT and fq.flavor in no_preempt_on):
                    continue
                places: tuple[GpuPlacement, ...] = ()
                new_free: list[int] | None = None
                gpu_r = next((r for r in resources if r in GPU_RESOURCES), None) if fq.flavor in devices else None
                if gpu_r is not None and mode != PREEMPT:
                    new_free = list(devices[fq.flavor])
                    placed = place_gpus(ps, flavor, new_free, gpu_r)
                    if placed is None:
                        reasons.append(_unplaced(ps, flavor, devices[fq.flavor], gpu_r))
                        if not can_preempt:
                            continue
                        if fq.flavor in no_preempt_on:
                            continue
                        mode, new_free = PREEMPT, None
                    else:
                        places = placed
                candidate = (mode, fq.flavor, places, new_free)
                if mode == FIT:
                    pick = candidate
                    break
                if mode == BORROW:
                    if cq.when_can_borrow is Fungibility.BORROW:
                        pick = candidate
                        break
                    if fallback is None or fallback[0] > BORROW:
                        fallback = candidate
                    continue
                if cq.when_can_preempt is Fungibility.PREEMPT and fallback is None:
                    pick = candidate
                    break
                if fallback is None:
                    fallback = candidate
            if pick is None:
                pick = fallback
            if pick is None:
                return Attempt(NOFIT, quota_failure=out.quota_failure, blocking=out.blocking,
                               message="; ".join(reasons) or "no flavor fits",
                               pods_fitting=out.pods_fitting, pods_wanted=out.pods_wanted)
            mode, flavor_name, places, new_free = pick
            out.mode = max(out.mode, mode)
            for r in resources:
                chosen_flavors[r] = flavor_name
                fr = (flavor_name, r)
                acc[fr] = acc.get(fr, 0) + ps.count * ps.requests[r]
            if new_free is not None:
                devices[flavor_name] = new_free
            if places:
                gpu_places = places
        ps_usage = {(chosen_flavors[r], r): ps.count * ps.requests[r] for r in requested}
        out.pod_sets.append(PodSetAssignment(ps.name, ps.count, chosen_flavors, ps_usage, gpu_places))
    out.usage = acc
    return out


def _assign_one(node: Node, ps: PodSet, resource: str, per_pod: int, flavor: str, usage: list[dict[FR, int]],
                can_preempt: bool, no_preempt_on: frozenset[str]) -> Attempt:
    """`assign` for the most common workload: one pod set asking one resource of a group with one flavor that has
    no taints, no selector, no fractional GPU and no tracked devices. Same result, without the general loops."""
    fr = (flavor, resource)
    need = ps.count * per_pod
    most = potential(node, fr)
    if need > most:
        return Attempt(NOFIT, message=f"needs {format_quantity(need, resource)} {resource} in flavor {flavor}, at "
                                      f"most {format_quantity(most, resource)} can ever be available")
    free = available(node, fr, usage)
    if need > free:
        fitting = max(0, free) // per_pod
        if not can_preempt or flavor in no_preempt_on:
            return Attempt(NOFIT, quota_failure=True, blocking=[fr], pods_fitting=fitting, pods_wanted=ps.count,
                           message=f"quota: {flavor}/{resource}" if not can_preempt else "no flavor fits")
        mode = PREEMPT
    elif usage[node.idx].get(fr, 0) + need > node.subtree.get(fr, 0):
        mode = BORROW
    else:
        mode = FIT
    return Attempt(mode, [PodSetAssignment(ps.name, ps.count, {resource: flavor}, {fr: need})], {fr: need},
                   quota_failure=mode == PREEMPT, blocking=[fr] if mode == PREEMPT else [],
                   pods_fitting=max(0, free) // per_pod if mode == PREEMPT else -1,
                   pods_wanted=ps.count if mode == PREEMPT else 0)


def fits(node: Node, needed: Mapping[FR, int], usage: list[dict[FR, int]], *, allow_borrow: bool) -> bool:
    """True when ``needed`` fits at ``node`` under ``usage`` (within its own quota unless borrowing is allowed)."""
    mine = usage[node.idx]
    for fr, q in needed.items():
        if q > available(node, fr, usage):
            return False
        if not allow_borrow and mine.get(fr, 0) + q > node.subtree.get(fr, 0):
            return False
    return True
