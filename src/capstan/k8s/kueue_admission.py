"""`KueueAdmission`: the `capstan.resources.admission.Admission` of the ``kubernetes`` backend in Kueue mode
(``CAPSTAN_KUBE_ADMISSION=kueue``, decision 0726).

Where Kueue admits the cluster's Jobs, Capstan's own queue must not admit them a second time: its quota would have
to mirror the cluster's, and a step could wait in one queue while the other has room. This adapter grants every
request at once with a lease kept only for bookkeeping (what the orchestrator and the job runner release,
withdraw and reclaim). The attempt then starts, its Job is created suspended with Kueue's queue label, and Kueue
decides when it runs: `capstan.k8s.executor` and `capstan.k8s.training_launcher` follow the Workload and record
its conditions (``couldn't assign flavors ... insufficient quota``) as events of the step or job while the Job
stays suspended. Requests the cluster can never hold are refused by the executors' preflight
(`capstan.k8s.preflight`), not here; Kueue's preemptions suspend the Job again, so no lease is ever revoked.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.resources.admission import Lease, ResourceRequest, Verdict

__all__ = ["KUEUE_PENDING", "KUEUE_WARNINGS", "KueueAdmission", "workload_condition", "workload_job"]

KUEUE_PENDING: Final = "KueuePending"
"""The event reason of a Workload that Kueue has not reserved quota for (its ``QuotaReserved`` is ``False``)."""
KUEUE_WARNINGS: Final = frozenset({"KueueEvicted", "KueuePreempted", "KueueFinished", KUEUE_PENDING})
"""Event reasons recorded as warnings (``KueueFinished`` only when the workload did not succeed)."""


def _step_of(key: str) -> str:
    """The part of an attempt's key (``run/step#attempt``) that names its step (the whole key without ``#``)."""
    return key.rpartition("#")[0] or key


@dataclass(slots=True)
class KueueAdmission:
    """Grants every request at once (see the module docstring); ``leases`` are the requests granted and not yet
    released, by key. Thread-safe: a server's runs and job runners share one."""

    leases: dict[str, Lease] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, request: ResourceRequest) -> str | None:
        """None: Kueue decides, and the executors' preflight refuses what the cluster can never hold."""
        return None

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """A pass-through lease (the one already granted for this key, if any)."""
        with self.lock:
            return self._grant(request)

    def acquire_many(self, requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """A lease for each request, in order."""
        with self.lock:
            return [self._grant(r) for r in requests]

    def settle(self, releases: Sequence[tuple[Lease, bool]], requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """Forget the released leases, then grant ``requests``."""
        with self.lock:
            for lease, _requeue in releases:
                self.leases.pop(lease.key, None)
            return [self._grant(r) for r in requests]

    def reclaim(self, request: ResourceRequest, *, held_only: bool = False) -> Lease | None:
        """The lease still held for the request's key, else (unless ``held_only``) a new one."""
        with self.lock:
            held = self.leases.get(request.key)
            if held is not None or held_only:
                return held
            return self._grant(request)

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        """Forget the lease (Kueue frees the quota when the Job ends or is deleted)."""
        with self.lock:
            self.leases.pop(lease.key, None)

    def withdraw(self, key: str) -> None:
        """Forget every lease of the step (or job) whose attempt is ``key``."""
        step = _step_of(key)
        with self.lock:
            for held in [k for k in self.leases if _step_of(k) == step]:
                del self.leases[held]

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        """Never: Kueue preempts by suspending the Job, which the executors see as pending again."""
        return []

    def _grant(self, request: ResourceRequest) -> Lease:
        lease = self.leases.get(request.key)
        if lease is None:
            lease = self.leases[request.key] = Lease(request.key, request)
        return lease


def workload_job(doc: Mapping[str, Any]) -> str:
    """The name of the Job that owns a Kueue ``Workload`` (empty when no Job does)."""
    owners = (doc.get("metadata") or {}).get("ownerReferences") or []
    return next((str(o.get("name")) for o in owners if o.get("kind") == "Job" and o.get("name")), "")


def workload_condition(doc: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]] | None:
    """What a Workload says now, as ``(event reason, message, condition)``: its most recent condition that holds
    (``KueueQuotaReserved``, ``KueueAdmitted``, ``KueueEvicted``...), or `KUEUE_PENDING` with Kueue's message
    (``couldn't assign flavors to pod set main: insufficient quota ...``) while its ``QuotaReserved`` is ``False``
    and newer. None before Kueue has written any condition."""
    conditions = [c for c in (doc.get("status") or {}).get("conditions") or [] if isinstance(c, Mapping)]
    # Conditions set in the same second (QuotaReserved, then Admitted) are told apart by their order in the list.
    candidates: list[tuple[str, int, int, str, Mapping[str, Any]]] = []
    for i, c in enumerate(conditions):
        if c.get("status") == "True":
            candidates.append((str(c.get("lastTransitionTime", "")), 1, i, f"Kueue{c.get('type', '')}", c))
        elif c.get("type") == "QuotaReserved" and c.get("status") == "False":
            candidates.append((str(c.get("lastTransitionTime", "")), 0, i, KUEUE_PENDING, c))
    if not candidates:
        return None
    *_order, reason, condition = max(candidates, key=lambda c: c[:3])
    return reason, str(condition.get("message", "")), condition
