"""What the queue manager persists: workload records and admission (usage) records, with JSON round-trips."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capstan.queue.model import (
    FR,
    Admission,
    GpuPlacement,
    PodSet,
    PodSetAssignment,
    Reason,
    Toleration,
    Workload,
)

PENDING = "Pending"
ADMITTED = "Admitted"
EVICTING = "Evicting"
FINISHED = "Finished"
CANCELLED = "Cancelled"
ACTIVE_STATES = (PENDING, ADMITTED, EVICTING)


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """A workload as the manager tracks it. Times are integer milliseconds since the epoch."""

    workload: Workload
    state: str
    reason: Reason
    message: str = ""
    submitted_at: int = 0
    admission: Admission | None = None
    admitted_at: int | None = None
    finished_at: int | None = None
    requeue_at: int | None = None
    preemptions: int = 0
    seq: int = 0
    checkpointed_at: int | None = None  # the last checkpoint the running workload reported (ms)
    checkpoint_step: int | None = None  # the training step of that checkpoint, when it said
    lost_gpu_seconds: float = 0.0  # work lost by its last preemption (GPU-seconds since its last checkpoint)

    @property
    def id(self) -> str:
        """The workload id."""
        return self.workload.id


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One admission's resource use for showback: from ``start`` to ``end`` (None while running)."""

    workload_id: str
    project: str
    user: str
    local_queue: str
    cluster_queue: str
    usage: Mapping[FR, int] = field(default_factory=dict)
    start: int = 0
    end: int | None = None


def workload_to_json(w: Workload) -> dict[str, Any]:
    """A workload as plain JSON data."""
    return {"id": w.id, "queue": w.queue, "cluster_queue": w.cluster_queue, "priority": w.priority,
            "created": w.created, "project": w.project, "user": w.user, "priority_class": w.priority_class,
            "active": w.active, "min_run_seconds": w.min_run_seconds,
            "checkpoint_interval_seconds": w.checkpoint_interval_seconds,
            "pod_sets": [{"name": ps.name, "count": ps.count, "min_count": ps.min_count, "requests": dict(ps.requests),
                          "node_selector": dict(ps.node_selector),
                          "tolerations": [[t.key, t.operator, t.value, t.effect] for t in ps.tolerations]}
                         for ps in w.pod_sets]}


def workload_from_json(d: Mapping[str, Any]) -> Workload:
    """Inverse of `workload_to_json`."""
    return Workload(
        d["id"], d["queue"], d["cluster_queue"],
        tuple(PodSet(p["name"], int(p["count"]), {k: int(v) for k, v in p["requests"].items()},
                     dict(p.get("node_selector", {})), tuple(Toleration(*t) for t in p.get("tolerations", [])),
                     p.get("min_count"))
              for p in d["pod_sets"]),
        int(d["priority"]), float(d["created"]), d.get("project", "default"), d.get("user", ""),
        d.get("priority_class"), bool(d.get("active", True)), float(d.get("min_run_seconds", 0.0)),
        float(d.get("checkpoint_interval_seconds", 0.0)))


def pod_set_counts(r: WorkloadRecord) -> list[dict[str, Any]]:
    """Each pod set's requested ``count``, its ``min_count`` and the ``admitted_count`` it was admitted with (None
    while not admitted; below ``count`` after a partial admission): what the API and ``--json`` show."""
    admitted = {} if r.admission is None else {ps.name: ps.count for ps in r.admission.pod_sets}
    return [{"name": ps.name, "count": ps.count, "min_count": ps.min_count, "admitted_count": admitted.get(ps.name)}
            for ps in r.workload.pod_sets]


def usage_to_json(usage: Mapping[FR, int]) -> list[list[Any]]:
    """Flavor-resource usage as JSON: ``[[flavor, resource, milli], ...]``."""
    return [[f, r, q] for (f, r), q in sorted(usage.items())]


def usage_from_json(data: list[list[Any]]) -> dict[FR, int]:
    """Inverse of `usage_to_json`."""
    return {(str(f), str(r)): int(q) for f, r, q in data}


def admission_to_json(a: Admission) -> dict[str, Any]:
    """An admission as plain JSON data (the workload is stored separately)."""
    return {"cluster_queue": a.cluster_queue, "admitted_at": a.admitted_at, "usage": usage_to_json(a.usage),
            "pod_sets": [{"name": ps.name, "count": ps.count, "flavors": dict(ps.flavors),
                          "usage": usage_to_json(ps.usage),
                          "gpus": [[g.pod, list(g.devices), g.share, g.mps_thread_percentage] for g in ps.gpus]}
                         for ps in a.pod_sets]}


def admission_from_json(workload: Workload, d: Mapping[str, Any]) -> Admission:
    """Inverse of `admission_to_json`."""
    return Admission(
        workload, d["cluster_queue"],
        tuple(PodSetAssignment(p["name"], int(p["count"]), dict(p["flavors"]), usage_from_json(p["usage"]),
                               tuple(GpuPlacement(int(g[0]), tuple(g[1]), int(g[2]), g[3]) for g in p["gpus"]))
              for p in d["pod_sets"]),
        usage_from_json(d["usage"]), float(d["admitted_at"]))


def record_to_json(r: WorkloadRecord) -> dict[str, Any]:
    """A workload record as plain JSON data."""
    return {"workload": workload_to_json(r.workload), "state": r.state, "reason": r.reason.value,
            "message": r.message, "submitted_at": r.submitted_at,
            "admission": None if r.admission is None else admission_to_json(r.admission),
            "admitted_at": r.admitted_at, "finished_at": r.finished_at, "requeue_at": r.requeue_at,
            "preemptions": r.preemptions, "seq": r.seq, "checkpointed_at": r.checkpointed_at,
            "checkpoint_step": r.checkpoint_step, "lost_gpu_seconds": r.lost_gpu_seconds}


def record_from_json(d: Mapping[str, Any]) -> WorkloadRecord:
    """Inverse of `record_to_json`."""
    workload = workload_from_json(d["workload"])
    admission = None if d.get("admission") is None else admission_from_json(workload, d["admission"])
    return WorkloadRecord(workload, d["state"], Reason(d["reason"]), d.get("message", ""), int(d["submitted_at"]),
                          admission, d.get("admitted_at"), d.get("finished_at"), d.get("requeue_at"),
                          int(d.get("preemptions", 0)), int(d.get("seq", 0)), d.get("checkpointed_at"),
                          d.get("checkpoint_step"), float(d.get("lost_gpu_seconds", 0.0)))
