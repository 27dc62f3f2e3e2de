"""What a training job does after an attempt of its gang ends: the restart and back-off decision.

Pure: no I/O, no clock. The runner (`capstan.training.runner`) hands it the job's counters and how the attempt ended
and carries out the answer.

- ``Succeeded`` ends the job ``Succeeded``; ``Cancelled`` ends it ``Cancelled``.
- ``Preempted`` (the queue took the gang's quota back) is not the job's fault: the job goes back to ``Pending``
  (its workload requeued, with the queue's own back-off) and counts a preemption, not a restart.
- ``NodeLost`` (a runner died and its workers with it, or were left without one) is not the job's fault either: the
  gang restarts at once without using a restart.
- ``WorkerFailed`` and ``OOMKilled`` use a restart while ``restarts < max_restarts``: the gang restarts after
  ``restart_backoff_s * 2**restarts`` seconds (at most `MAX_BACKOFF_S`); then the job ends ``Failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from capstan.training.ports import AttemptReason, JobState
from capstan.training.spec import TrainingJobSpec

__all__ = ["MAX_BACKOFF_S", "AttemptEnd", "NextStep", "backoff_s", "next_step"]

MAX_BACKOFF_S = 300.0
"""The longest back-off between two failure restarts (five minutes)."""

Action = Literal["succeed", "fail", "cancel", "restart", "requeue"]


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How one attempt ended: the reason and, for a failed worker, its rank and exit code, with a message."""

    reason: AttemptReason
    rank: int | None = None
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class NextStep:
    """What to do next: ``action``, the job's next ``state`` with its ``reason`` and ``message``, how long to wait
    before restarting (``delay_s``) and the job's counters after this step."""

    action: Action
    state: JobState
    reason: str
    message: str
    restarts: int
    preemptions: int
    delay_s: float = 0.0


def backoff_s(spec: TrainingJobSpec, restarts_done: int) -> float:
    """The wait before failure restart number ``restarts_done + 1``: doubled per restart, capped."""
    return min(spec.restart_backoff_s * 2.0 ** restarts_done, MAX_BACKOFF_S)


def next_step(spec: TrainingJobSpec, *, restarts: int, preemptions: int, end: AttemptEnd) -> NextStep:
    """The decision after an attempt that ended as ``end``, for a job that has used ``restarts`` failure restarts
    and been preempted ``preemptions`` times."""
    what = end.message or end.reason
    if end.reason == "Succeeded":
        return NextStep("succeed", "Succeeded", "Succeeded", what, restarts, preemptions)
    if end.reason == "Cancelled":
        return NextStep("cancel", "Cancelled", "Cancelled", what, restarts, preemptions)
    if end.reason == "Preempted":
        return NextStep("requeue", "Pending", "Preempted",
                        f"{what}; waiting to be admitted again (preemptions do not count as restarts)",
                        restarts, preemptions + 1)
    if end.reason == "NodeLost":
        return NextStep("restart", "Restarting", "NodeLost", f"{what}; restarting the gang (not counted as a "
                                                             "restart)", restarts, preemptions)
    if restarts < spec.max_restarts:
        delay = backoff_s(spec, restarts)
        return NextStep("restart", "Restarting", end.reason,
                        f"{what}; restarting the gang in {delay:g}s (restart {restarts + 1} of {spec.max_restarts})",
                        restarts + 1, preemptions, delay)
    used = f"all {spec.max_restarts} restarts used" if spec.max_restarts else "max_restarts is 0"
    return NextStep("fail", "Failed", end.reason, f"{what}; {used}", restarts, preemptions)
