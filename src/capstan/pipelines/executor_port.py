"""The `Executor` port: what the orchestrator needs from whatever runs a step's attempts.

The orchestrator holds one executor per isolation (``{"thread": ..., "process": ...}``; a Kubernetes executor will
be one more entry) and talks to them only through this protocol. The local adapters are
`capstan.pipelines.executors.ThreadExecutor` and `capstan.pipelines.executors.ProcessExecutor`; one contract suite
(``tests/pipelines/test_executor_contract.py``) runs against both.

**Reporting is push, not poll.** An executor is built with two callbacks and calls them from its own threads:
``deliver(outcome)`` exactly once for every attempt it started (or re-attached to), and ``on_started(key)`` when an
attempt really begins, for executors whose `Executor.reports_start` is true (a warm worker may spend seconds
importing modules first; a step's timeout counts from that moment). The orchestrator's ``offer`` is the
``deliver`` callback: the thread that finishes an attempt may run the next round itself (decision 0200 §4), so a
polling API would cost a thread hand-off per step.

**The facts of an attempt are on its `Outcome`** (``capstan.pipelines.execution.Outcome``), which every executor
must fill in as follows:

- ``ok``, ``reason``, ``message``, ``retryable``: a failure names its reason (`execution.EXCEPTION`,
  `execution.NON_ZERO_EXIT`, `execution.OOM_KILLED`, `execution.WORKER_LOST`, ...). An attempt stopped with
  `Executor.stop` before it finished is reported failed with the *stop's* reason, retryable unless that reason is
  `execution.CANCELLED`; one that finished successfully within the grace period reports its success.
- ``log_path``: the artifact-store path of the attempt's captured stdout/stderr, uploaded when it finished (None
  when the attempt printed nothing or was killed before it could upload). While it runs, the live log is the
  task's ``live_log`` file (``capstan logs --follow``).
- ``exit_code``: 0 for success, 1 for a Python exception, the command's code for a command step, ``128 + signal``
  for an attempt killed by a signal (137 for SIGKILL, an out-of-memory kill included).
- ``peak_memory``: peak resident bytes of the attempt where the executor can measure it (a worker process, a
  command's child); None where it cannot (a Python step on a thread shares the orchestrator's process).
- ``reason == OOM_KILLED`` when the attempt ran out of memory: a ``MemoryError`` (a process worker enforces the
  step's ``memory`` request with ``RLIMIT_DATA``), or a process killed by SIGKILL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from capstan.pipelines.execution import Outcome, Task

if TYPE_CHECKING:
    from capstan.pipelines.dsl import Step
    from capstan.resources.admission import Lease

Deliver = Callable[[Outcome], None]
"""Where executors hand finished attempts (`Outcome`) to the orchestrator."""
Started = Callable[[str], None]
"""Told the key (``run/step#attempt``) of an attempt that really began (see `Executor.reports_start`)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an attempt will run, chosen before its attempt row is written so that an orchestrator that restarts
    can find it again. ``worker_pid``/``worker_started`` are the row's columns; ``log_path`` and ``results_path``
    are the files the attempt's task should use (None: the run's defaults). ``handle`` is the executor's own
    reference (a reserved worker), opaque to everyone else."""

    worker_pid: int | None = None
    worker_started: int | None = None
    log_path: str | None = None
    results_path: str | None = None
    handle: Any = field(default=None, compare=False, repr=False)


NOWHERE: Final = Placement()
"""The placement of an executor that has nothing to choose (threads)."""

NO_VALUES: Final[Mapping[str, Any]] = {}


class Executor(Protocol):
    """Runs attempts of steps of one isolation for one run, reporting each as an `Outcome` (see the module
    docstring for the callbacks and for the facts every outcome carries).

    An attempt is started in two halves so that the orchestrator can persist it in between: `place` (before the
    round's commit; the placement goes into the attempt's row) and `start` (after the commit)."""

    isolation: str
    """The step isolation it serves (``thread``, ``process``)."""
    reports_start: bool
    """True when it calls ``on_started`` as an attempt really begins; otherwise an attempt begins at `start`."""
    in_process: bool
    """True when attempts run in the orchestrator's process: `start` uses the step object and upstream values in
    memory, and an outcome's ``value`` is the step's return value (kept in memory for its successors)."""

    def prepare(self, steps: Sequence[Step]) -> None:
        """The steps this run will send (called once, at the run's start): an executor may get ready for them
        (the process adapter starts warm workers that import their modules). May do nothing."""
        ...

    def place(self, lease: Lease | None) -> Placement:
        """Choose where the next attempt runs (a warm worker is set aside for it). Must be followed by `start`."""
        ...

    def start(self, task: Task, placement: Placement, *, lease: Lease | None = None, step: Step | None = None,
              values: Mapping[str, Any] = NO_VALUES) -> None:
        """Start ``task`` where `place` said; its outcome arrives through ``deliver``. ``lease`` is what the
        admission granted (its device and placement environment is already in ``task.env``). ``step`` (the step
        object) and ``values`` (upstream outputs already in memory) are in-process shortcuts that an executor
        running elsewhere ignores."""
        ...

    def stop(self, key: str, reason: str, *, grace_s: float | None = None) -> None:
        """Stop attempt ``key``: SIGTERM, then SIGKILL after ``grace_s`` (None: the executor's default). Its
        outcome (failed with ``reason``, unless it finished first) still arrives through ``deliver``. A Python
        step on a thread cannot be interrupted: it runs to its end. Unknown keys are ignored."""
        ...

    def recover(self, task: Task, placement: Placement, started_at: int) -> Outcome | None:
        """An attempt that a previous orchestrator started at ``started_at`` (ms) on ``placement`` (from its row):
        its recorded outcome when it finished while nobody watched, None when it still runs (it is now followed
        and its outcome will arrive through ``deliver``), or an `execution.INTERRUPTED` failure when it is gone
        without a result."""
        ...

    def placement_of(self, worker_pid: int | None, worker_started: int | None) -> Placement:
        """The placement an attempt row names (its worker columns), with the files it used."""
        ...

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop accepting work. With ``kill`` stop this run's running attempts; without, process workers finish
        theirs (a resumed orchestrator adopts the results)."""
        ...


def interrupted(task: Task, started_at: int, finished_at: int) -> Outcome:
    """The outcome of an attempt whose orchestrator stopped while it ran and that left no result."""
    from capstan.pipelines.execution import INTERRUPTED, failed

    return failed(task, INTERRUPTED, f"attempt {task.attempt} was interrupted: its orchestrator stopped",
                  started_at=started_at, finished_at=finished_at)


ExecutorFactory = Callable[[Deliver, Started], Mapping[str, "Executor"]]
"""Builds one run's executors by isolation, given where they report outcomes and attempt starts. The composition
root (`capstan.services`) chooses it: the local thread and process executors today, a cluster's next."""
