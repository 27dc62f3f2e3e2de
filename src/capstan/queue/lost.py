"""How much work a preemption cost a workload, or would cost it now, in words (pure: no I/O, no clock).

The figures are `ClusterState.lost_work`'s: the time since the workload's last save times its GPUs (at least one
counted). The last save is the checkpoint the workload reported (`QueueManager.record_checkpoint`, with the training
step when it said which), else the one its declared ``checkpoint_interval_seconds`` implies, else its admission.
What `capstan why` prints for a preempted workload (in its message) and for a running one (what a preemption would
lose now).
"""

from __future__ import annotations

from capstan.queue.model import Admission
from capstan.queue.records import WorkloadRecord
from capstan.resources.quantity import GPU_RESOURCES, MILLI

__all__ = ["admission_gpus", "at_risk_text", "format_duration", "lost_work_text"]


def admission_gpus(admission: Admission) -> float:
    """GPUs an admission holds, all pods together (fractions as fractions)."""
    return sum(q for (_f, r), q in admission.usage.items() if r in GPU_RESOURCES) / MILLI


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``: a duration for one line of text."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _basis(record: WorkloadRecord, saved: float, now: float) -> str:
    """``12 min since its last checkpoint at step 300``: how long ago ``record`` last saved, as of ``now``."""
    admission = record.admission
    assert admission is not None
    ago = format_duration(max(0.0, now - saved))
    if record.checkpointed_at is not None and record.checkpointed_at / 1000 >= saved:
        step = f" at step {record.checkpoint_step}" if record.checkpoint_step is not None else ""
        return f"{ago} since its last checkpoint{step}"
    interval = admission.workload.checkpoint_interval_seconds
    if interval > 0 and saved > admission.admitted_at:
        return f"{ago} since its last checkpoint as estimated from its declared interval ({format_duration(interval)})"
    return f"{ago} since its admission (no checkpoint recorded)"


def _on(gpus: float) -> str:
    if gpus <= 0:
        return " (no GPUs: counted as 1)"
    count = f"{gpus:g} GPU" + ("" if gpus == 1 else "s")
    return f" on {count}" + (" (counted as 1)" if gpus < 1 else "")


def lost_work_text(record: WorkloadRecord, saved: float, now: float) -> str:
    """``lost 0.40 GPU-hours: 12 min since its last checkpoint at step 300 on 2 GPUs``: what the preemption of
    ``record`` at ``now`` cost (its ``lost_gpu_seconds``), ``saved`` being its last save (engine seconds)."""
    if record.admission is None:
        return f"lost {record.lost_gpu_seconds / 3600:.2f} GPU-hours"
    gpus = admission_gpus(record.admission)
    return f"lost {record.lost_gpu_seconds / 3600:.2f} GPU-hours: {_basis(record, saved, now)}{_on(gpus)}"


def at_risk_text(record: WorkloadRecord, saved: float, now: float) -> str | None:
    """``last checkpoint 4 min ago at step 300; a preemption now would lose 0.13 GPU-hours`` for a running
    ``record`` (None when it is not admitted)."""
    admission = record.admission
    if admission is None:
        return None
    gpus = admission_gpus(admission)
    lost = max(0.0, now - saved) * max(gpus, 1.0)
    return f"{_basis(record, saved, now)}{_on(gpus)}; a preemption now would lose {lost / 3600:.2f} GPU-hours"
