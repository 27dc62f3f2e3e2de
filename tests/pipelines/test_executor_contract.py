"""The contract of the `Executor` port (`capstan.pipelines.executor_port`), run against every adapter: the thread
executor and the process executor (warm worker processes). Each test starts real attempts and reads the `Outcome`
the executor delivers: success with its log and facts, a raising step, a stop with a grace period, the collected
log, and (process only) a step beyond its memory request."""

from __future__ import annotations

import contextlib
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan.artifacts.store import ArtifactStore
from capstan.pipelines.execution import EXCEPTION, INTERRUPTED, OOM_KILLED, Outcome, Task, thread_capture
from capstan.pipelines.executor_port import Executor
from capstan.pipelines.executors import ProcessExecutor, ThreadExecutor, close_pools, process_alive
from capstan.pipelines.worker import MEMORY_REQUEST_ENV
from capstan.settings import Settings

GRACE_S = 0.5
MODULE = "capstan_executor_contract_steps"
STEPS = '''
import os
import signal
import time

import capstan.pipelines as cp


@cp.step
def hello() -> int:
    print("hello from the step")
    return 42


@cp.step
def boom() -> int:
    print("about to fail")
    raise ValueError("boom")


@cp.step
def stubborn() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.environ["READY_FILE"], "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(60)
    return 0


@cp.step
def grab() -> int:
    block = bytearray(400 * 2**20)  # 400 MiB: beyond a 100 MiB request under RLIMIT_DATA
    return len(block)
'''
# A command that ignores SIGTERM (it must be killed after the grace period) and says when it is ready.
STUBBORN_COMMAND = (sys.executable, "-c",
                    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                    "open(os.environ['READY_FILE'], 'w').write(str(os.getpid())); time.sleep(60)")


class Harness:
    """One executor under test, the outcomes it delivered, and a way to build and start tasks."""

    def __init__(self, kind: str, settings: Settings, store: ArtifactStore, steps_file: Path, run_dir: Path) -> None:
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.started: list[str] = []
        self.executor: Executor = (
            ThreadExecutor(self.outcomes.put, settings=settings, store=store, grace_s=GRACE_S) if kind == "thread"
            else ProcessExecutor(self.outcomes.put, settings=settings, grace_s=GRACE_S,
                                 on_started=self.started.append))
        self.store = store
        self._file = steps_file
        self._run_dir = run_dir
        self._runs = 0
        self.capture = contextlib.ExitStack()

    def start(self, name: str, *, command: tuple[str, ...] | None = None, env: dict[str, str] | None = None,
              timeout: float | None = None) -> Task:
        """Start one attempt of step ``name`` (a command step when ``command`` is given)."""
        self._runs += 1
        if self.executor.in_process and self._runs == 1:
            # As the orchestrator does for runs with thread steps: what step threads print goes to their logs.
            # Opened in the test itself, as pytest swaps sys.stdout between a test's setup and its call.
            self.capture.enter_context(thread_capture())
        run_id = f"run{self._runs}"
        placement = self.executor.place(None)
        base = self._run_dir / f"{run_id}-{name}.1"
        task = Task(run_id, name, name, 1, "default", "command" if command else "python", MODULE, str(self._file),
                    name, command, {}, {}, dict(env or {}), f"{self._file}:1", self.executor.isolation,
                    placement.log_path or f"{base}.log", placement.results_path, f"{base}.out.json", timeout)
        self.executor.start(task, placement)
        return task

    def outcome(self, task: Task, timeout: float = 60.0) -> Outcome:
        """The outcome delivered for ``task``."""
        deadline = time.monotonic() + timeout
        while True:
            outcome = self.outcomes.get(timeout=max(0.01, deadline - time.monotonic()))
            if outcome.key == task.key:
                return outcome

    def log(self, outcome: Outcome) -> str:
        """The collected log of an attempt."""
        assert outcome.log_path is not None
        return self.store.read_bytes(outcome.log_path).decode()


@pytest.fixture(scope="module")
def steps_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("contract") / f"{MODULE}.py"
    path.write_text(STEPS)
    return path


@pytest.fixture(params=["thread", "process"])
def harness(request: pytest.FixtureRequest, settings: Settings, steps_file: Path, tmp_path: Path) -> Iterator[Harness]:
    from capstan.store.artifact_index_sql import SqlArtifactIndex
    from capstan.store.engine import create_store_engine

    engine = create_store_engine(settings)  # migrated: workers open the artifact index without migrating
    store = ArtifactStore(settings, SqlArtifactIndex(engine))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    h = Harness(request.param, settings, store, steps_file, run_dir)
    try:
        yield h
    finally:
        h.capture.close()
        h.executor.shutdown(kill=True)
        close_pools()
        engine.dispose()


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


def test_a_succeeding_task_reports_its_outcome_and_facts(harness: Harness) -> None:
    task = harness.start("hello")
    outcome = harness.outcome(task)
    assert outcome.ok, outcome.message
    assert (outcome.run_id, outcome.step_id, outcome.attempt) == (task.run_id, "hello", 1)
    assert outcome.exit_code == 0
    assert outcome.output is not None and outcome.output.inline is not None
    assert outcome.log_path is not None and harness.store.exists(outcome.log_path)
    assert outcome.started_at <= outcome.finished_at
    if harness.executor.in_process:
        assert outcome.value == 42  # kept in memory for the step's successors
        assert outcome.peak_memory is None  # a thread shares the orchestrator's process: nothing to measure
    else:
        assert outcome.value is None
        assert outcome.peak_memory is not None and outcome.peak_memory > 0


def test_a_raising_task_fails_with_its_reason(harness: Harness) -> None:
    outcome = harness.outcome(harness.start("boom"))
    assert not outcome.ok
    assert outcome.reason == EXCEPTION
    assert "ValueError: boom" in outcome.message
    assert outcome.retryable
    assert outcome.exit_code == 1
    assert "ValueError: boom" in harness.log(outcome)  # the traceback is in the collected log


def test_the_log_is_collected(harness: Harness) -> None:
    outcome = harness.outcome(harness.start("hello"))
    assert harness.log(outcome).strip() == "hello from the step"


def test_a_stopped_task_is_killed_after_its_grace_period(harness: Harness, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    task = harness.start("sleeper", command=STUBBORN_COMMAND, env={"READY_FILE": str(ready)})
    child = int(wait_for_file(ready))
    time.sleep(0.1)  # the executor registers the child right after starting it
    began = time.monotonic()
    harness.executor.stop(task.key, INTERRUPTED)
    outcome = harness.outcome(task)
    assert not outcome.ok
    assert outcome.reason == INTERRUPTED
    assert outcome.retryable
    assert outcome.exit_code in (128 + 9, 128 + 15)  # SIGKILL (the child), or SIGTERM (the worker running it)
    # The child ignores SIGTERM: it is gone only after the grace period, by SIGKILL.
    while process_alive(child, None):
        assert time.monotonic() - began < GRACE_S + 10, "the child was never killed"
        time.sleep(0.02)
    assert time.monotonic() - began >= GRACE_S * 0.9


def test_stopping_an_unknown_attempt_is_ignored(harness: Harness) -> None:
    harness.executor.stop("run9/none#1", INTERRUPTED)
    outcome = harness.outcome(harness.start("hello"))
    assert outcome.ok


def test_a_process_step_ignoring_sigterm_is_killed_after_the_grace(harness: Harness, tmp_path: Path) -> None:
    if harness.executor.isolation != "process":
        pytest.skip("a Python step on a thread cannot be interrupted (it runs to its end)")
    ready = tmp_path / "ready"
    task = harness.start("stubborn", env={"READY_FILE": str(ready)}, timeout=60)
    worker = int(wait_for_file(ready))
    deadline = time.monotonic() + 10
    while not harness.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert harness.started == [task.key]  # a worker reports when an attempt with a timeout really begins
    began = time.monotonic()
    harness.executor.stop(task.key, INTERRUPTED)
    outcome = harness.outcome(task)
    assert time.monotonic() - began >= GRACE_S * 0.9
    assert (outcome.ok, outcome.reason, outcome.exit_code) == (False, INTERRUPTED, 128 + 9)
    assert not process_alive(worker, None)


def test_a_process_step_beyond_its_memory_request_is_oom_killed(harness: Harness) -> None:
    if harness.executor.isolation != "process":
        pytest.skip("thread isolation does not enforce memory requests")
    outcome = harness.outcome(harness.start("grab", env={MEMORY_REQUEST_ENV: str(100 * 2**20)}))
    assert not outcome.ok
    assert outcome.reason == OOM_KILLED
    assert "exceeded its memory request of 100Mi" in outcome.message
    assert outcome.exit_code == 137
    assert outcome.retire  # the worker is replaced


def test_recovering_an_attempt_without_a_worker_reports_it_interrupted(harness: Harness, tmp_path: Path) -> None:
    placement = harness.executor.placement_of(None, None)
    task = Task("gone", "hello", "hello", 1, "default", "python", MODULE, None, "hello", None, {}, {}, {}, "x:1",
                harness.executor.isolation, str(tmp_path / "gone.log"), placement.results_path,
                str(tmp_path / "gone.out.json"))
    outcome: Any = harness.executor.recover(task, placement, 1000)
    assert outcome is not None and not outcome.ok
    assert (outcome.reason, outcome.started_at, outcome.retryable) == (INTERRUPTED, 1000, True)
