"""`capstan queue status`: per ClusterQueue and flavor-resource, nominal / borrowed / lent / used (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from capstan.queue.model import FR
from capstan.queue.pending import PendingQueues
from capstan.queue.records import ADMITTED, EVICTING, PENDING, WorkloadRecord
from capstan.queue.state import ClusterState
from capstan.resources.quantity import format_quantity


@dataclass(frozen=True, slots=True)
class QuotaLine:
    """One flavor-resource of a ClusterQueue (milli-units).

    ``lent`` is the part of the queue's idle nominal quota that borrowers in its cohort tree use, attributed to
    lenders in proportion to their idle quota.
    """

    flavor: str
    resource: str
    nominal: int
    used: int
    borrowed: int
    lent: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """A ClusterQueue at a glance."""

    name: str
    cohort: str | None
    strategy: str
    pending: int
    admitted: int
    head: str | None
    quota: tuple[QuotaLine, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON form (quantities in whole units)."""
        return {"cluster_queue": self.name, "cohort": self.cohort, "strategy": self.strategy,
                "pending": self.pending, "admitted": self.admitted, "head": self.head,
                "quota": [{"flavor": q.flavor, "resource": q.resource, "nominal": q.nominal / 1000,
                           "used": q.used / 1000, "borrowed": q.borrowed / 1000, "lent": q.lent / 1000}
                          for q in self.quota]}

    def quota_text(self, line: QuotaLine) -> tuple[str, str, str, str]:
        """Nominal, used, borrowed and lent as display strings."""
        r = line.resource
        return (format_quantity(line.nominal, r), format_quantity(line.used, r), format_quantity(line.borrowed, r),
                format_quantity(line.lent, r))


def queue_status(state: ClusterState, pending: PendingQueues, records: list[WorkloadRecord]) -> list[QueueStatus]:
    """Status of every ClusterQueue, in configuration order."""
    topo = state.topology
    counts: dict[str, list[int]] = {}
    for r in records:
        c = counts.setdefault(r.workload.cluster_queue, [0, 0])
        if r.state == PENDING:
            c[0] += 1
        elif r.state in (ADMITTED, EVICTING):
            c[1] += 1
    # Borrowed totals and idle nominal per cohort tree and flavor-resource, for the lent attribution.
    borrowed_tree: dict[tuple[str, FR], int] = {}
    idle_tree: dict[tuple[str, FR], int] = {}
    for node in topo.cq_nodes.values():
        if node.parent is None:
            continue
        for fr, nominal in node.nominal.items():
            used = state.usage[node.idx].get(fr, 0)
            key = (node.root.name, fr)
            borrowed_tree[key] = borrowed_tree.get(key, 0) + max(0, used - nominal)
            idle_tree[key] = idle_tree.get(key, 0) + max(0, nominal - used)
    out = []
    for cq in topo.config.cluster_queues:
        node = topo.cq_nodes[cq.name]
        lines = []
        for group in cq.resource_groups:
            for fq in group.flavors:
                for rq in fq.resources:
                    fr = (fq.flavor, rq.resource)
                    used = state.usage[node.idx].get(fr, 0)
                    lent = 0
                    if node.parent is not None:
                        key = (node.root.name, fr)
                        idle = max(0, rq.nominal - used)
                        if idle_tree.get(key):
                            lent = min(idle, borrowed_tree[key] * idle // idle_tree[key])
                    lines.append(QuotaLine(fq.flavor, rq.resource, rq.nominal, used, max(0, used - rq.nominal), lent))
        queue = pending.queue(cq.name)
        head = queue.head() if queue is not None else None
        c = counts.get(cq.name, [0, 0])
        out.append(QueueStatus(cq.name, cq.cohort, cq.queueing_strategy.value, c[0], c[1],
                               None if head is None else head.id, tuple(lines)))
    return out
