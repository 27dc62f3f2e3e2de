"""The Kueue labels a workload carries, for every renderer that emits a Job, JobSet, PyTorchJob or TrainJob. Pure.

Kueue picks a workload's LocalQueue from ``kueue.x-k8s.io/queue-name`` (in the workload's namespace) and its
priority from ``kueue.x-k8s.io/priority-class`` (a `WorkloadPriorityClass`). Capstan's default priority class,
which Kueue has no object for, is applied here when the workload names none.
"""

from __future__ import annotations

from typing import Final

from capstan.errors import InvalidParameterValue
from capstan.queue.model import QueueConfig

QUEUE_NAME_LABEL: Final = "kueue.x-k8s.io/queue-name"
"""The label that hands a workload to a Kueue LocalQueue of its namespace."""
PRIORITY_CLASS_LABEL: Final = "kueue.x-k8s.io/priority-class"
"""The label naming the workload's `WorkloadPriorityClass`."""


def workload_labels(config: QueueConfig, queue: str, priority_class: str | None = None) -> dict[str, str]:
    """Labels for a workload submitted to LocalQueue ``queue``: the queue name and the priority class
    (``priority_class``, else the configuration's ``defaultPriorityClass``, else none).

    Raises `InvalidParameterValue` naming the LocalQueue or priority class that the configuration does not declare.
    """
    if not any(lq.name == queue for lq in config.local_queues):
        declared = ", ".join(sorted(lq.name for lq in config.local_queues)) or "none"
        raise InvalidParameterValue(f"queue: LocalQueue {queue!r} does not exist (declared: {declared})")
    labels = {QUEUE_NAME_LABEL: queue}
    chosen = priority_class if priority_class is not None else config.default_priority_class
    if chosen is not None:
        if not any(pc.name == chosen for pc in config.priority_classes):
            declared = ", ".join(sorted(pc.name for pc in config.priority_classes)) or "none"
            raise InvalidParameterValue(
                f"priority_class: priority class {chosen!r} does not exist (declared: {declared})")
        labels[PRIORITY_CLASS_LABEL] = chosen
    return labels
