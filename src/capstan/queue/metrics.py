"""Prometheus metrics of the queue, on a `CollectorRegistry` passed in (never the global one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from capstan.queue.records import ADMITTED, EVICTING, PENDING
from capstan.resources.quantity import MILLI

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from capstan.queue.manager import QueueManager

WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, float("inf"))


class QueueMetrics:
    """Per-queue gauges, counters and the admission-wait histogram.

    ``capstan_queue_pending_workloads`` / ``capstan_queue_admitted_workloads`` (by ``cluster_queue``),
    ``capstan_queue_quota_used`` and ``capstan_queue_quota_nominal`` (by ``cluster_queue``, ``flavor``,
    ``resource``; whole units), ``capstan_queue_admission_wait_seconds`` (histogram) and
    ``capstan_queue_preemptions_total``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.pending = Gauge("capstan_queue_pending_workloads", "Pending workloads", ["cluster_queue"],
                             registry=registry)
        self.admitted_gauge = Gauge("capstan_queue_admitted_workloads", "Admitted workloads", ["cluster_queue"],
                                    registry=registry)
        self.quota_used = Gauge("capstan_queue_quota_used", "Quota in use", ["cluster_queue", "flavor", "resource"],
                                registry=registry)
        self.quota_nominal = Gauge("capstan_queue_quota_nominal", "Nominal quota",
                                   ["cluster_queue", "flavor", "resource"], registry=registry)
        self.wait = Histogram("capstan_queue_admission_wait_seconds", "Time from submission to admission",
                              ["cluster_queue"], buckets=WAIT_BUCKETS, registry=registry)
        self.preemptions = Counter("capstan_queue_preemptions", "Workloads preempted", ["cluster_queue"],
                                   registry=registry)

    def admitted(self, cluster_queue: str, wait_s: float) -> None:
        """Record one admission and how long it waited."""
        self.wait.labels(cluster_queue).observe(max(0.0, wait_s))

    def preempted(self, cluster_queue: str) -> None:
        """Record one preemption."""
        self.preemptions.labels(cluster_queue).inc()

    def refresh(self, manager: QueueManager) -> None:
        """Set the gauges from the manager's current state."""
        counts: dict[str, dict[str, int]] = {cq.name: {PENDING: 0, ADMITTED: 0}
                                             for cq in manager.config.cluster_queues}
        for r in manager.workloads():
            table = counts.setdefault(r.workload.cluster_queue, {PENDING: 0, ADMITTED: 0})
            state = ADMITTED if r.state == EVICTING else r.state
            if state in table:
                table[state] += 1
        for name, table in counts.items():
            self.pending.labels(name).set(table[PENDING])
            self.admitted_gauge.labels(name).set(table[ADMITTED])
        topo = manager.topology
        for name, node in topo.cq_nodes.items():
            for (flavor, resource), nominal in node.nominal.items():
                self.quota_nominal.labels(name, flavor, resource).set(nominal / MILLI)
                used = manager.state.usage[node.idx].get((flavor, resource), 0)
                self.quota_used.labels(name, flavor, resource).set(used / MILLI)
