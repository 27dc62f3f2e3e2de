"""What Kueue says about a workload: a ``kueue.x-k8s.io`` ``Workload`` (``v1beta1`` or ``v1beta2``) mapped to why it
waits, runs or was evicted. Pure: no I/O, no clock.

`kueue_status` reads one Workload document as the API server returns it and answers a `KueueStatus`: where Kueue
has it (``pending``, ``reserved``, ``admitted``, ``evicted``, ``finished``), the event reason Capstan records
(``KueuePending``, ``KueueQuotaReserved``, ``KueueAdmitted``, ``KueueEvicted``, ``KueueFinished``), Kueue's own
reason and message, and what the message means:

- **pending** (``QuotaReserved`` ``False``, reason ``Pending`` or ``Inadmissible``): each `Shortfall` Kueue names
  in ``couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a100, 2 more
  needed`` (pod set, resource, flavor, how much more; or ``request > maximum capacity (16 > 8)``, which never fits);
- **evicted** (``Evicted`` ``True``): Kueue's reason (``Preempted``, ``PodsReadyTimeout``, ``InactiveWorkload``,
  ``ClusterQueueStopped``...) and, for a preemption, by whom: the preempting workload's UID and its Job's UID, the
  cause (``prioritization in the ClusterQueue``, ``reclamation within the cohort``...) and the ``Preempted``
  condition's reason (``InClusterQueue``, ``InCohortReclamation``...);
- **admitted** / **reserved**: the ClusterQueue and the flavors assigned to each pod set.

`KueueStatus.summary` is one line for ``capstan why`` and the timeline, `KueueStatus.hint` what to do. The messages
are Kueue's own words, kept whole; the parsing only adds structure and never hides them. See
docs/kubernetes-executor.md ("Why Kueue keeps it pending") and decision 0741.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["KUEUE_REASONS", "KueueState", "KueueStatus", "Preemptor", "Shortfall", "admitted_count", "explain_text",
           "kueue_status", "latest", "shortfalls"]

KueueState = Literal["pending", "reserved", "admitted", "evicted", "finished"]
"""Where Kueue has a workload: waiting for quota, quota reserved (admission checks pending), admitted (its Job
runs), evicted (preempted, timed out, deactivated: its Job is suspended), finished."""

_STATES: Final[Mapping[str, KueueState]] = {s: s for s in ("pending", "reserved", "admitted", "evicted", "finished")}
KUEUE_REASONS: Final[Mapping[str, str]] = {
    "pending": "KueuePending", "reserved": "KueueQuotaReserved", "admitted": "KueueAdmitted",
    "evicted": "KueueEvicted", "finished": "KueueFinished"}
"""The event reason Capstan records for each state."""

_FLAVORS = re.compile(r"couldn't assign flavors to pod set ([^:]+): (.*)$")
_MORE = re.compile(r"insufficient (unused )?quota for ([^\s,]+) in flavor ([^\s,]+), (\S+) more needed")
_MAX = re.compile(r"insufficient quota for ([^\s,]+) in flavor ([^\s,]+), request > maximum capacity "
                  r"\((\S+) > (\S+)\)")
_PREEMPTOR = re.compile(r"to accommodate a workload \(UID: ([^,)]+)(?:, JobUID: ([^)]+))?\)(?: due to ([^;.]+))?")
_PATHS = re.compile(r"preemptor path: (\S+?);? preemptee path: (\S+)")
_EVICTION_HINTS: Final[Mapping[str, str]] = {
    "Preempted": "nothing is broken: Kueue gave its quota to higher-priority or reclaiming work; it runs again "
                 "when Kueue re-admits it (checkpoint often so little is lost, or use a higher WorkloadPriorityClass)",
    "PodsReadyTimeout": "its pods were not all ready within Kueue's waitForPodsReady timeout (an image pull, an "
                        "unschedulable pod): Kueue requeued it; see the pods' reasons above",
    "InactiveWorkload": "the Workload was deactivated (spec.active false, or it was requeued more often than "
                        "requeuingStrategy.backoffLimitCount allows): reactivate it or submit it again",
    "ClusterQueueStopped": "its ClusterQueue is stopped (stopPolicy): ask the cluster's admin to resume it",
    "LocalQueueStopped": "its LocalQueue is stopped (stopPolicy): resume it",
    "AdmissionCheck": "an admission check (e.g. a ProvisioningRequest) retried or rejected it",
    "NodeFailures": "a node it ran on failed; Kueue requeued it",
}


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One resource Kueue could not assign to a pod set: ``more`` is how much more was needed (Kueue's quantity,
    ``2``, ``500m``, ``4Gi``), or with ``never`` the request and the most the flavor can ever give
    (``request``/``capacity``): no wait makes it fit. ``unused`` says Kueue counted only unused quota (it waits for
    others to finish) rather than the quota itself."""

    pod_set: str
    resource: str
    flavor: str
    more: str = ""
    unused: bool = True
    never: bool = False
    request: str = ""
    capacity: str = ""

    def text(self) -> str:
        """``pod set main needs 2 more nvidia.com/gpu in flavor a100``."""
        if self.never:
            return (f"pod set {self.pod_set} asks for {self.request} {self.resource} in flavor {self.flavor}, more "
                    f"than its most ({self.capacity}): it can never fit")
        free = " than is free" if self.unused else ""
        return f"pod set {self.pod_set} needs {self.more} more {self.resource} in flavor {self.flavor}{free}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pod_set": self.pod_set, "resource": self.resource, "flavor": self.flavor, "more": self.more,
                "unused": self.unused, "never": self.never, "request": self.request, "capacity": self.capacity}


@dataclass(frozen=True, slots=True)
class Preemptor:
    """Who took the quota back: the preempting Workload's UID, its Job's UID, the cause in Kueue's words
    (``prioritization in the ClusterQueue``) and the ``Preempted`` condition's reason (``InClusterQueue``,
    ``InCohortReclamation``, ``InCohortFairSharing``, ``InCohortReclaimWhileBorrowing``), with the preemptor's and
    preemptee's queue paths where Kueue names them."""

    workload_uid: str = ""
    job_uid: str = ""
    cause: str = ""
    kind: str = ""
    preemptor_path: str = ""
    preemptee_path: str = ""

    def text(self) -> str:
        """``workload 0c1b... (job 9f3e...) due to prioritization in the ClusterQueue``."""
        who = f"workload {self.workload_uid}" if self.workload_uid else "another workload"
        if self.job_uid:
            who += f" (job {self.job_uid})"
        if self.cause:
            who += f" due to {self.cause}"
        elif self.kind:
            who += f" ({self.kind})"
        if self.preemptor_path and self.preemptor_path != self.preemptee_path:
            who += f", from {self.preemptor_path}"
        return who

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"workload_uid": self.workload_uid, "job_uid": self.job_uid, "cause": self.cause, "kind": self.kind,
                "preemptor_path": self.preemptor_path, "preemptee_path": self.preemptee_path}


@dataclass(frozen=True, slots=True)
class KueueStatus:
    """What one Workload says (see the module docstring). ``reason`` is Capstan's event reason (`KUEUE_REASONS`),
    ``kueue_reason`` and ``message`` the deciding condition's own; ``workload``, ``local_queue`` (``spec.queueName``)
    and ``cluster_queue`` (``status.admission``, once quota is reserved) name it; ``flavors`` the flavor of each
    resource of each pod set admitted (``main: nvidia.com/gpu=a100``); ``shortfalls`` why it waits;
    ``preemptor`` who evicted it; ``waiting`` Kueue's pending message after an eviction (the quota it waits for
    again); ``evictions`` and ``requeues`` how often Kueue evicted and requeued it."""

    state: KueueState
    reason: str
    kueue_reason: str
    message: str
    workload: str = ""
    local_queue: str = ""
    cluster_queue: str = ""
    flavors: tuple[str, ...] = ()
    shortfalls: tuple[Shortfall, ...] = ()
    preemptor: Preemptor | None = None
    waiting: str = ""
    evictions: int = 0
    requeues: int = 0

    @property
    def holds_it(self) -> bool:
        """Kueue keeps the workload from running: pending, quota reserved but not admitted, or evicted."""
        return self.state in ("pending", "reserved", "evicted")

    @property
    def summary(self) -> str:
        """One line: what Kueue decided and why, with Kueue's message."""
        where = f" in LocalQueue {self.local_queue}" if self.local_queue else ""
        name = f"workload {self.workload}" if self.workload else "the workload"
        if self.state == "pending":
            what = "; ".join(s.text() for s in self.shortfalls)
            verdict = "cannot admit" if self.kueue_reason == "Inadmissible" or any(s.never for s in self.shortfalls) \
                else "has not admitted"
            return f"Kueue {verdict} {name}{where}: " + (f"{what} ({self.message})" if what else self.message)
        if self.state == "evicted":
            by = f" by {self.preemptor.text()}" if self.preemptor is not None else ""
            what = "preempted" if self.kueue_reason == "Preempted" else f"evicted ({self.kueue_reason})"
            tail = f"; waiting again: {self.waiting}" if self.waiting and self.waiting != self.message else ""
            return f"Kueue {what} {name}{where}{by}: {self.message}{tail}"
        if self.state == "reserved":
            return (f"Kueue reserved quota for {name} in ClusterQueue {self.cluster_queue or '?'}; waiting for its "
                    f"admission checks: {self.message}")
        if self.state == "admitted":
            flavors = f" ({', '.join(self.flavors)})" if self.flavors else ""
            return f"Kueue admitted {name} in ClusterQueue {self.cluster_queue or '?'}{flavors}"
        return f"Kueue finished {name}: {self.message}"

    @property
    def hint(self) -> str:
        """What to do about it (empty when nothing needs doing)."""
        if self.state == "pending":
            never = [s for s in self.shortfalls if s.never]
            if never:
                s = never[0]
                return (f"ask for at most {s.capacity} {s.resource} per pod set in flavor {s.flavor}, or have the "
                        f"ClusterQueue's nominalQuota (plus borrowing) raised")
            if self.shortfalls:
                s = self.shortfalls[0]
                return (f"wait for workloads holding {s.resource} in flavor {s.flavor} to finish, ask for less, or "
                        "have the ClusterQueue's quota raised (kubectl get clusterqueue; `capstan k8s render "
                        "queues`)")
            if "LocalQueue" in self.message and "doesn't exist" in self.message:
                return "create the LocalQueue in this namespace (`capstan k8s render queues`), or name an existing one"
            return "see the ClusterQueue's status (kubectl describe clusterqueue) for what it lacks"
        if self.state == "evicted":
            return _EVICTION_HINTS.get(self.kueue_reason, "Kueue evicted it; it runs again once re-admitted")
        if self.state == "reserved":
            return "its admission checks (kubectl describe workload) decide; nothing to do meanwhile"
        return ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the executors record in their events' ``kueue`` field)."""
        return {"state": self.state, "reason": self.reason, "kueue_reason": self.kueue_reason,
                "message": self.message, "workload": self.workload, "local_queue": self.local_queue,
                "cluster_queue": self.cluster_queue, "flavors": list(self.flavors),
                "shortfalls": [s.to_dict() for s in self.shortfalls],
                "preemptor": self.preemptor.to_dict() if self.preemptor is not None else None,
                "waiting": self.waiting, "evictions": self.evictions, "requeues": self.requeues,
                "summary": self.summary, "hint": self.hint}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> KueueStatus | None:
        """The status an event recorded (`to_dict`), or None when ``data`` is not one."""
        state = _STATES.get(str(data.get("state")))
        if state is None:
            return None
        shorts = tuple(Shortfall(**{k: v for k, v in s.items() if k in Shortfall.__slots__})
                       for s in data.get("shortfalls") or () if isinstance(s, Mapping))
        who = data.get("preemptor")
        return KueueStatus(
            state=state, reason=str(data.get("reason") or KUEUE_REASONS[state]),
            kueue_reason=str(data.get("kueue_reason") or ""), message=str(data.get("message") or ""),
            workload=str(data.get("workload") or ""), local_queue=str(data.get("local_queue") or ""),
            cluster_queue=str(data.get("cluster_queue") or ""),
            flavors=tuple(str(f) for f in data.get("flavors") or ()), shortfalls=shorts,
            preemptor=Preemptor(**{k: str(v) for k, v in who.items() if k in Preemptor.__slots__})
            if isinstance(who, Mapping) else None,
            waiting=str(data.get("waiting") or ""), evictions=int(data.get("evictions") or 0),
            requeues=int(data.get("requeues") or 0))


# -- reading ------------------------------------------------------------------------------------------------------
def _map(doc: Any, key: str) -> Mapping[str, Any]:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _items(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    return " ".join(value.split()) if isinstance(value, str) else ""


def shortfalls(message: str) -> tuple[Shortfall, ...]:
    """The resources Kueue's pending message names as missing, per pod set (several pod sets are joined with
    ``;``, several resources of one pod set with ``,``)."""
    found: list[Shortfall] = []
    for part in re.split(r";\s*(?=couldn't assign flavors)", message):
        head = _FLAVORS.search(part.strip())
        if head is None:
            continue
        pod_set, rest = head.group(1).strip(), head.group(2)
        for m in _MAX.finditer(rest):
            found.append(Shortfall(pod_set, m.group(1), m.group(2), unused=False, never=True, request=m.group(3),
                                   capacity=m.group(4)))
        for m in _MORE.finditer(rest):
            found.append(Shortfall(pod_set, m.group(2), m.group(3), more=m.group(4), unused=bool(m.group(1))))
    return tuple(found)


def _preemptor(message: str, kind: str) -> Preemptor | None:
    m = _PREEMPTOR.search(message)
    paths = _PATHS.search(message)
    if m is None and not kind:
        return None
    return Preemptor(workload_uid=m.group(1).strip() if m else "", job_uid=(m.group(2) or "").strip() if m else "",
                     cause=(m.group(3) or "").strip() if m else "", kind=kind,
                     preemptor_path=paths.group(1) if paths else "", preemptee_path=paths.group(2) if paths else "")


def _flavors(admission: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for assignment in _items(admission, "podSetAssignments"):
        flavors = _map(assignment, "flavors")
        if flavors:
            pairs = ", ".join(f"{r}={f}" for r, f in sorted(flavors.items()))
            out.append(f"{_text(assignment, 'name') or '?'}: {pairs}")
    return tuple(out)


def _count(status: Mapping[str, Any]) -> tuple[int, int]:
    evictions = sum(int(e.get("count") or 0) for e in _items(_map(status, "schedulingStats"), "evictions")
                    if isinstance(e.get("count"), int))
    requeues = _map(status, "requeueState").get("count")
    return evictions, requeues if isinstance(requeues, int) and not isinstance(requeues, bool) else 0


def admitted_count(workload: Mapping[str, Any]) -> int | None:
    """How many pods Kueue admitted ``workload`` with: the sum of ``status.admission.podSetAssignments[].count``
    (one pod set, ``main``, for a batch/v1 Job), fewer than its ``spec.podSets[].count`` after a partial admission
    (``kueue.x-k8s.io/job-min-parallelism``). None before Kueue has reserved quota, or where no assignment carries
    a count (Kueue then admitted the pod sets whole)."""
    counts = [a.get("count") for a in _items(_map(_map(workload, "status"), "admission"), "podSetAssignments")]
    known = [c for c in counts if isinstance(c, int) and not isinstance(c, bool)]
    return sum(known) if known else None


def kueue_status(workload: Mapping[str, Any]) -> KueueStatus | None:
    """What ``workload`` says now (see the module docstring); None before Kueue has written a condition that
    decides anything. The first that holds wins: ``Finished``, ``Evicted``, ``Admitted``, ``QuotaReserved``
    ``True``, ``QuotaReserved`` ``False``."""
    status = _map(workload, "status")
    conditions = {(_text(c, "type"), _text(c, "status")): c for c in _items(status, "conditions")}
    name = _text(_map(workload, "metadata"), "name")
    admission = _map(status, "admission")
    evictions, requeues = _count(status)
    base = {"workload": name, "local_queue": _text(_map(workload, "spec"), "queueName"),
            "cluster_queue": _text(admission, "clusterQueue"), "evictions": evictions, "requeues": requeues}

    def make(state: KueueState, cond: Mapping[str, Any], **extra: Any) -> KueueStatus:
        return KueueStatus(state, KUEUE_REASONS[state], _text(cond, "reason"), _text(cond, "message"),
                           **{**base, **extra})

    pending = conditions.get(("QuotaReserved", "False"))
    finished = conditions.get(("Finished", "True"))
    if finished is not None:
        return make("finished", finished)
    evicted = conditions.get(("Evicted", "True"))
    if evicted is not None:
        preempted = conditions.get(("Preempted", "True"))
        message = _text(evicted, "message")
        who = None
        if _text(evicted, "reason") == "Preempted" or preempted is not None:
            who = _preemptor(message or _text(preempted or {}, "message"),
                             _text(preempted, "reason") if preempted is not None else "")
        waiting = _text(pending, "message") if pending is not None else ""
        return make("evicted", evicted, preemptor=who, waiting=waiting,
                    shortfalls=shortfalls(waiting) if waiting else ())
    admitted = conditions.get(("Admitted", "True"))
    if admitted is not None:
        return make("admitted", admitted, flavors=_flavors(admission))
    reserved = conditions.get(("QuotaReserved", "True"))
    if reserved is not None:
        return make("reserved", reserved, flavors=_flavors(admission))
    if pending is not None:
        return make("pending", pending, shortfalls=shortfalls(_text(pending, "message")))
    return None


def latest(statuses: Sequence[Mapping[str, Any]]) -> KueueStatus | None:
    """The last of recorded `KueueStatus.to_dict` forms that parses (events' ``kueue`` fields, oldest first)."""
    for data in reversed(statuses):
        found = KueueStatus.from_dict(data)
        if found is not None:
            return found
    return None


def explain_text(subject: str, status: KueueStatus) -> str:
    """``capstan why``'s one screen for a workload Kueue admits (``subject``: ``step RUN/STEP``, ``job ID``)."""
    queue = status.local_queue or "?"
    if status.cluster_queue:
        queue += f" -> ClusterQueue {status.cluster_queue}"
    lines = [f"Workload:  {subject} (Kueue workload {status.workload or '?'})",
             f"State:     {status.state} (Kueue admits it: CAPSTAN_KUBE_ADMISSION=kueue)",
             f"Queue:     LocalQueue {queue}",
             f"Reason:    {status.reason}" + (f" ({status.kueue_reason})" if status.kueue_reason else ""),
             f"Detail:    {status.message}"]
    lines.extend(f"Missing:   {s.text()}" for s in status.shortfalls)
    if status.preemptor is not None:
        lines.append(f"By:        {status.preemptor.text()}")
    if status.waiting and status.waiting != status.message:
        lines.append(f"Waiting:   {status.waiting}")
    lines.extend(f"Flavors:   {f}" for f in status.flavors)
    if status.evictions or status.requeues:
        lines.append(f"History:   evicted {status.evictions} time(s), requeued {status.requeues} time(s)")
    if status.hint:
        lines.append(f"Hint:      {status.hint}")
    return "\n".join(lines)
