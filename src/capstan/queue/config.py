"""Reading and validating queue configuration (``capstan queue apply -f queues.yaml``).

The YAML reads like Kueue's objects, gathered into one document::

    flavors:          [{name, nodeLabels, taints, tolerations, gpus, sharing: {slotsPerGpu, strategy,
                        mpsThreadPercentage}}]
    cohorts:          [{name, parent, resourceGroups, fairSharing: {weight}}]
    clusterQueues:    [{name, cohort, queueingStrategy, resourceGroups: [{coveredResources, flavors: [{name,
                        resources: [{name, nominalQuota, borrowingLimit, lendingLimit}]}]}], preemption,
                        flavorFungibility, fairSharing: {weight}, stopPolicy}]
    localQueues:      [{name, clusterQueue, project, stopPolicy}]
    priorityClasses:  [{name, value, description}]
    fairSharing:      {enable: true}
    defaultPriorityClass: name
    aging:            {afterSeconds: 345600, holdAfterSeconds: 3456000}   # or {enable: false}

Every error names the path of the offending field, e.g.
``clusterQueues[2].resourceGroups[0].flavors[1]: borrowingLimit needs a cohort``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.names import check_characters
from capstan.queue.model import (
    ClusterQueue,
    Cohort,
    FlavorQuotas,
    Fungibility,
    GpuSharing,
    LocalQueue,
    Preemption,
    PreemptWithin,
    PriorityClass,
    QueueConfig,
    QueueingStrategy,
    ResourceFlavor,
    ResourceGroup,
    ResourceQuota,
    Taint,
    Toleration,
)
from capstan.resources.quantity import parse_quantity

TOP_KEYS = {"flavors", "cohorts", "clusterQueues", "localQueues", "priorityClasses", "fairSharing",
            "defaultPriorityClass", "aging", "simulation"}

DEFAULT_AGING_SECONDS = 345_600.0  # 4 days
"""How long a workload may wait before the aging rule tries it before every other workload."""

DEFAULT_HOLD_SECONDS = 3_456_000.0  # 40 days
"""How long a workload may wait before, if it does not fit, it holds its cohort tree until it is admitted."""


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}" if path else message)


def _mapping(value: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _fail(path, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, f"expected a list, got {type(value).__name__}")
    return value


def _name(obj: Mapping[str, Any], path: str, key: str = "name") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{key} is required and must be a non-empty string")
    return check_characters(value, f"{path}.{key}" if path else key)


def _enum(value: object, path: str, enum: Any, default: Any) -> Any:
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise _fail(path, f"{value!r} is not one of {allowed}") from None


def _weight(obj: Mapping[str, Any], path: str) -> float:
    fs = obj.get("fairSharing")
    if fs is None:
        return 1.0
    fs = _mapping(fs, f"{path}.fairSharing", {"weight"})
    raw = fs.get("weight", 1)
    try:
        wpath = f"{path}.fairSharing.weight"
        weight = parse_quantity(raw, path=wpath) / 1000 if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        raise _fail(f"{path}.fairSharing.weight", f"{raw!r} is not a number") from None
    if isinstance(raw, bool) or not math.isfinite(weight) or weight < 0:
        raise _fail(f"{path}.fairSharing.weight", "must be a finite number >= 0")
    return weight


def _int(value: object, path: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _flavor(raw: object, path: str) -> ResourceFlavor:
    obj = _mapping(raw, path, {"name", "nodeLabels", "taints", "tolerations", "gpus", "sharing"})
    name = _name(obj, path)
    labels = obj.get("nodeLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) for k in labels):
        raise _fail(f"{path}.nodeLabels", "expected a mapping of label to value")
    taints = tuple(_taint(t, f"{path}.taints[{i}]") for i, t in enumerate(_list(obj.get("taints"), f"{path}.taints")))
    tolerations = tuple(_toleration(t, f"{path}.tolerations[{i}]")
                        for i, t in enumerate(_list(obj.get("tolerations"), f"{path}.tolerations")))
    gpus = None if obj.get("gpus") is None else _int(obj["gpus"], f"{path}.gpus")
    sharing = None
    if obj.get("sharing") is not None:
        sp = f"{path}.sharing"
        s = _mapping(obj["sharing"], sp, {"slotsPerGpu", "strategy", "mpsThreadPercentage"})
        slots = _int(s.get("slotsPerGpu"), f"{sp}.slotsPerGpu", minimum=1)
        strategy = s.get("strategy", "time-slicing")
        if strategy not in ("time-slicing", "mps"):
            raise _fail(f"{sp}.strategy", f"{strategy!r} is not one of time-slicing, mps")
        pct = s.get("mpsThreadPercentage")
        if pct is not None:
            pct = _int(pct, f"{sp}.mpsThreadPercentage", minimum=1)
            if pct > 100 or strategy != "mps":
                raise _fail(f"{sp}.mpsThreadPercentage", "must be 1..100 and needs strategy: mps")
        if gpus is None:
            raise _fail(path, "a shareable flavor needs gpus: the number of physical GPUs to place fractions on")
        sharing = GpuSharing(slots, strategy, pct)
    return ResourceFlavor(name, {str(k): str(v) for k, v in labels.items()}, taints, tolerations, sharing, gpus)


def _taint(raw: object, path: str) -> Taint:
    obj = _mapping(raw, path, {"key", "value", "effect"})
    effect = obj.get("effect", "NoSchedule")
    if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise _fail(f"{path}.effect", f"{effect!r} is not one of NoSchedule, PreferNoSchedule, NoExecute")
    return Taint(_name(obj, path, "key"), str(obj.get("value", "")), effect)


def _toleration(raw: object, path: str) -> Toleration:
    obj = _mapping(raw, path, {"key", "operator", "value", "effect"})
    operator = obj.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise _fail(f"{path}.operator", f"{operator!r} is not one of Equal, Exists")
    return Toleration(str(obj.get("key", "")), operator, str(obj.get("value", "")), str(obj.get("effect", "")))


def _groups(raw: object, path: str, flavors: Mapping[str, ResourceFlavor], has_cohort: bool,
            is_cohort: bool) -> tuple[ResourceGroup, ...]:
    groups = []
    seen_resources: set[str] = set()
    seen_flavors: set[str] = set()
    for gi, g in enumerate(_list(raw, path)):
        gp = f"{path}[{gi}]"
        gobj = _mapping(g, gp, {"coveredResources", "flavors"})
        covered = _list(gobj.get("coveredResources"), f"{gp}.coveredResources")
        if not covered or not all(isinstance(r, str) and r for r in covered):
            raise _fail(f"{gp}.coveredResources", "expected a non-empty list of resource names")
        for r in covered:
            if r in seen_resources:
                raise _fail(f"{gp}.coveredResources", f"resource {r!r} is already covered by another group")
            seen_resources.add(r)
        fqs = []
        flist = _list(gobj.get("flavors"), f"{gp}.flavors")
        if not flist:
            raise _fail(f"{gp}.flavors", "expected at least one flavor")
        for fi, f in enumerate(flist):
            fp = f"{gp}.flavors[{fi}]"
            fobj = _mapping(f, fp, {"name", "resources"})
            fname = _name(fobj, fp)
            if fname not in flavors:
                raise _fail(fp, f"unknown flavor {fname!r} (declared: {', '.join(sorted(flavors)) or 'none'})")
            if fname in seen_flavors:
                raise _fail(fp, f"flavor {fname!r} appears twice in this queue")
            seen_flavors.add(fname)
            quotas = []
            names = []
            for ri, r in enumerate(_list(fobj.get("resources"), f"{fp}.resources")):
                rp = f"{fp}.resources[{ri}]"
                robj = _mapping(r, rp, {"name", "nominalQuota", "borrowingLimit", "lendingLimit"})
                rname = _name(robj, rp)
                if rname not in covered:
                    raise _fail(rp, f"resource {rname!r} is not in coveredResources {covered}")
                if "nominalQuota" not in robj and not is_cohort:
                    raise _fail(rp, "nominalQuota is required")
                nominal = parse_quantity(robj.get("nominalQuota", 0), path=f"{rp}.nominalQuota")
                borrow = lend = None
                if robj.get("borrowingLimit") is not None:
                    if not has_cohort:
                        raise _fail(fp, "borrowingLimit needs a cohort")
                    borrow = parse_quantity(robj["borrowingLimit"], path=f"{rp}.borrowingLimit")
                if robj.get("lendingLimit") is not None:
                    if not has_cohort:
                        raise _fail(fp, "lendingLimit needs a cohort")
                    lend = parse_quantity(robj["lendingLimit"], path=f"{rp}.lendingLimit")
                    if lend > nominal:
                        raise _fail(f"{rp}.lendingLimit", "must not exceed nominalQuota")
                names.append(rname)
                quotas.append(ResourceQuota(rname, nominal, borrow, lend))
            if sorted(names) != sorted(covered):
                missing = sorted(set(covered) - set(names))
                raise _fail(f"{fp}.resources", f"needs exactly the covered resources; missing {missing}")
            fqs.append(FlavorQuotas(fname, tuple(quotas)))
        groups.append(ResourceGroup(tuple(covered), tuple(fqs)))
    return tuple(groups)


def _preemption(raw: object, path: str) -> Preemption:
    if raw is None:
        return Preemption()
    obj = _mapping(raw, path, {"withinClusterQueue", "reclaimWithinCohort", "borrowWithinCohort"})
    within = _enum(obj.get("withinClusterQueue"), f"{path}.withinClusterQueue", PreemptWithin, PreemptWithin.NEVER)
    if within is PreemptWithin.ANY:
        raise _fail(f"{path}.withinClusterQueue", "'Any' is not allowed within a ClusterQueue")
    reclaim = _enum(obj.get("reclaimWithinCohort"), f"{path}.reclaimWithinCohort", PreemptWithin,
                    PreemptWithin.NEVER)
    borrow = PreemptWithin.NEVER
    threshold = None
    bw = obj.get("borrowWithinCohort")
    if bw is not None:
        bp = f"{path}.borrowWithinCohort"
        bobj = _mapping(bw, bp, {"policy", "maxPriorityThreshold"})
        borrow = _enum(bobj.get("policy"), f"{bp}.policy", PreemptWithin, PreemptWithin.NEVER)
        if borrow not in (PreemptWithin.NEVER, PreemptWithin.LOWER_PRIORITY):
            raise _fail(f"{bp}.policy", "must be Never or LowerPriority")
        if bobj.get("maxPriorityThreshold") is not None:
            raw_t = bobj["maxPriorityThreshold"]
            if isinstance(raw_t, bool) or not isinstance(raw_t, int):
                raise _fail(f"{bp}.maxPriorityThreshold", f"expected an integer, got {raw_t!r}")
            threshold = raw_t
    return Preemption(within, reclaim, borrow, threshold)


def parse_config(data: object) -> QueueConfig:
    """Validate a parsed YAML document and build the `QueueConfig`; errors name the offending path."""
    if data is None:
        data = {}
    top = _mapping(data, "", TOP_KEYS)
    flavors: dict[str, ResourceFlavor] = {}
    for i, raw in enumerate(_list(top.get("flavors"), "flavors")):
        flavor = _flavor(raw, f"flavors[{i}]")
        if flavor.name in flavors:
            raise _fail(f"flavors[{i}]", f"duplicate flavor name {flavor.name!r}")
        flavors[flavor.name] = flavor

    cohort_raw = _list(top.get("cohorts"), "cohorts")
    cohort_names: list[str] = []
    for i, raw in enumerate(cohort_raw):
        obj = _mapping(raw, f"cohorts[{i}]", {"name", "parent", "resourceGroups", "fairSharing"})
        name = _name(obj, f"cohorts[{i}]")
        if name in cohort_names:
            raise _fail(f"cohorts[{i}]", f"duplicate cohort name {name!r}")
        cohort_names.append(name)
    cohorts = []
    for i, raw in enumerate(cohort_raw):
        path = f"cohorts[{i}]"
        parent = raw.get("parent")
        if parent is not None and parent not in cohort_names:
            raise _fail(path, f"parent cohort {parent!r} does not exist")
        cohorts.append(Cohort(raw["name"], parent,
                              _groups(raw.get("resourceGroups"), f"{path}.resourceGroups", flavors,
                                      parent is not None, True), _weight(raw, path)))
    parents = {c.name: c.parent for c in cohorts}
    for i, c in enumerate(cohorts):
        seen = {c.name}
        current = c.parent
        while current is not None:
            if current in seen:
                raise _fail(f"cohorts[{i}]", f"cohort {c.name!r} is part of a parent cycle")
            seen.add(current)
            current = parents[current]

    cqs: list[ClusterQueue] = []
    for i, raw in enumerate(_list(top.get("clusterQueues"), "clusterQueues")):
        path = f"clusterQueues[{i}]"
        obj = _mapping(raw, path, {"name", "cohort", "queueingStrategy", "resourceGroups", "preemption",
                                   "flavorFungibility", "fairSharing", "stopPolicy", "namespaceSelector"})
        name = _name(obj, path)
        if any(cq.name == name for cq in cqs):
            raise _fail(path, f"duplicate ClusterQueue name {name!r}")
        cohort = obj.get("cohort")
        if cohort is not None and cohort not in cohort_names:
            raise _fail(f"{path}.cohort", f"cohort {cohort!r} does not exist (declared: "
                                          f"{', '.join(cohort_names) or 'none'})")
        strategy = _enum(obj.get("queueingStrategy"), f"{path}.queueingStrategy", QueueingStrategy,
                         QueueingStrategy.BEST_EFFORT_FIFO)
        groups = _groups(obj.get("resourceGroups"), f"{path}.resourceGroups", flavors, cohort is not None, False)
        preemption = _preemption(obj.get("preemption"), f"{path}.preemption")
        ff = _mapping(obj.get("flavorFungibility") or {}, f"{path}.flavorFungibility",
                      {"whenCanBorrow", "whenCanPreempt"})
        when_borrow = _enum(ff.get("whenCanBorrow"), f"{path}.flavorFungibility.whenCanBorrow", Fungibility,
                            Fungibility.BORROW)
        when_preempt = _enum(ff.get("whenCanPreempt"), f"{path}.flavorFungibility.whenCanPreempt", Fungibility,
                             Fungibility.TRY_NEXT_FLAVOR)
        if when_borrow is Fungibility.PREEMPT or when_preempt is Fungibility.BORROW:
            raise _fail(f"{path}.flavorFungibility", "whenCanBorrow is Borrow|TryNextFlavor, whenCanPreempt is "
                                                     "Preempt|TryNextFlavor")
        stop = obj.get("stopPolicy", "None")
        if stop not in ("None", "Hold", "HoldAndDrain"):
            raise _fail(f"{path}.stopPolicy", f"{stop!r} is not one of None, Hold, HoldAndDrain")
        cqs.append(ClusterQueue(name, groups, cohort, strategy, preemption, when_borrow, when_preempt,
                                _weight(obj, path), stop != "None"))

    cq_names = {cq.name for cq in cqs}
    lqs: list[LocalQueue] = []
    for i, raw in enumerate(_list(top.get("localQueues"), "localQueues")):
        path = f"localQueues[{i}]"
        obj = _mapping(raw, path, {"name", "clusterQueue", "project", "namespace", "stopPolicy"})
        name = _name(obj, path)
        if any(lq.name == name for lq in lqs):
            raise _fail(path, f"duplicate LocalQueue name {name!r}")
        target = _name(obj, path, "clusterQueue")
        if target not in cq_names:
            raise _fail(f"{path}.clusterQueue", f"ClusterQueue {target!r} does not exist")
        project = obj.get("project", obj.get("namespace", "default"))
        stop = obj.get("stopPolicy", "None")
        if stop not in ("None", "Hold", "HoldAndDrain"):
            raise _fail(f"{path}.stopPolicy", f"{stop!r} is not one of None, Hold, HoldAndDrain")
        lqs.append(LocalQueue(name, target, str(project), stop != "None"))

    pcs: list[PriorityClass] = []
    for i, raw in enumerate(_list(top.get("priorityClasses"), "priorityClasses")):
        path = f"priorityClasses[{i}]"
        obj = _mapping(raw, path, {"name", "value", "description"})
        name = _name(obj, path)
        if any(p.name == name for p in pcs):
            raise _fail(path, f"duplicate priority class {name!r}")
        value = obj.get("value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"{path}.value", f"expected an integer, got {value!r}")
        pcs.append(PriorityClass(name, value, str(obj.get("description", ""))))

    fair = False
    if top.get("fairSharing") is not None:
        fs = _mapping(top["fairSharing"], "fairSharing", {"enable"})
        fair = bool(fs.get("enable", False))
    default_pc = top.get("defaultPriorityClass")
    if default_pc is not None and not any(p.name == default_pc for p in pcs):
        raise _fail("defaultPriorityClass", f"priority class {default_pc!r} does not exist")
    return QueueConfig(tuple(flavors.values()), tuple(cqs), tuple(cohorts), tuple(lqs), tuple(pcs), fair,
                       default_pc, *_aging(top.get("aging")))


def _aging(raw: object) -> tuple[float | None, float | None]:
    """The ``aging`` block: ``{afterSeconds, holdAfterSeconds}`` (defaults `DEFAULT_AGING_SECONDS`,
    `DEFAULT_HOLD_SECONDS`) or ``{enable: false}``."""
    if raw is None:
        return DEFAULT_AGING_SECONDS, DEFAULT_HOLD_SECONDS
    obj = _mapping(raw, "aging", {"enable", "afterSeconds", "holdAfterSeconds"})
    enable = obj.get("enable", True)
    if not isinstance(enable, bool):
        raise _fail("aging.enable", f"expected true or false, got {enable!r}")
    if not enable:
        if "afterSeconds" in obj or "holdAfterSeconds" in obj:
            raise _fail("aging", "afterSeconds and holdAfterSeconds have no effect with enable: false")
        return None, None
    out = []
    for key, default in (("afterSeconds", DEFAULT_AGING_SECONDS), ("holdAfterSeconds", DEFAULT_HOLD_SECONDS)):
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise _fail(f"aging.{key}", f"expected a number of seconds > 0, got {value!r}")
        out.append(float(value))
    if out[1] < out[0]:
        raise _fail("aging.holdAfterSeconds", "must be at least afterSeconds")
    return out[0], out[1]


def load_yaml(text: str, *, source: str = "config") -> Any:
    """Parse YAML text; syntax errors become one-line `InvalidParameterValue` naming line and column."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidParameterValue(f"{where}: invalid YAML: {problem}") from None


def load_config(path: Path | str) -> QueueConfig:
    """Read and validate a queue configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidParameterValue(f"{p}: cannot read: {exc.strerror}") from None
    return parse_config(load_yaml(text, source=str(p)))
