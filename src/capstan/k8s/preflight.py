"""Refuse, before anything is submitted, a workload that the cluster can never run. Pure: it reads a `Snapshot`
of the namespace's ResourceQuotas and the nodes' allocatable resources (the executor's adapter fetches them) and
the manifests about to be created.

"Never" is about one pod: a pod whose requests exceed a quota's ``hard`` limit is rejected by the API server at
every try (quota is charged per pod), and a pod that no node has room for, even empty, stays ``Unschedulable``
forever. Quota in use now is not counted: it frees up as other work ends. Several pods that fit one at a time are
not refused either (a Job with less room runs fewer at once), except for a gang (`gang_refusals`: a training
job's workers, which must all run at once): its pods together must fit the quota's ``hard`` limit and the nodes,
each empty. A snapshot without nodes (the service account may not list them) skips the node check rather than
refusing everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.resources.quantity import format_quantity, parse_quantity

__all__ = ["Snapshot", "check_workload", "gang_refusals", "pod_requests", "refusals", "snapshot_from"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What bounds one pod: ``quota`` maps quota resource names (``requests.cpu``, ``limits.memory``, ``cpu``,
    ``requests.nvidia.com/gpu``...) to the smallest ``hard`` value (milli-units) among the namespace's
    ResourceQuotas, with the quota's name in ``quota_names``; ``nodes`` is each node's allocatable resources
    (milli-units) by node name."""

    namespace: str
    quota: Mapping[str, int] = field(default_factory=dict)
    quota_names: Mapping[str, str] = field(default_factory=dict)
    nodes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def _quantities(values: Any, path: str) -> dict[str, int]:
    if not isinstance(values, Mapping):
        return {}
    return {str(k): parse_quantity(v, path=f"{path}.{k}") for k, v in values.items()}


def snapshot_from(namespace: str, quotas: Iterable[Mapping[str, Any]],
                  nodes: Iterable[Mapping[str, Any]]) -> Snapshot:
    """A `Snapshot` from ResourceQuota and Node documents as the API server returns them (a quota's
    ``status.hard``, else its ``spec.hard``; a node's ``status.allocatable``; unschedulable nodes are left out)."""
    limit: dict[str, int] = {}
    names: dict[str, str] = {}
    for doc in quotas:
        name = str((doc.get("metadata") or {}).get("name", "?"))
        hard = (doc.get("status") or {}).get("hard") or (doc.get("spec") or {}).get("hard") or {}
        for key, value in _quantities(hard, f"ResourceQuota/{name}.hard").items():
            if key not in limit or value < limit[key]:
                limit[key], names[key] = value, name
    found: dict[str, dict[str, int]] = {}
    for doc in nodes:
        if (doc.get("spec") or {}).get("unschedulable") is True:
            continue
        name = str((doc.get("metadata") or {}).get("name", "?"))
        found[name] = _quantities((doc.get("status") or {}).get("allocatable"), f"Node/{name}.allocatable")
    return Snapshot(namespace, limit, names, found)


def _pod_spec(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str]:
    """The pod spec a manifest creates pods from, and the kind of workload (None for objects without pods)."""
    kind = str(doc.get("kind", ""))
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec, kind
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return ((spec.get("template") or {}).get("spec")), kind
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec"), kind
    return None, kind


def pod_requests(pod_spec: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """One pod's ``requests`` and ``limits`` (milli-units by resource) the way the scheduler and the quota count
    them: the sum over its containers, or the largest init container's where that is more. A limit without a
    request counts as the request too (Kubernetes defaults the request to it)."""
    out: dict[str, dict[str, int]] = {"requests": {}, "limits": {}}
    for kind in ("requests", "limits"):
        total: dict[str, int] = {}
        for c in pod_spec.get("containers") or []:
            res = c.get("resources") or {}
            values = {**_quantities(res.get("limits"), "limits"), **_quantities(res.get(kind), kind)} \
                if kind == "requests" else _quantities(res.get(kind), kind)
            for key, value in values.items():
                total[key] = total.get(key, 0) + value
        for c in pod_spec.get("initContainers") or []:
            res = c.get("resources") or {}
            for key, value in _quantities(res.get(kind), kind).items():
                total[key] = max(total.get(key, 0), value)
        out[kind] = total
    return out


def _show(milli: int, resource: str) -> str:
    return format_quantity(milli, resource.removeprefix("requests.").removeprefix("limits."))


def _quota_refusals(pod: Mapping[str, Mapping[str, int]], snap: Snapshot, count: int = 1) -> list[str]:
    """What ``count`` pods with ``pod``'s requests and limits together ask beyond a quota's ``hard`` limit."""
    out = []
    who = "one pod" if count == 1 else f"its {count} pods"
    for kind in ("requests", "limits"):
        verb = ("requests" if count == 1 else "request") if kind == "requests" else \
            ("is limited to" if count == 1 else "are limited to")
        for resource, each in sorted(pod[kind].items()):
            asked = each * count
            names = [f"{kind}.{resource}"] + ([resource] if kind == "requests" and "/" not in resource else [])
            for key in names:
                hard = snap.quota.get(key)
                if hard is not None and asked > hard:
                    out.append(f"{who} {verb} {_show(asked, resource)} of {resource}"
                               f"{' together' if count > 1 else ''}, more than ResourceQuota "
                               f"{snap.quota_names.get(key, '?')} in namespace {snap.namespace} allows "
                               f"({key}: {_show(hard, resource)})")
    return out


def _node_refusal(requests: Mapping[str, int], snap: Snapshot) -> str | None:
    if not snap.nodes or not requests:
        return None
    if any(all(alloc.get(r, 0) >= v for r, v in requests.items() if v > 0) for alloc in snap.nodes.values()):
        return None
    # Name the resource the largest node lacks; several short ones: the first in name order.
    for resource, asked in sorted(requests.items()):
        largest = max((alloc.get(resource, 0) for alloc in snap.nodes.values()), default=0)
        if asked > largest:
            return (f"one pod requests {_show(asked, resource)} of {resource}; the largest node has "
                    f"{_show(largest, resource)} allocatable ({len(snap.nodes)} node(s))")
    wanted = ", ".join(f"{r}={_show(v, r)}" for r, v in sorted(requests.items()))
    return (f"no node has all of the pod's requests at once ({wanted}), although each fits on some node "
            f"({len(snap.nodes)} node(s))")


def refusals(doc: Mapping[str, Any], snap: Snapshot) -> list[str]:
    """Why no pod of ``doc`` could ever run under ``snap`` (empty when it can, or when ``doc`` has no pods)."""
    spec, _kind = _pod_spec(doc)
    if not isinstance(spec, Mapping):
        return []
    pod = pod_requests(spec)
    out = _quota_refusals(pod, snap)
    node = _node_refusal(pod["requests"], snap)
    if node is not None:
        out.append(node)
    return out


def check_workload(docs: Sequence[Mapping[str, Any]], snap: Snapshot) -> None:
    """Raise `InvalidParameterValue` naming the object and every reason when any of ``docs`` can never run."""
    for doc in docs:
        reasons = refusals(doc, snap)
        if reasons:
            meta = doc.get("metadata") or {}
            raise InvalidParameterValue(f"{doc.get('kind')}/{meta.get('name', '?')} can never run: "
                                        + "; ".join(reasons))


def _pods_per_node(requests: Mapping[str, int], alloc: Mapping[str, int]) -> int:
    """How many pods asking ``requests`` one empty node with ``alloc`` holds."""
    asked = [(r, v) for r, v in requests.items() if v > 0]
    if not asked:
        return 1 << 30
    return min(alloc.get(r, 0) // v for r, v in asked)


def gang_refusals(doc: Mapping[str, Any], snap: Snapshot, count: int) -> list[str]:
    """Why the ``count`` pods of ``doc`` could never all run at once under ``snap``: `refusals` of one pod, then
    the ``count`` pods' requests and limits together against the quota's ``hard`` limits, and against what the
    nodes could hold if they were empty (empty when they can)."""
    out = refusals(doc, snap)
    spec, _kind = _pod_spec(doc)
    if out or count <= 1 or not isinstance(spec, Mapping):
        return out
    pod = pod_requests(spec)
    out = _quota_refusals(pod, snap, count)
    if snap.nodes and pod["requests"]:
        room = sum(_pods_per_node(pod["requests"], alloc) for alloc in snap.nodes.values())
        if room < count:
            out.append(f"its {count} pods can not all run at once: the {len(snap.nodes)} node(s), even empty, "
                       f"hold {room} such pod(s)")
    return out
