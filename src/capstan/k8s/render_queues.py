"""Render Capstan's queue configuration (`capstan.queue.model.QueueConfig`) to Kueue objects. Pure.

``render_queues(config, options)`` returns manifest dicts for ``kueue.x-k8s.io/v1beta2``, in the order they can
be applied: `WorkloadPriorityClass`, `ResourceFlavor`, `Cohort`, `ProvisioningRequestConfig`, `AdmissionCheck`,
`ClusterQueue`, `LocalQueue`. Capstan's configuration reads like Kueue's, so most fields map one to one; the
exceptions (docs/kubernetes-queues.md, decision 0706):

- Capstan's abstract ``gpu`` resource becomes a Kubernetes resource per flavor: ``nvidia.com/gpu`` for a whole-GPU
  flavor, the device plugin's shared resource (``nvidia.com/gpu.shared``) counted in slots for a time-sliced or
  MPS flavor, or ``nvidia.com/mig-<profile>`` counted in MIG instances for a flavor named in `KueueOptions.mig`.
- A ClusterQueue's ``namespaceSelector`` admits exactly the namespaces of the LocalQueues that point to it
  (a project is a namespace of the same name).
- Kueue's v1beta2 ``MayStopSearch`` is Capstan's ``Borrow`` (``whenCanBorrow``) and ``Preempt`` (``whenCanPreempt``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.queue.model import (
    ClusterQueue,
    Cohort,
    Fungibility,
    LocalQueue,
    Preemption,
    PreemptWithin,
    PriorityClass,
    QueueConfig,
    ResourceFlavor,
    ResourceGroup,
    ResourceQuota,
)
from capstan.resources.quantity import MEMORY_RESOURCES, MILLI

API_VERSION: Final = "kueue.x-k8s.io/v1beta2"
"""The Kueue API version every rendered object uses."""
PROVISIONING_CONTROLLER: Final = "kueue.x-k8s.io/provisioning-request"
"""The AdmissionCheck controller that turns workloads into cluster-autoscaler ProvisioningRequests."""
GPU: Final = "gpu"
"""Capstan's abstract GPU resource name, mapped per flavor."""

_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MIG_PROFILE: Final = re.compile(r"^[1-9][0-9]*g\.[1-9][0-9]*gb(\+me)?$")
_FUNGIBILITY: Final = {Fungibility.BORROW: "MayStopSearch", Fungibility.PREEMPT: "MayStopSearch",
                       Fungibility.TRY_NEXT_FLAVOR: "TryNextFlavor"}


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A flavor whose GPUs are split into MIG instances of one profile (``1g.10gb``), ``per_gpu`` per GPU."""

    profile: str
    per_gpu: int

    @property
    def resource(self) -> str:
        """The extended resource the NVIDIA device plugin advertises (``mig.strategy: mixed``)."""
        return f"nvidia.com/mig-{self.profile}"


@dataclass(frozen=True, slots=True)
class ProvisioningCheck:
    """Kueue's ProvisioningRequest admission check for one ClusterQueue: the cluster autoscaler provisions nodes
    of ``provisioning_class`` for a workload before Kueue admits it.

    ``managed_resources`` limits the check to workloads requesting those Kubernetes resources (empty: all);
    ``on_flavors`` limits it to those flavors (empty: all); ``parameters`` go to the ProvisioningRequest as is.
    """

    provisioning_class: str = "check-capacity.autoscaling.x-k8s.io"
    managed_resources: tuple[str, ...] = ()
    on_flavors: tuple[str, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KueueOptions:
    """How Capstan's queue configuration meets a particular cluster.

    ``gpu_resource`` is the whole-GPU resource, ``shared_gpu_resource`` the one the device plugin advertises for
    time-sliced or MPS GPUs (its ``renameByDefault`` name), ``mig`` maps flavor names to MIG profiles, and
    ``provisioning`` maps ClusterQueue names to their ProvisioningRequest check.
    """

    gpu_resource: str = "nvidia.com/gpu"
    shared_gpu_resource: str = "nvidia.com/gpu.shared"
    mig: Mapping[str, MigProfile] = field(default_factory=dict)
    provisioning: Mapping[str, ProvisioningCheck] = field(default_factory=dict)


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _object_name(name: str, path: str) -> str:
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise _fail(path, f"{name!r} is not a valid Kubernetes object name (lowercase letters, digits, '-' and '.')")
    return name


def namespace_for(project: str, path: str = "project") -> str:
    """The namespace of a Capstan project: the project's own name, which must be a DNS-1123 label."""
    if len(project) > 63 or not _LABEL.match(project):
        raise _fail(path, f"{project!r} is not a valid Kubernetes namespace name (at most 63 lowercase letters, "
                          "digits and '-')")
    return project


def _meta(kind: str, name: str, spec: Mapping[str, Any] | None, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "capstan"}}
    if namespace is not None:
        metadata["namespace"] = namespace
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata}
    if spec is not None:
        obj["spec"] = dict(spec)
    return obj


def gpu_units(flavor: ResourceFlavor, options: KueueOptions) -> tuple[str, int]:
    """The Kubernetes resource a flavor's ``gpu`` becomes, and how many of it one physical GPU is."""
    mig = options.mig.get(flavor.name)
    if mig is not None:
        return mig.resource, mig.per_gpu
    if flavor.sharing is not None:
        return options.shared_gpu_resource, flavor.sharing.slots_per_gpu
    return options.gpu_resource, 1


def gpu_request(flavor: ResourceFlavor, milli_gpus: int, options: KueueOptions) -> tuple[str, int]:
    """A pod's GPU request (milli-GPUs, e.g. 250 for ``gpu: 0.25``) on ``flavor`` as a Kubernetes resource and a
    whole count: slots or MIG instances rounded up, as Capstan's queue rounds a fraction up to whole slots.

    Raises `InvalidParameterValue` for a fraction on a whole-GPU flavor.
    """
    resource, per_gpu = gpu_units(flavor, options)
    if per_gpu == 1 and milli_gpus % MILLI:
        raise _fail("gpu", f"{milli_gpus / MILLI:g} GPU needs a shareable or MIG flavor; {flavor.name} "
                           "has whole GPUs only")
    return resource, -(-milli_gpus * per_gpu // MILLI)


def quantity(milli: int, resource: str) -> str:
    """Exact Kubernetes quantity text for milli-units: ``500m``, ``64``, ``256Gi`` for memory."""
    if milli % MILLI:
        return f"{milli}m"
    whole = milli // MILLI
    if resource in MEMORY_RESOURCES and whole:
        for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if whole % factor == 0:
                return f"{whole // factor}{suffix}"
    return str(whole)


def _weight(weight: float) -> str:
    return str(int(weight)) if weight.is_integer() else repr(weight)


def _quota_entries(quota: ResourceQuota, flavor: ResourceFlavor, options: KueueOptions) -> tuple[str, dict[str, str]]:
    """One Capstan quota as (Kubernetes resource name, Kueue quota fields). GPU quotas on shared or MIG flavors
    count slots or instances, rounded down (Kueue never admits more than the fraction Capstan would)."""
    if quota.resource == GPU:
        name, per_gpu = gpu_units(flavor, options)

        def convert(milli: int) -> str:
            return quantity(milli, GPU) if per_gpu == 1 else str(milli * per_gpu // MILLI)
    else:
        name = quota.resource

        def convert(milli: int) -> str:
            return quantity(milli, quota.resource)
    fields = {"name": name, "nominalQuota": convert(quota.nominal)}
    if quota.borrowing_limit is not None:
        fields["borrowingLimit"] = convert(quota.borrowing_limit)
    if quota.lending_limit is not None:
        fields["lendingLimit"] = convert(quota.lending_limit)
    return name, fields


def _resource_group(group: ResourceGroup, flavors: Mapping[str, ResourceFlavor], options: KueueOptions,
                    path: str) -> dict[str, Any]:
    """A Kueue resource group. When the group's flavors map ``gpu`` to different resources (whole and shared),
    it covers each of them, with a zero quota on the flavors that do not offer it."""
    per_flavor: list[tuple[str, dict[str, dict[str, str]]]] = []
    covered: list[str] = []
    for fq in group.flavors:
        by_resource = {}
        for quota in fq.resources:
            name, fields = _quota_entries(quota, flavors[fq.flavor], options)
            by_resource[name] = fields
        per_flavor.append((fq.flavor, by_resource))
    for resource in group.covered_resources:
        names = [gpu_units(flavors[fq.flavor], options)[0] for fq in group.flavors] if resource == GPU else [resource]
        covered += [n for i, n in enumerate(names) if n not in covered and n not in names[:i]]
    if len(covered) > 64:
        raise _fail(path, f"covers {len(covered)} Kubernetes resources; Kueue allows 64")
    return {"coveredResources": covered,
            "flavors": [{"name": _object_name(fname, f"{path}.flavors"),
                         "resources": [by_resource.get(r, {"name": r, "nominalQuota": "0"}) for r in covered]}
                        for fname, by_resource in per_flavor]}


def _resource_groups(groups: tuple[ResourceGroup, ...], flavors: Mapping[str, ResourceFlavor],
                     options: KueueOptions, path: str) -> list[dict[str, Any]]:
    rendered = [_resource_group(g, flavors, options, f"{path}.resourceGroups[{i}]") for i, g in enumerate(groups)]
    seen: set[str] = set()
    for i, group in enumerate(rendered):
        for resource in group["coveredResources"]:
            if resource in seen:
                raise _fail(f"{path}.resourceGroups[{i}]", f"Kubernetes resource {resource!r} is covered by two "
                                                           "resource groups after mapping gpu")
            seen.add(resource)
    return rendered


def _flavor(flavor: ResourceFlavor, path: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if flavor.node_labels:
        spec["nodeLabels"] = dict(flavor.node_labels)
    if flavor.taints:
        spec["nodeTaints"] = [{"key": t.key, **({"value": t.value} if t.value else {}), "effect": t.effect}
                              for t in flavor.taints]
    if flavor.tolerations:
        tolerations = []
        for i, t in enumerate(flavor.tolerations):
            if not t.key and t.operator != "Exists":
                raise _fail(f"{path}.tolerations[{i}]", "a toleration without a key needs operator: Exists")
            item = {"operator": t.operator}
            if t.key:
                item["key"] = t.key
            if t.value and t.operator == "Equal":
                item["value"] = t.value
            if t.effect:
                item["effect"] = t.effect
            tolerations.append(item)
        spec["tolerations"] = tolerations
    return _meta("ResourceFlavor", _object_name(flavor.name, path), spec)


def _preemption(p: Preemption, path: str) -> dict[str, Any]:
    rendered: dict[str, Any] = {"withinClusterQueue": p.within_cluster_queue.value,
                                "reclaimWithinCohort": p.reclaim_within_cohort.value}
    if p.borrow_within_cohort is not PreemptWithin.NEVER:
        if p.reclaim_within_cohort is PreemptWithin.NEVER:
            raise _fail(f"{path}.preemption.borrowWithinCohort",
                        "Kueue allows borrowWithinCohort only when reclaimWithinCohort is not Never")
        borrow: dict[str, Any] = {"policy": p.borrow_within_cohort.value}
        if p.borrow_max_priority_threshold is not None:
            borrow["maxPriorityThreshold"] = p.borrow_max_priority_threshold
        rendered["borrowWithinCohort"] = borrow
    return rendered


def _cluster_queue(cq: ClusterQueue, config: QueueConfig, flavors: Mapping[str, ResourceFlavor],
                   options: KueueOptions, path: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cq.cohort is not None:
        spec["cohortName"] = cq.cohort
    spec["queueingStrategy"] = cq.queueing_strategy.value
    namespaces = sorted({namespace_for(lq.project, f"localQueues[{lq.name}].project")
                         for lq in config.local_queues if lq.cluster_queue == cq.name})
    if namespaces:
        spec["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}
    spec["resourceGroups"] = _resource_groups(cq.resource_groups, flavors, options, path)
    spec["preemption"] = _preemption(cq.preemption, path)
    spec["flavorFungibility"] = {"whenCanBorrow": _FUNGIBILITY[cq.when_can_borrow],
                                 "whenCanPreempt": _FUNGIBILITY[cq.when_can_preempt]}
    if cq.fair_weight != 1.0:
        spec["fairSharing"] = {"weight": _weight(cq.fair_weight)}
    if cq.stopped:
        spec["stopPolicy"] = "Hold"
    check = options.provisioning.get(cq.name)
    if check is not None:
        entry: dict[str, Any] = {"name": _check_name(cq.name)}
        if check.on_flavors:
            entry["onFlavors"] = list(check.on_flavors)
        spec["admissionChecksStrategy"] = {"admissionChecks": [entry]}
    return _meta("ClusterQueue", _object_name(cq.name, path), spec)


def _cohort(cohort: Cohort, flavors: Mapping[str, ResourceFlavor], options: KueueOptions,
            path: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cohort.parent is not None:
        spec["parentName"] = cohort.parent
    if cohort.resource_groups:
        spec["resourceGroups"] = _resource_groups(cohort.resource_groups, flavors, options, path)
    if cohort.fair_weight != 1.0:
        spec["fairSharing"] = {"weight": _weight(cohort.fair_weight)}
    return _meta("Cohort", _object_name(cohort.name, path), spec)


def _local_queue(lq: LocalQueue, path: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterQueue": lq.cluster_queue}
    if lq.stopped:
        spec["stopPolicy"] = "Hold"
    return _meta("LocalQueue", _object_name(lq.name, path), spec, namespace_for(lq.project, f"{path}.project"))


def _priority_class(pc: PriorityClass, path: str) -> dict[str, Any]:
    obj = _meta("WorkloadPriorityClass", _object_name(pc.name, path), None)
    obj["value"] = pc.value
    if pc.description:
        obj["description"] = pc.description
    return obj


def _check_name(cluster_queue: str) -> str:
    return f"{cluster_queue}-provisioning"


def _provisioning(cq_name: str, check: ProvisioningCheck, path: str) -> list[dict[str, Any]]:
    name = _object_name(_check_name(cq_name), path)
    spec: dict[str, Any] = {"provisioningClassName": check.provisioning_class}
    if check.managed_resources:
        spec["managedResources"] = list(check.managed_resources)
    if check.parameters:
        spec["parameters"] = dict(check.parameters)
    config = _meta("ProvisioningRequestConfig", name, spec)
    admission = _meta("AdmissionCheck", name, {
        "controllerName": PROVISIONING_CONTROLLER,
        "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "ProvisioningRequestConfig", "name": name}})
    return [config, admission]


def _check_options(config: QueueConfig, options: KueueOptions) -> None:
    flavor_names = {f.name for f in config.flavors}
    for name, mig in options.mig.items():
        if name not in flavor_names:
            raise _fail(f"mig[{name}]", f"flavor {name!r} does not exist")
        if not _MIG_PROFILE.match(mig.profile):
            raise _fail(f"mig[{name}].profile", f"{mig.profile!r} is not a MIG profile such as 1g.10gb")
        if mig.per_gpu < 1:
            raise _fail(f"mig[{name}].per_gpu", "must be at least 1")
    cq_names = {cq.name for cq in config.cluster_queues}
    for name, check in options.provisioning.items():
        if name not in cq_names:
            raise _fail(f"provisioning[{name}]", f"ClusterQueue {name!r} does not exist")
        if not check.provisioning_class:
            raise _fail(f"provisioning[{name}].provisioning_class", "must not be empty")
        unknown = sorted(set(check.on_flavors) - flavor_names)
        if unknown:
            raise _fail(f"provisioning[{name}].on_flavors", f"flavor {unknown[0]!r} does not exist")


def render_queues(config: QueueConfig, options: KueueOptions | None = None) -> list[dict[str, Any]]:
    """Every Kueue object for ``config``, in apply order. Raises `InvalidParameterValue` naming the field when a
    name is not a valid Kubernetes name or a setting has no valid Kueue rendering."""
    opts = options if options is not None else KueueOptions()
    _check_options(config, opts)
    flavors = {f.name: f for f in config.flavors}
    objects = [_priority_class(pc, f"priorityClasses[{pc.name}]") for pc in config.priority_classes]
    objects += [_flavor(f, f"flavors[{f.name}]") for f in config.flavors]
    objects += [_cohort(c, flavors, opts, f"cohorts[{c.name}]") for c in config.cohorts]
    for cq in config.cluster_queues:
        check = opts.provisioning.get(cq.name)
        if check is not None:
            objects += _provisioning(cq.name, check, f"provisioning[{cq.name}]")
    objects += [_cluster_queue(cq, config, flavors, opts, f"clusterQueues[{cq.name}]")
                for cq in config.cluster_queues]
    objects += [_local_queue(lq, f"localQueues[{lq.name}]") for lq in config.local_queues]
    return objects
